package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
)

// A batch or transaction Bundle POSTed to the base (R4 http.html#transaction).
//
// A transaction is processed in one atomic store commit: every version
// it writes, with its index terms and log leaf, what the commit hooks of
// its entries add (bookings, Slots, owners), and the request's
// AuditEvents. Readers see all of it or none of it, also across a crash.
// A batch runs each entry as the request it describes, through the same
// handlers as a single request, each audited on its own.

type bundleIn struct {
	ResourceType string        `json:"resourceType"`
	Type         string        `json:"type"`
	Entry        []bundleEntry `json:"entry"`
}

type bundleEntry struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  *entryRequest   `json:"request,omitempty"`
}

type entryRequest struct {
	Method          string `json:"method"`
	URL             string `json:"url"`
	IfNoneMatch     string `json:"ifNoneMatch,omitempty"`
	IfModifiedSince string `json:"ifModifiedSince,omitempty"`
	IfMatch         string `json:"ifMatch,omitempty"`
	IfNoneExist     string `json:"ifNoneExist,omitempty"`
}

// entryResponse is Bundle.entry.response.
type entryResponse struct {
	Status       string          `json:"status"`
	Location     string          `json:"location,omitempty"`
	Etag         string          `json:"etag,omitempty"`
	LastModified string          `json:"lastModified,omitempty"`
	Outcome      json.RawMessage `json:"outcome,omitempty"`
}

type responseEntry struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Response entryResponse   `json:"response"`
}

// methodOrder is the order R4 processes a transaction's entries in.
var methodOrder = map[string]int{http.MethodDelete: 0, http.MethodPost: 1, http.MethodPut: 2, http.MethodPatch: 2, http.MethodGet: 3, http.MethodHead: 3}

func (s *Server) bundle(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBundleBody))
	if err != nil {
		return err
	}
	b, err := parseBundle(body)
	if err != nil {
		return err
	}
	a := accessFrom(r.Context())
	if a != nil {
		a.interaction = b.Type
	}
	if n := len(b.Entry); n > s.cfg.MaxBundleEntries {
		return httpErr(http.StatusRequestEntityTooLarge, fhir.CodeTooLong,
			fmt.Sprintf("the Bundle has %d entries; at most %d are accepted", n, s.cfg.MaxBundleEntries))
	}
	for i, e := range b.Entry {
		if err := checkEntry(i, e); err != nil {
			return err
		}
	}
	var out []responseEntry
	if b.Type == "transaction" {
		out, err = s.transaction(r, b.Entry)
	} else {
		out, err = s.batch(r, b.Entry)
	}
	if err != nil {
		return err
	}
	resp := map[string]any{
		"resourceType": "Bundle",
		"id":           newID(),
		"type":         b.Type + "-response",
		"link":         []any{map[string]any{"relation": "self", "url": s.base(r)}},
		"entry":        out,
	}
	if len(out) == 0 {
		delete(resp, "entry")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(resp); err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentTypeFHIR)
	w.WriteHeader(http.StatusOK)
	w.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	return nil
}

// parseBundle decodes the Bundle envelope; the entries' resources are
// parsed and validated one by one, as each is processed.
func parseBundle(body []byte) (*bundleIn, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, httpErr(http.StatusBadRequest, fhir.CodeRequired, "request body is empty")
	}
	var b bundleIn
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&b); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeStructure, "Bundle."+ute.Field, "Bundle.%s has the wrong JSON type", ute.Field)
		}
		return nil, &fhir.Error{Status: http.StatusBadRequest, Issues: []fhir.Issue{{Severity: fhir.SeverityError, Code: fhir.CodeStructure, Details: "body is not a JSON object", Diagnostics: err.Error()}}}
	}
	if b.ResourceType != "Bundle" {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "resourceType", "only a Bundle can be POSTed to the base")
	}
	switch b.Type {
	case "batch", "transaction":
	case "":
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, "Bundle.type", "Bundle.type is required")
	default:
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, "Bundle.type", "only batch and transaction Bundles are processed (type %s)", b.Type)
	}
	return &b, nil
}

// checkEntry checks what every entry must have.
func checkEntry(i int, e bundleEntry) error {
	path := fmt.Sprintf("Bundle.entry[%d]", i)
	if e.Request == nil {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, path+".request", "entry %d has no request", i)
	}
	if _, ok := methodOrder[e.Request.Method]; !ok {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeValue, path+".request.method", "entry %d: method %q is not GET, HEAD, POST, PUT, PATCH or DELETE", i, e.Request.Method)
	}
	if e.Request.URL == "" {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, path+".request.url", "entry %d has no request.url", i)
	}
	switch e.Request.Method {
	case http.MethodPost, http.MethodPut:
		if len(e.Resource) == 0 && !strings.Contains(e.Request.URL, "$") {
			return fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, path+".resource", "entry %d (%s) has no resource", i, e.Request.Method)
		}
	}
	return nil
}

// processingOrder returns the entries' indexes in R4's processing order,
// keeping the Bundle's order within each method.
func processingOrder(entries []bundleEntry) []int {
	var out []int
	for m := 0; m <= 3; m++ {
		for i, e := range entries {
			if methodOrder[e.Request.Method] == m {
				out = append(out, i)
			}
		}
	}
	return out
}

// entryTarget is what an entry's request.url names.
type entryTarget struct {
	typ, id   string
	operation bool       // $op: not served inside a Bundle
	history   bool       // _history: only for GET
	query     url.Values // search or conditional criteria; nil when none
	rawQuery  string
}

// parseEntryURL parses request.url, relative to the base or absolute
// under it.
func (s *Server) parseEntryURL(r *http.Request, raw string) (entryTarget, error) {
	rel := strings.TrimPrefix(raw, s.base(r)+"/")
	if strings.Contains(rel, "://") {
		return entryTarget{}, errors.New("request.url is an absolute URL outside this server's base")
	}
	rel = strings.TrimPrefix(rel, "/")
	p, q, hasQuery := strings.Cut(rel, "?")
	var t entryTarget
	if hasQuery {
		vals, err := url.ParseQuery(q)
		if err != nil {
			return t, errors.New("request.url has an invalid query")
		}
		t.query, t.rawQuery = vals, q
	}
	segs := strings.Split(p, "/")
	if strings.HasPrefix(segs[len(segs)-1], "$") {
		t.operation = true
		if len(segs) > 1 {
			t.typ = segs[0]
		}
		return t, nil
	}
	if p == "" && hasQuery {
		return t, errors.New("request.url names no resource type")
	}
	t.typ = segs[0]
	if !fhir.IsResourceType(t.typ) {
		return t, fmt.Errorf("request.url names an unknown resource type")
	}
	if len(segs) > 1 {
		t.id = segs[1]
		if !fhir.ValidID(t.id) {
			return t, errors.New("request.url has an invalid resource id")
		}
	}
	if len(segs) > 2 {
		if segs[2] != "_history" || len(segs) > 4 {
			return t, errors.New("request.url is not a resource, type or version URL")
		}
		t.history = true
	}
	return t, nil
}

// rewriter rewrites the references of a Bundle's entries: fullUrls of
// its entries to the ids they were given, and conditional references to
// the one resource their criteria match.
type rewriter struct {
	s   *Server
	r   *http.Request
	ids map[string]string // fullUrl (and Type/oldId) → Type/id; set before rewriting starts

	mu   sync.Mutex        // entries are rewritten in parallel
	cond map[string]string // conditional reference → Type/id
}

func newRewriter(s *Server, r *http.Request) *rewriter {
	return &rewriter{s: s, r: r, ids: map[string]string{}, cond: map[string]string{}}
}

// mapFullURL records that the entry with fullUrl is stored as t/id.
func (rw *rewriter) mapFullURL(fullURL, t, id string) {
	if fullURL == "" {
		return
	}
	rw.ids[fullURL] = t + "/" + id
	// A relative reference resolves against the base of the referring
	// entry's fullUrl: "Patient/123" names the entry whose fullUrl is
	// http://example.org/fhir/Patient/123.
	if i := strings.Index(fullURL, "://"); i >= 0 {
		segs := strings.Split(fullURL, "/")
		if n := len(segs); n >= 2 && fhir.IsResourceType(segs[n-2]) {
			old := segs[n-2] + "/" + segs[n-1]
			if _, taken := rw.ids[old]; !taken && old != t+"/"+id {
				rw.ids[old] = t + "/" + id
			}
		}
	}
}

// rewrite returns raw with its references rewritten, or raw itself when
// nothing changed. Any string value that is an entry's fullUrl is
// replaced, wherever it is (references, uri elements, extensions,
// contained resources), as are links to it in narrative; a reference with
// search criteria is resolved to exactly one resource, else 412.
func (rw *rewriter) rewrite(raw json.RawMessage, path string) (json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeStructure, path, "the resource is not valid JSON")
	}
	changed := false
	var walk func(v any, key string) (any, error)
	walk = func(v any, key string) (any, error) {
		switch t := v.(type) {
		case map[string]any:
			for k, e := range t {
				nv, err := walk(e, k)
				if err != nil {
					return nil, err
				}
				t[k] = nv
			}
		case []any:
			for i, e := range t {
				nv, err := walk(e, key)
				if err != nil {
					return nil, err
				}
				t[i] = nv
			}
		case string:
			if to, ok := rw.ids[t]; ok {
				changed = true
				return to, nil
			}
			if key == "reference" && strings.HasPrefix(t, "urn:uuid:") {
				return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeNotFound, path, "a urn:uuid reference names no entry of the Bundle")
			}
			if key == "reference" && strings.Contains(t, "?") && !strings.HasPrefix(t, "#") {
				to, err := rw.conditional(t, path)
				if err != nil {
					return nil, err
				}
				changed = true
				return to, nil
			}
			if key == "div" {
				if nt := rw.rewriteLinks(t); nt != t {
					changed = true
					return nt, nil
				}
			}
		}
		return v, nil
	}
	doc, err := walk(doc, "")
	if err != nil {
		return nil, err
	}
	if !changed {
		return raw, nil
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// rewriteLinks rewrites href and src attributes naming an entry.
func (rw *rewriter) rewriteLinks(div string) string {
	if !strings.Contains(div, "href=") && !strings.Contains(div, "src=") {
		return div
	}
	for from, to := range rw.ids {
		if !strings.Contains(from, ":") {
			continue // only absolute fullUrls and urn:uuid
		}
		for _, attr := range []string{`href="`, `src="`} {
			div = strings.ReplaceAll(div, attr+from+`"`, attr+to+`"`)
		}
	}
	return div
}

// conditional resolves a conditional reference Type?criteria.
func (rw *rewriter) conditional(ref, path string) (string, error) {
	rw.mu.Lock()
	to, ok := rw.cond[ref]
	rw.mu.Unlock()
	if ok {
		return to, nil
	}
	t, q, _ := strings.Cut(strings.TrimPrefix(ref, rw.s.base(rw.r)+"/"), "?")
	if !fhir.IsResourceType(t) {
		return "", fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, path, "conditional reference names an unknown resource type")
	}
	_, ids, err := rw.s.criteriaMatches(rw.r, t, q, "conditional reference")
	if err != nil {
		return "", err
	}
	if len(ids) != 1 {
		return "", fhir.Errorf(http.StatusPreconditionFailed, fhir.CodeNotFound, path,
			"a conditional reference to %s matched %d resources; it must match exactly one", t, len(ids))
	}
	to = t + "/" + ids[0]
	rw.mu.Lock()
	rw.cond[ref] = to
	rw.mu.Unlock()
	return to, nil
}

// entryError makes err, from entry i, the error of the whole transaction:
// its status, with the entry named in every issue.
func entryError(i int, method, typ string, err error) error {
	name := fmt.Sprintf("entry %d (%s %s)", i, method, typ)
	var fe *fhir.Error
	var he *HTTPError
	switch {
	case errors.As(err, &fe):
		out := &fhir.Error{Status: fe.Status}
		for _, is := range fe.Issues {
			if is.Expression == "" {
				is.Expression = fmt.Sprintf("Bundle.entry[%d]", i)
			} else if !strings.HasPrefix(is.Expression, "Bundle.") {
				is.Expression = fmt.Sprintf("Bundle.entry[%d].resource.%s", i, is.Expression)
			}
			is.Details = name + ": " + is.Details
			out.Issues = append(out.Issues, is)
		}
		return out
	case errors.As(err, &he):
		return &HTTPError{Status: he.Status, Code: he.Code, Msg: name + ": " + he.Msg, Header: he.Header}
	case errors.Is(err, store.ErrNotFound):
		return httpErr(http.StatusNotFound, fhir.CodeNotFound, name+": resource not found")
	case errors.Is(err, errGone):
		return httpErr(http.StatusGone, fhir.CodeDeleted, name+": the resource has been deleted")
	}
	return err
}

// txEntry is one entry of a transaction as it is processed.
type txEntry struct {
	i      int
	e      bundleEntry
	method string
	t      entryTarget
	newID  string // the id a create (or an upsert without one) is given

	// Set in each attempt.
	key     store.Key
	skip    bool // nothing to write: a matched conditional create, a no-op, a delete of nothing
	status  int
	cur     store.Record // the current version, when there is one
	hasCur  bool
	alias   *txEntry // a conditional create an earlier entry with the same criteria makes
	guard   *store.Query
	res     *fhir.Resource
	parsed  *fhir.Resource // the entry's resource, rewritten and validated
	perr    error          // why it is not
	rec     store.Record
	comps   []string
	outcome []fhir.Issue
}

// txAttempts bounds how often a transaction is processed again after a
// concurrent change to what it read.
const txAttempts = 20

// transaction processes entries as one atomic commit.
func (s *Server) transaction(r *http.Request, entries []bundleEntry) ([]responseEntry, error) {
	txs := make([]*txEntry, len(entries))
	fullURLs := map[string]int{}
	for i, e := range entries {
		x := &txEntry{i: i, e: e, method: e.Request.Method, newID: newID()}
		t, err := s.parseEntryURL(r, e.Request.URL)
		if err != nil {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, fmt.Sprintf("Bundle.entry[%d].request.url", i), "entry %d: %v", i, err)
		}
		x.t = t
		if err := checkTxEntry(x); err != nil {
			return nil, err
		}
		if e.FullURL != "" {
			if j, dup := fullURLs[e.FullURL]; dup {
				return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeDuplicate, fmt.Sprintf("Bundle.entry[%d].fullUrl", i), "entries %d and %d have the same fullUrl", j, i)
			}
			fullURLs[e.FullURL] = i
		}
		txs[i] = x
	}
	order := processingOrder(entries)
	a := accessFrom(r.Context())
	for attempt := 1; ; attempt++ {
		before := len(a.touched)
		out, err := s.transactionAttempt(r, txs, order)
		if err == nil {
			return out, nil
		}
		// Nothing was stored: what the attempt touched is not the
		// request's, but for a denied entry (authorize touched it last).
		var he *HTTPError
		if errors.As(err, &he) && he.Status == http.StatusForbidden && len(a.touched) > before {
			a.touched = append(a.touched[:before], a.touched[len(a.touched)-1])
		} else {
			a.touched = a.touched[:before]
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		if attempt == txAttempts {
			return nil, errContended
		}
		time.Sleep(time.Duration(attempt) * time.Millisecond)
	}
}

// checkTxEntry rejects what a transaction entry cannot do here.
func checkTxEntry(x *txEntry) error {
	path := fmt.Sprintf("Bundle.entry[%d].request", x.i)
	bad := func(msg string) error {
		return fhir.Errorf(http.StatusBadRequest, fhir.CodeNotSupported, path, "entry %d: %s", x.i, msg)
	}
	if x.t.operation {
		return bad("operations are not supported inside a transaction (" + x.method + " " + x.e.Request.URL[strings.LastIndex(x.e.Request.URL, "$"):] + ")")
	}
	switch x.method {
	case http.MethodPatch:
		return bad("PATCH is not supported")
	case http.MethodPost:
		if x.t.id != "" || x.t.query != nil || x.t.history {
			return bad("POST must name a resource type only")
		}
	case http.MethodPut:
		if x.t.history || (x.t.id == "") == (x.t.query == nil) {
			return bad("PUT must name a resource (Type/id) or search criteria (Type?criteria)")
		}
	case http.MethodDelete:
		if x.t.history || (x.t.id == "" && x.t.query == nil) {
			return bad("DELETE must name a resource (Type/id) or search criteria (Type?criteria)")
		}
		if x.t.typ == "AuditEvent" {
			return entryError(x.i, x.method, x.t.typ, errAppendOnly)
		}
	}
	return nil
}

// transactionAttempt resolves, builds and commits the transaction once.
func (s *Server) transactionAttempt(r *http.Request, txs []*txEntry, order []int) ([]responseEntry, error) {
	rw := newRewriter(s, r)
	base := s.base(r)
	// 1. Resolve what each write entry targets, in processing order.
	seen := map[store.Key]int{}
	creates := map[string]*txEntry{} // conditional creates by criteria
	for _, i := range order {
		x := txs[i]
		x.key, x.skip, x.status, x.hasCur, x.cur, x.guard, x.res, x.outcome = store.Key{}, false, 0, false, store.Record{}, nil, nil, nil
		x.parsed, x.perr, x.alias = nil, nil, nil
		if x.method == http.MethodGet || x.method == http.MethodHead {
			continue
		}
		if err := s.resolveEntry(r, x); err != nil {
			return nil, entryError(x.i, x.method, x.t.typ, err)
		}
		if cond := x.e.Request.IfNoneExist; x.method == http.MethodPost && cond != "" && !x.skip {
			// Two entries creating "the" resource matching the same
			// criteria create it once: the second names the first's.
			k := x.t.typ + "?" + strings.TrimPrefix(cond, x.t.typ+"?")
			if first, ok := creates[k]; ok {
				x.alias, x.key, x.skip, x.status = first, first.key, true, http.StatusOK
				rw.mapFullURL(x.e.FullURL, x.key.Type, x.key.ID)
				continue
			}
			creates[k] = x
		}
		if x.method != http.MethodDelete {
			rw.mapFullURL(x.e.FullURL, x.key.Type, x.key.ID)
		}
		if x.key.ID == "" {
			continue // a conditional delete that matched nothing
		}
		if j, dup := seen[x.key]; dup {
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeDuplicate, fmt.Sprintf("Bundle.entry[%d]", x.i),
				"entries %d and %d change the same resource", j, x.i)
		}
		seen[x.key] = x.i
	}
	// 2. Rewrite and validate the resources, in parallel (the costliest
	// step); then build each version as its single request would:
	// authorize, encode, and run its type's commit hook on the staged
	// state of the entries before it.
	var toParse []*txEntry
	for _, x := range txs {
		if !x.skip && (x.method == http.MethodPost || x.method == http.MethodPut) {
			toParse = append(toParse, x)
		}
	}
	parallel(len(toParse), func(j int) {
		x := toParse[j]
		raw, err := rw.rewrite(x.e.Resource, fmt.Sprintf("Bundle.entry[%d].resource", x.i))
		if err == nil {
			x.parsed, err = fhir.Parse(raw, fhir.ParseOptions{StrictReferenceTypes: s.cfg.EnforceReferences})
		}
		x.perr = err
	})
	now := s.now().UTC().Truncate(time.Millisecond)
	p := &pending{recs: map[store.Key]store.Record{}, cells: map[string]store.Cell{}, blobs: map[string]*stagedBlob{}}
	pr := r.WithContext(context.WithValue(r.Context(), pendingKey{}, p))
	var (
		committed bool
		commitErr error
	)
	defer func() { s.dropStaged(r, p, committed, commitErr) }()
	var (
		writes []store.Write
		keep   []string
		cells  []store.SetCell
		cellAt = map[string]int{}
		staged []store.Record // every version written, for notifications
		wrote  = map[store.Key]bool{}
	)
	add := func(rec store.Record, guard *store.Query) error {
		if wrote[rec.Key()] {
			return httpErr(http.StatusConflict, fhir.CodeConflict, rec.Type+"/"+rec.ID+" is changed twice by this transaction")
		}
		wrote[rec.Key()] = true
		writes = append(writes, store.Write{Record: rec, IfNoneMatch: guard})
		staged = append(staged, rec)
		p.recs[rec.Key()] = rec
		return nil
	}
	for _, i := range order {
		x := txs[i]
		if x.skip || x.method == http.MethodGet || x.method == http.MethodHead {
			continue
		}
		c, err := s.buildEntry(pr, x, now, base)
		if err != nil {
			return nil, entryError(x.i, x.method, x.t.typ, err)
		}
		if c == nil { // a no-op update
			continue
		}
		if hook := s.hooks[c.rec.Type]; hook != nil {
			if err := hook(pr, c); err != nil {
				return nil, entryError(x.i, x.method, x.t.typ, err)
			}
		}
		if err := add(c.rec, x.guard); err != nil {
			return nil, entryError(x.i, x.method, x.t.typ, err)
		}
		for _, hw := range c.writes {
			if err := add(hw, nil); err != nil {
				return nil, entryError(x.i, x.method, x.t.typ, err)
			}
			comps, err := s.compartmentsOf(hw, nil, base)
			if err != nil {
				return nil, err
			}
			s.touchRecord(pr, hw, comps)
		}
		keep = append(keep, c.keep...)
		for _, sc := range c.cells {
			p.cells[sc.ID] = store.Cell{ID: sc.ID, Version: sc.Version, Value: sc.Value}
			if j, ok := cellAt[sc.ID]; ok {
				cells[j].Value = sc.Value
				continue
			}
			cellAt[sc.ID] = len(cells)
			cells = append(cells, sc)
		}
	}
	// 3. The request's AuditEvents, in the same commit.
	a := accessFrom(r.Context())
	if !s.cfg.NoAudit && a != nil {
		groups := auditGroups(a)
		audits := make([]store.Record, len(groups))
		errs := make([]error, len(groups))
		parallel(len(groups), func(j int) {
			audits[j], errs[j] = s.auditRecord(r, s.auditEvent(a, http.StatusOK, now, groups[j].patient, groups[j].ts), now)
		})
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		for _, rec := range audits {
			writes = append(writes, store.Write{Record: rec})
		}
	}
	// 4. One atomic commit.
	if len(writes) > 0 {
		if err := s.store.Commit(r.Context(), store.Commit{Writes: writes, Cells: cells, Keep: keep}); err != nil {
			commitErr = err
			var we *store.WriteError
			if errors.As(err, &we) && we.Index < len(staged) && errors.Is(we.Err, store.ErrErased) {
				return nil, we.Err
			}
			return nil, err
		}
	}
	committed = true
	if a != nil && !s.cfg.NoAudit {
		a.audited = true
	}
	for _, rec := range staged {
		s.afterWrite(r, rec)
	}
	// 5. Reads see the committed state.
	out := make([]responseEntry, len(txs))
	for _, i := range order {
		x := txs[i]
		if x.method == http.MethodGet || x.method == http.MethodHead {
			out[i] = s.subRequest(r, x.e, nil)
			continue
		}
		out[i] = s.txResponse(r, x)
	}
	return out, nil
}

// resolveEntry decides which resource a write entry targets and what
// happens to it, checking its preconditions.
func (s *Server) resolveEntry(r *http.Request, x *txEntry) error {
	t := x.t
	switch x.method {
	case http.MethodPost:
		x.key = store.Key{Type: t.typ, ID: x.newID}
		x.status = http.StatusCreated
		if cond := x.e.Request.IfNoneExist; cond != "" {
			q, ids, err := s.criteriaMatches(r, t.typ, strings.TrimPrefix(cond, t.typ+"?"), "ifNoneExist")
			if err != nil {
				return err
			}
			switch len(ids) {
			case 0:
				if guard, ok := storeGuard(q); ok {
					x.guard = guard
				}
			case 1:
				x.key.ID, x.skip, x.status = ids[0], true, http.StatusOK
				cur, err := s.store.Get(r.Context(), x.key)
				if err != nil {
					return err
				}
				if err := s.authorizeRecord(r, "read", cur); err != nil {
					return err
				}
				x.cur, x.hasCur = cur, true
			default:
				return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "ifNoneExist matched more than one resource")
			}
		}
		return nil
	case http.MethodPut:
		id := t.id
		if t.query != nil {
			_, ids, err := s.criteriaMatches(r, t.typ, t.rawQuery, "request.url")
			if err != nil {
				return err
			}
			switch len(ids) {
			case 0:
				id = x.newID
				if rid := resourceID(x.e.Resource); rid != "" {
					id = rid
				}
			case 1:
				id = ids[0]
			default:
				return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "conditional update criteria matched more than one resource")
			}
		}
		x.key = store.Key{Type: t.typ, ID: id}
		if err := s.loadCurrent(r, x); err != nil {
			return err
		}
		if x.hasCur && !x.cur.Deleted && t.typ == "AuditEvent" {
			return errAppendOnly
		}
		if im := x.e.Request.IfMatch; im != "" {
			v, ok := parseETag(im)
			if !ok {
				return httpErr(http.StatusBadRequest, fhir.CodeInvalid, "ifMatch must be a version ETag like W/\"3\"")
			}
			if !x.hasCur || x.cur.Version != v {
				return httpErr(http.StatusPreconditionFailed, fhir.CodeConflict, "ifMatch does not match the current version")
			}
		}
		x.status = http.StatusOK
		if !x.hasCur || x.cur.Deleted {
			x.status = http.StatusCreated
		}
		return nil
	case http.MethodDelete:
		id := t.id
		x.status = http.StatusNoContent
		if t.query != nil {
			_, ids, err := s.criteriaMatches(r, t.typ, t.rawQuery, "request.url")
			if err != nil {
				return err
			}
			switch len(ids) {
			case 0:
				x.skip = true
				return nil
			case 1:
				id = ids[0]
			default:
				return httpErr(http.StatusPreconditionFailed, fhir.CodeMultipleMatch, "conditional delete criteria matched more than one resource")
			}
		}
		x.key = store.Key{Type: t.typ, ID: id}
		if err := s.loadCurrent(r, x); err != nil {
			return err
		}
		var comps []string
		if x.hasCur {
			var err error
			if comps, err = s.compartmentsOf(x.cur, nil, s.base(r)); err != nil {
				return err
			}
		}
		if _, err := s.authorize(r, "delete", policy.Resource{Type: x.key.Type, ID: x.key.ID, Compartments: comps}); err != nil {
			return err
		}
		if im := x.e.Request.IfMatch; im != "" && x.hasCur && !x.cur.Deleted {
			if v, ok := parseETag(im); !ok || v != x.cur.Version {
				return httpErr(http.StatusPreconditionFailed, fhir.CodeConflict, "ifMatch does not match the current version")
			}
		}
		if !x.hasCur || x.cur.Deleted {
			x.skip = true
			return nil
		}
		x.comps = comps
		return nil
	}
	return nil
}

// loadCurrent reads the entry's current version, if any.
func (s *Server) loadCurrent(r *http.Request, x *txEntry) error {
	cur, err := s.store.Get(r.Context(), x.key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	x.cur, x.hasCur = cur, true
	return nil
}

// criteria parses conditional search criteria.
func (s *Server) criteria(r *http.Request, t, raw, what string) (*fhir.Query, error) {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, httpErr(http.StatusBadRequest, fhir.CodeInvalid, what+" is not a valid query")
	}
	q, err := fhir.ParseQuery(t, vals, s.params, s.base(r), false)
	if err != nil {
		return nil, err
	}
	if len(q.Clauses) == 0 {
		return nil, httpErr(http.StatusBadRequest, fhir.CodeInvalid, what+" has no search criteria")
	}
	return q, nil
}

// criteriaMatches parses conditional criteria and finds the ids of the
// live resources they match.
func (s *Server) criteriaMatches(r *http.Request, t, raw, what string) (*fhir.Query, []string, error) {
	q, err := s.criteria(r, t, raw, what)
	if err != nil {
		return nil, nil, err
	}
	ids, err := s.matchIDs(r, q)
	return q, ids, err
}

// resourceID reads a resource's id without parsing the rest.
func resourceID(raw json.RawMessage) string {
	var v struct {
		ID string `json:"id"`
	}
	json.Unmarshal(raw, &v)
	return v.ID
}

// buildEntry makes the version a POST, PUT or DELETE entry writes; nil
// for a PUT that changes nothing.
func (s *Server) buildEntry(r *http.Request, x *txEntry, now time.Time, base string) (*change, error) {
	if x.method == http.MethodDelete {
		rec := store.Record{Type: x.key.Type, ID: x.key.ID, Version: x.cur.Version + 1, Updated: now, Deleted: true}
		if err := withLeaf(&rec); err != nil {
			return nil, err
		}
		x.rec = rec
		s.touchRecord(r, rec, x.comps)
		return &change{rec: rec}, nil
	}
	if x.perr != nil {
		return nil, x.perr
	}
	res := x.parsed
	if res.Type != x.key.Type {
		return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, "resourceType", "resourceType %s does not match the request's type %s", res.Type, x.key.Type)
	}
	if x.method == http.MethodPut {
		switch {
		case x.t.id != "" && res.ID == "":
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeRequired, res.Type+".id", "the resource must have an id matching request.url")
		case res.ID != "" && res.ID != x.key.ID:
			return nil, fhir.Errorf(http.StatusBadRequest, fhir.CodeInvalid, res.Type+".id", "the resource id does not match the resource request.url names")
		}
	}
	// A create's id is the server's; one in the body is ignored.
	res.ID = x.key.ID
	for _, is := range res.Warnings {
		x.outcome = append(x.outcome, is)
	}
	if p := s.prepare[x.key.Type]; p != nil {
		if err := p(r, res); err != nil {
			return nil, err
		}
	}
	if err := s.checkAttachments(r, res); err != nil {
		return nil, err
	}
	comps := s.params.Compartments(x.key.Type, x.key.ID, res.Doc, base)
	action, all := "create", comps
	if x.method == http.MethodPut && x.hasCur && !x.cur.Deleted {
		old, err := s.compartmentsOf(x.cur, nil, base)
		if err != nil {
			return nil, err
		}
		action, all = "update", union(comps, old)
	}
	if _, err := s.authorize(r, action, policy.Resource{Type: x.key.Type, ID: x.key.ID, Compartments: all}); err != nil {
		return nil, err
	}
	if err := s.checkReferences(r, res); err != nil {
		return nil, err
	}
	next := int64(1)
	if x.hasCur {
		next = x.cur.Version + 1
		if !x.cur.Deleted && unchanged(res, x.cur) {
			x.skip, x.status = true, http.StatusOK
			s.touchRecord(r, x.cur, comps)
			return nil, nil
		}
	}
	rec, err := s.encodeVersion(r, res, x.key, next, now)
	if err != nil {
		return nil, err
	}
	x.res, x.rec, x.comps = res, rec, comps
	s.touchRecord(r, rec, comps)
	return &change{rec: rec, doc: res.Doc}, nil
}

// unchanged reports whether res, as an update of cur, would store the
// same content: then no version is written (as HAPI does), which keeps a
// re-sent resource, a re-run import, from growing the history.
func unchanged(res *fhir.Resource, cur store.Record) bool {
	body, err := res.Encode(fhir.Meta{ID: cur.ID, VersionID: strconv.FormatInt(cur.Version, 10), LastUpdated: cur.Updated})
	return err == nil && bytes.Equal(body, cur.Body)
}

// txResponse is the response entry of a committed write entry.
func (s *Server) txResponse(r *http.Request, x *txEntry) responseEntry {
	e := responseEntry{Response: entryResponse{Status: statusLine(x.status)}}
	rec := x.rec
	switch {
	case x.method == http.MethodDelete:
		if !x.skip {
			e.Response.Etag = etag(rec.Version)
			e.Response.LastModified = fhir.FormatInstant(rec.Updated)
		}
		return e
	case x.alias != nil:
		rec = x.alias.rec
	case x.skip:
		rec = x.cur
	}
	e.FullURL = s.base(r) + "/" + rec.Type + "/" + rec.ID
	e.Response.Location = rec.Type + "/" + rec.ID + "/_history/" + strconv.FormatInt(rec.Version, 10)
	e.Response.Etag = etag(rec.Version)
	e.Response.LastModified = fhir.FormatInstant(rec.Updated)
	switch preferReturn(r) {
	case "representation":
		if bundlePreferRepresentation(r) {
			e.Resource = rec.Body
		}
	case "OperationOutcome":
		is := append([]fhir.Issue{{Severity: fhir.SeverityInformation, Code: fhir.CodeInformational,
			Details: fmt.Sprintf("%s/%s version %d", rec.Type, rec.ID, rec.Version)}}, x.outcome...)
		e.Response.Outcome = OperationOutcome(is)
	}
	return e
}

// bundlePreferRepresentation: a Bundle's response entries carry the
// resources only when the client asks (Prefer: return=representation); by
// default they are minimal, as a 1000-entry upload need not come back.
func bundlePreferRepresentation(r *http.Request) bool {
	for _, p := range preferences(r) {
		if p == "return=representation" {
			return true
		}
	}
	return false
}

// parallel runs fn(0) … fn(n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, fn func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0))
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		})
	}
	wg.Wait()
}

func statusLine(code int) string { return strconv.Itoa(code) + " " + http.StatusText(code) }
