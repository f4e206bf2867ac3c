package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

const fhirJSON = "application/fhir+json"

// response is a fully read HTTP response.
type response struct {
	method, url string
	Status      int
	Header      http.Header
	Body        []byte
}

// String describes the exchange briefly, for failure details.
func (r *response) String() string {
	return fmt.Sprintf("%s %s -> %d", r.method, r.url, r.Status)
}

// bodySnippet returns the start of the body for failure details.
func (r *response) bodySnippet() string {
	b := strings.TrimSpace(string(r.Body))
	if len(b) > 300 {
		b = b[:300] + "…"
	}
	if b == "" {
		return "(empty body)"
	}
	return b
}

// header is a list of request headers; a header with an empty value
// suppresses the default (for example Content-Type).
type header map[string]string

// do sends one request to base+"/"+path (path may also be an absolute URL)
// and reads the whole response. By default it sends
// Accept: application/fhir+json and, with a body, Content-Type:
// application/fhir+json; hdr overrides or (with "") removes them.
func (r *runner) do(ctx context.Context, base, method, path string, body []byte, hdr header) (*response, error) {
	u := path
	if !strings.HasPrefix(path, "http://") && !strings.HasPrefix(path, "https://") {
		u = base + "/" + strings.TrimPrefix(path, "/")
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", fhirJSON)
	if body != nil {
		req.Header.Set("Content-Type", fhirJSON)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err // a *url.Error, which names the method and URL
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading body: %w", method, u, err)
	}
	return &response{method: method, url: u, Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// call is do against the configured base URL.
func (r *runner) call(ctx context.Context, method, path string, body []byte, hdr header) (*response, error) {
	return r.do(ctx, r.base, method, path, body, hdr)
}

// expectStatus fails unless the response has one of the given statuses.
func expectStatus(resp *response, want ...int) error {
	if slices.Contains(want, resp.Status) {
		return nil
	}
	ws := make([]string, len(want))
	for i, w := range want {
		ws[i] = strconv.Itoa(w)
	}
	return fmt.Errorf("%s: want status %s; body: %s", resp, strings.Join(ws, " or "), resp.bodySnippet())
}

// decodeJSON parses JSON keeping numbers as json.Number (their exact text).
// A leading UTF-8 byte-order mark is ignored.
func decodeJSON(b []byte) (any, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return v, nil
}

// decodeObject parses a JSON object (see decodeJSON).
func decodeObject(b []byte) (map[string]any, error) {
	v, err := decodeJSON(b)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("JSON value is a %T, not an object", v)
	}
	return m, nil
}

// resourceOf parses the response body as a FHIR resource of the given type
// ("" accepts any type).
func resourceOf(resp *response, typ string) (map[string]any, error) {
	m, err := decodeObject(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: body is not a JSON object: %v; body: %s", resp, err, resp.bodySnippet())
	}
	if rt := str(m, "resourceType"); typ != "" && rt != typ {
		return nil, fmt.Errorf("%s: want a %s, got resourceType %q; body: %s", resp, typ, rt, resp.bodySnippet())
	}
	return m, nil
}

// expectOutcome checks that the body is an OperationOutcome with at least one
// issue of severity error or fatal.
func expectOutcome(resp *response) error {
	oo, err := resourceOf(resp, "OperationOutcome")
	if err != nil {
		return err
	}
	issues, _ := oo["issue"].([]any)
	for _, it := range issues {
		if m, ok := it.(map[string]any); ok {
			if s := str(m, "severity"); s == "error" || s == "fatal" {
				return nil
			}
		}
	}
	return fmt.Errorf("%s: OperationOutcome has no issue with severity error or fatal: %s", resp, resp.bodySnippet())
}

// expectError checks the status and that the body is an error
// OperationOutcome.
func expectError(resp *response, status ...int) error {
	if err := expectStatus(resp, status...); err != nil {
		return err
	}
	return expectOutcome(resp)
}

// str returns m[key] when it is a string.
func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// obj returns m[key] when it is an object.
func obj(m map[string]any, key string) map[string]any {
	o, _ := m[key].(map[string]any)
	return o
}

// versionID returns meta.versionId of a resource.
func versionID(res map[string]any) string {
	return str(obj(res, "meta"), "versionId")
}

// mustJSON marshals v; v is always built by this package.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// idFromLocation extracts the logical id from a Location or Content-Location
// value such as http://h/fhir/Patient/123/_history/1 or Patient/123.
func idFromLocation(loc, typ string) string {
	if loc == "" {
		return ""
	}
	if u, err := url.Parse(loc); err == nil {
		loc = u.Path
	}
	segs := strings.Split(strings.Trim(loc, "/"), "/")
	for i := len(segs) - 2; i >= 0; i-- {
		if segs[i] == typ {
			return segs[i+1]
		}
	}
	return ""
}

// validID is the R4 id datatype.
var validID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// query is an ordered list of search parameters. Encode keeps ':' in names
// (family:exact) readable; everything else is query-escaped.
type query [][2]string

func (q query) Encode() string {
	var sb strings.Builder
	for i, kv := range q {
		if i > 0 {
			sb.WriteByte('&')
		}
		sb.WriteString(strings.ReplaceAll(url.QueryEscape(kv[0]), "%3A", ":"))
		sb.WriteByte('=')
		sb.WriteString(url.QueryEscape(kv[1]))
	}
	return sb.String()
}

// String shows the query unescaped, for case names and details.
func (q query) String() string {
	parts := make([]string, len(q))
	for i, kv := range q {
		parts[i] = kv[0] + "=" + kv[1]
	}
	return strings.Join(parts, "&")
}

// bundle is the part of a Bundle the suites look at.
type bundle struct {
	Type    string
	Total   *int
	Links   map[string][]string // relation -> urls
	Entries []bundleEntry
}

type bundleEntry struct {
	FullURL        string
	Resource       map[string]any // nil when the entry has none
	Mode           string         // search.mode
	RequestMethod  string         // request.method (history)
	ResponseStatus string         // response.status (history)
}

// key returns "Type/id" of the entry's resource.
func (e bundleEntry) key() string {
	if e.Resource == nil {
		return ""
	}
	return str(e.Resource, "resourceType") + "/" + str(e.Resource, "id")
}

// parseBundle parses a Bundle response body.
func parseBundle(resp *response) (*bundle, error) {
	m, err := resourceOf(resp, "Bundle")
	if err != nil {
		return nil, err
	}
	b := &bundle{Type: str(m, "type"), Links: map[string][]string{}}
	if n, ok := m["total"].(json.Number); ok {
		t, err := strconv.Atoi(n.String())
		if err != nil {
			return nil, fmt.Errorf("%s: Bundle.total %q is not an integer", resp, n)
		}
		b.Total = &t
	}
	links, _ := m["link"].([]any)
	for _, l := range links {
		if lm, ok := l.(map[string]any); ok {
			b.Links[str(lm, "relation")] = append(b.Links[str(lm, "relation")], str(lm, "url"))
		}
	}
	entries, _ := m["entry"].([]any)
	for _, e := range entries {
		em, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: Bundle.entry item is a %T", resp, e)
		}
		be := bundleEntry{
			FullURL:        str(em, "fullUrl"),
			Resource:       obj(em, "resource"),
			Mode:           str(obj(em, "search"), "mode"),
			RequestMethod:  str(obj(em, "request"), "method"),
			ResponseStatus: str(obj(em, "response"), "status"),
		}
		b.Entries = append(b.Entries, be)
	}
	return b, nil
}

// link returns the single URL of a link relation ("" when absent).
func (b *bundle) link(rel string) string {
	if u := b.Links[rel]; len(u) > 0 {
		return u[0]
	}
	return ""
}
