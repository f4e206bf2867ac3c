package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/google/go-cmp/cmp"
)

var redisPrefix atomic.Int64

// eachStore runs fn against a fresh boltstore and a fresh redisstore (on
// its own redis-server, with a key prefix of its own).
func eachStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Run("bolt", func(t *testing.T) { fn(t, boltStore(t)) })
	t.Run("redis", func(t *testing.T) { fn(t, sealedtest.Wrap(t, redisBackend(t))) })
}

// redisBackend is a fresh redisstore on a redis-server of its own, with
// a key prefix of its own.
func redisBackend(t testing.TB) *redisstore.Store {
	t.Helper()
	srv := redistest.Start(t)
	st, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: fmt.Sprintf("gw%d", redisPrefix.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// boltBackend is a fresh boltstore.
func boltBackend(t testing.TB) *boltstore.Store {
	t.Helper()
	st, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// sharedRedis returns n sealed stores, each with its own connection pool
// (as separate gateway processes have), on one fresh redis-server, under
// one key prefix and one KEK ring.
func sharedRedis(t *testing.T, n int) []store.Store {
	t.Helper()
	srv := redistest.Start(t)
	prefix := fmt.Sprintf("gw%d", redisPrefix.Add(1))
	ring := sealedtest.Ring(t)
	out := make([]store.Store, n)
	for i := range out {
		backend, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { backend.Close() })
		out[i] = sealedtest.WrapRing(t, backend, ring)
	}
	return out
}

// boltStore is a fresh sealed boltstore.
func boltStore(t *testing.T) store.Store {
	t.Helper()
	return sealedtest.Wrap(t, boltBackend(t))
}

// server is a gateway on an httptest server.
type server struct {
	base string // absolute FHIR base, ending in /fhir
	hc   *http.Client
}

func newServer(t *testing.T, cfg gateway.Config) *server {
	t.Helper()
	gw := gateway.New(cfg)
	t.Cleanup(func() { gw.Close() })
	ts := httptest.NewServer(gw)
	t.Cleanup(ts.Close)
	return &server{base: ts.URL + "/fhir", hc: ts.Client()}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request. path is relative to the FHIR base unless absolute;
// hdr are header name/value pairs. A body is sent as application/fhir+json
// unless hdr sets Content-Type.
func (s *server) do(t *testing.T, method, path, body string, hdr ...string) response {
	t.Helper()
	u := path
	if !strings.HasPrefix(path, "http") {
		u = s.base + path
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := s.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// resource decodes the response body as a resource.
func (r response) resource(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	return m
}

// want checks the status of a response.
func (r response) want(t *testing.T, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body %.2000q", r.status, status, r.body)
	}
	return r
}

// wantOutcome checks the status and that the body is an OperationOutcome
// with at least one issue carrying a severity and a code.
func (r response) wantOutcome(t *testing.T, status int) {
	t.Helper()
	r.want(t, status)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Content-Type = %q, want application/fhir+json", ct)
	}
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	if err := json.Unmarshal(r.body, &oo); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	if oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("body is not an OperationOutcome with issues: %s", r.body)
	}
	for _, is := range oo.Issue {
		if is.Severity == "" || is.Code == "" {
			t.Errorf("issue without severity or code: %s", r.body)
		}
	}
}

// create POSTs a resource, expects 201 and returns its id.
func (s *server) create(t *testing.T, typ, body string) string {
	t.Helper()
	r := s.do(t, http.MethodPost, "/"+typ, body).want(t, http.StatusCreated)
	id, _ := r.resource(t)["id"].(string)
	if id == "" {
		t.Fatalf("created resource has no id: %s", r.body)
	}
	return id
}

type bundleJSON struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        *int   `json:"total"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   *struct {
			Mode string `json:"mode"`
		} `json:"search"`
		Request *struct {
			Method string `json:"method"`
			URL    string `json:"url"`
		} `json:"request"`
		Response *struct {
			Status   string `json:"status"`
			Etag     string `json:"etag"`
			Location string `json:"location"`
		} `json:"response"`
	} `json:"entry"`
}

func (r response) bundle(t *testing.T) bundleJSON {
	t.Helper()
	r.want(t, http.StatusOK)
	var b bundleJSON
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	if b.ResourceType != "Bundle" {
		t.Fatalf("not a Bundle: %s", r.body)
	}
	return b
}

func (b bundleJSON) link(rel string) string {
	for _, l := range b.Link {
		if l.Relation == rel {
			return l.URL
		}
	}
	return ""
}

func (b bundleJSON) total(t *testing.T) int {
	t.Helper()
	if b.Total == nil {
		t.Fatal("Bundle has no total")
	}
	return *b.Total
}

// refs returns Type/id of the entries whose search mode is mode ("" for
// every entry with a resource).
func (b bundleJSON) refs(t *testing.T, mode string) []string {
	t.Helper()
	var out []string
	for _, e := range b.Entry {
		if mode != "" && (e.Search == nil || e.Search.Mode != mode) {
			continue
		}
		if e.Resource == nil {
			continue
		}
		var r struct{ ResourceType, ID string }
		if err := json.Unmarshal(e.Resource, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r.ResourceType+"/"+r.ID)
	}
	return out
}

// typeHistoryTotal is the number of versions of type typ the server holds.
func (s *server) typeHistoryTotal(t *testing.T, typ string) int {
	t.Helper()
	return s.do(t, http.MethodGet, "/"+typ+"/_history", "").bundle(t).total(t)
}

func patient(family string) string {
	return `{"resourceType": "Patient", "name": [{"family": "` + family + `", "given": ["Test"]}], "gender": "female"}`
}

func TestCreateReadUpdateDelete(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})

		// create
		r := s.do(t, http.MethodPost, "/Patient", `{"resourceType": "Patient", "id": "ignored", "name": [{"family": "Chalmers"}]}`).want(t, http.StatusCreated)
		created := r.resource(t)
		id, _ := created["id"].(string)
		if id == "" || id == "ignored" {
			t.Fatalf("create: id = %q; want a server-assigned id", id)
		}
		if got, want := r.header.Get("Location"), s.base+"/Patient/"+id+"/_history/1"; got != want {
			t.Errorf("create: Location = %q, want %q", got, want)
		}
		if got := r.header.Get("ETag"); got != `W/"1"` {
			t.Errorf("create: ETag = %q, want W/\"1\"", got)
		}
		meta, _ := created["meta"].(map[string]any)
		if meta["versionId"] != "1" {
			t.Errorf("create: meta.versionId = %v, want 1", meta["versionId"])
		}
		checkLastModified(t, r, meta)

		// read
		r = s.do(t, http.MethodGet, "/Patient/"+id, "").want(t, http.StatusOK)
		if got := r.header.Get("ETag"); got != `W/"1"` {
			t.Errorf("read: ETag = %q, want W/\"1\"", got)
		}
		checkLastModified(t, r, meta)
		if diff := cmp.Diff(created, r.resource(t)); diff != "" {
			t.Errorf("read differs from create (-want +got):\n%s", diff)
		}
		if got := r.header.Get("Content-Type"); !strings.HasPrefix(got, "application/fhir+json") {
			t.Errorf("read: Content-Type = %q", got)
		}
		s.do(t, http.MethodGet, "/Patient/"+id, "", "If-None-Match", `W/"1"`).want(t, http.StatusNotModified)
		if r := s.do(t, http.MethodHead, "/Patient/"+id, "").want(t, http.StatusOK); len(r.body) != 0 {
			t.Errorf("HEAD returned a body: %s", r.body)
		}

		// update
		r = s.do(t, http.MethodPut, "/Patient/"+id, `{"resourceType": "Patient", "id": "`+id+`", "name": [{"family": "Chalmers-Smith"}]}`).want(t, http.StatusOK)
		if got := r.header.Get("ETag"); got != `W/"2"` {
			t.Errorf("update: ETag = %q, want W/\"2\"", got)
		}
		if got, want := r.header.Get("Location"), s.base+"/Patient/"+id+"/_history/2"; got != want {
			t.Errorf("update: Location = %q, want %q", got, want)
		}
		updated := r.resource(t)
		meta2, _ := updated["meta"].(map[string]any)
		if meta2["versionId"] != "2" {
			t.Errorf("update: meta.versionId = %v, want 2", meta2["versionId"])
		}
		checkLastModified(t, r, meta2)
		r = s.do(t, http.MethodGet, "/Patient/"+id, "").want(t, http.StatusOK)
		if got := r.header.Get("ETag"); got != `W/"2"` {
			t.Errorf("read after update: ETag = %q, want W/\"2\"", got)
		}

		// vread
		r = s.do(t, http.MethodGet, "/Patient/"+id+"/_history/1", "").want(t, http.StatusOK)
		if got := r.header.Get("ETag"); got != `W/"1"` {
			t.Errorf("vread 1: ETag = %q, want W/\"1\"", got)
		}
		checkLastModified(t, r, meta)
		if diff := cmp.Diff(created, r.resource(t)); diff != "" {
			t.Errorf("vread 1 differs from the created version (-want +got):\n%s", diff)
		}
		r = s.do(t, http.MethodGet, "/Patient/"+id+"/_history/2", "").want(t, http.StatusOK)
		if diff := cmp.Diff(updated, r.resource(t)); diff != "" {
			t.Errorf("vread 2 differs from the update (-want +got):\n%s", diff)
		}
		s.do(t, http.MethodGet, "/Patient/"+id+"/_history/3", "").wantOutcome(t, http.StatusNotFound)

		// delete
		r = s.do(t, http.MethodDelete, "/Patient/"+id, "").want(t, http.StatusNoContent)
		if got := r.header.Get("ETag"); got != `W/"3"` {
			t.Errorf("delete: ETag = %q, want W/\"3\"", got)
		}
		r = s.do(t, http.MethodGet, "/Patient/"+id, "")
		r.wantOutcome(t, http.StatusGone)
		if got := r.header.Get("ETag"); got != `W/"3"` {
			t.Errorf("read after delete: ETag = %q, want W/\"3\"", got)
		}
		s.do(t, http.MethodGet, "/Patient/"+id+"/_history/3", "").wantOutcome(t, http.StatusGone)
		s.do(t, http.MethodGet, "/Patient/"+id+"/_history/1", "").want(t, http.StatusOK)
		s.do(t, http.MethodDelete, "/Patient/"+id, "").want(t, http.StatusNoContent)

		// history, newest first
		h := s.do(t, http.MethodGet, "/Patient/"+id+"/_history", "").bundle(t)
		if h.Type != "history" || h.total(t) != 3 {
			t.Errorf("history: type %q total %v, want history and 3", h.Type, h.total(t))
		}
		type step struct{ Method, Status, Etag string }
		var got []step
		for _, e := range h.Entry {
			if e.Request == nil || e.Response == nil {
				t.Fatalf("history entry without request/response: %+v", e)
			}
			got = append(got, step{e.Request.Method, e.Response.Status, e.Response.Etag})
		}
		want := []step{
			{"DELETE", "204 No Content", `W/"3"`},
			{"PUT", "200 OK", `W/"2"`},
			{"POST", "201 Created", `W/"1"`},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("history (-want +got):\n%s", diff)
		}

		// not found
		s.do(t, http.MethodGet, "/Patient/no-such-id", "").wantOutcome(t, http.StatusNotFound)
		s.do(t, http.MethodGet, "/NoSuchType/1", "").wantOutcome(t, http.StatusNotFound)
	})
}

// checkLastModified checks the Last-Modified header is meta.lastUpdated.
func checkLastModified(t *testing.T, r response, meta map[string]any) {
	t.Helper()
	lm, err := http.ParseTime(r.header.Get("Last-Modified"))
	if err != nil {
		t.Errorf("Last-Modified %q: %v", r.header.Get("Last-Modified"), err)
		return
	}
	s, _ := meta["lastUpdated"].(string)
	lu, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Errorf("meta.lastUpdated %q: %v", s, err)
		return
	}
	if !lm.Equal(lu.Truncate(time.Second)) {
		t.Errorf("Last-Modified = %v, want meta.lastUpdated %v to the second", lm, lu)
	}
}

func TestUpdateCreates(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		r := s.do(t, http.MethodPut, "/Patient/pat-1", `{"resourceType": "Patient", "id": "pat-1"}`).want(t, http.StatusCreated)
		if got, want := r.header.Get("Location"), s.base+"/Patient/pat-1/_history/1"; got != want {
			t.Errorf("Location = %q, want %q", got, want)
		}
		if got := r.header.Get("ETag"); got != `W/"1"` {
			t.Errorf("ETag = %q, want W/\"1\"", got)
		}
		s.do(t, http.MethodPut, "/Patient/pat-1", `{"resourceType": "Patient", "id": "pat-2"}`).wantOutcome(t, http.StatusUnprocessableEntity)
		s.do(t, http.MethodPut, "/Patient/pat-1", `{"resourceType": "Patient"}`).wantOutcome(t, http.StatusBadRequest)
	})
}

func TestIfMatch(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		id := s.create(t, "Patient", patient("Match"))
		body := `{"resourceType": "Patient", "id": "` + id + `", "active": true}`

		s.do(t, http.MethodPut, "/Patient/"+id, body, "If-Match", `W/"1"`).want(t, http.StatusOK)
		// version 1 is no longer current
		s.do(t, http.MethodPut, "/Patient/"+id, body, "If-Match", `W/"1"`).wantOutcome(t, http.StatusPreconditionFailed)
		if got := s.do(t, http.MethodGet, "/Patient/"+id, "").header.Get("ETag"); got != `W/"2"` {
			t.Errorf("after a failed If-Match: ETag = %q, want W/\"2\"", got)
		}
		s.do(t, http.MethodPut, "/Patient/"+id, body, "If-Match", `W/"9"`).wantOutcome(t, http.StatusPreconditionFailed)
		// If-Match on a resource that does not exist
		s.do(t, http.MethodPut, "/Patient/nope", `{"resourceType": "Patient", "id": "nope"}`, "If-Match", `W/"1"`).wantOutcome(t, http.StatusPreconditionFailed)
		s.do(t, http.MethodGet, "/Patient/nope", "").wantOutcome(t, http.StatusNotFound)
		// delete
		s.do(t, http.MethodDelete, "/Patient/"+id, "", "If-Match", `W/"1"`).wantOutcome(t, http.StatusPreconditionFailed)
		s.do(t, http.MethodGet, "/Patient/"+id, "").want(t, http.StatusOK)
		s.do(t, http.MethodDelete, "/Patient/"+id, "", "If-Match", `W/"2"`).want(t, http.StatusNoContent)
		s.do(t, http.MethodGet, "/Patient/"+id, "").wantOutcome(t, http.StatusGone)
	})
}

func TestConditionalCreate(t *testing.T) {
	const ident = `"identifier": [{"system": "http://example.org/mrn", "value": "%s"}]`
	withIdent := func(v string) string {
		return `{"resourceType": "Patient", ` + fmt.Sprintf(ident, v) + `}`
	}
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})

		// no match: created
		r := s.do(t, http.MethodPost, "/Patient", withIdent("c-1"), "If-None-Exist", "identifier=http://example.org/mrn|c-1").want(t, http.StatusCreated)
		id, _ := r.resource(t)["id"].(string)
		if r.header.Get("Location") == "" || r.header.Get("ETag") != `W/"1"` {
			t.Errorf("conditional create: Location %q, ETag %q", r.header.Get("Location"), r.header.Get("ETag"))
		}
		before := s.typeHistoryTotal(t, "Patient")

		// one match: 200 with the existing resource, nothing stored
		for _, cond := range []string{"identifier=http://example.org/mrn|c-1", "Patient?identifier=c-1"} {
			r = s.do(t, http.MethodPost, "/Patient", withIdent("c-1"), "If-None-Exist", cond).want(t, http.StatusOK)
			if got, _ := r.resource(t)["id"].(string); got != id {
				t.Errorf("If-None-Exist %s: id = %q, want the existing %q", cond, got, id)
			}
			if got := r.header.Get("ETag"); got != `W/"1"` {
				t.Errorf("If-None-Exist %s: ETag = %q, want W/\"1\"", cond, got)
			}
		}
		if got := s.typeHistoryTotal(t, "Patient"); got != before {
			t.Errorf("a matched conditional create stored something: history %d -> %d", before, got)
		}

		// two matches: 412
		s.create(t, "Patient", withIdent("c-2"))
		s.create(t, "Patient", withIdent("c-2"))
		before = s.typeHistoryTotal(t, "Patient")
		s.do(t, http.MethodPost, "/Patient", withIdent("c-2"), "If-None-Exist", "identifier=c-2").wantOutcome(t, http.StatusPreconditionFailed)
		// criteria the index cannot answer exactly (a scan) behave the same
		s.do(t, http.MethodPost, "/Patient", withIdent("c-2"), "If-None-Exist", "identifier:not=c-1&identifier:not=zzz").wantOutcome(t, http.StatusPreconditionFailed)
		if got := s.typeHistoryTotal(t, "Patient"); got != before {
			t.Errorf("a rejected conditional create stored something: history %d -> %d", before, got)
		}

		// bad criteria
		s.do(t, http.MethodPost, "/Patient", withIdent("c-3"), "If-None-Exist", "shoesize=42").wantOutcome(t, http.StatusBadRequest)
		if got := s.typeHistoryTotal(t, "Patient"); got != before {
			t.Errorf("a rejected conditional create stored something: history %d -> %d", before, got)
		}
	})
}

func TestRejectedCreates(t *testing.T) {
	big := `{"resourceType": "Patient", "name": [{"family": "` + strings.Repeat("x", 600) + `"}]}`
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		hdr    []string
		status int
	}{
		{"415 text/plain", http.MethodPost, "/Patient", patient("A"), []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType},
		{"415 xml", http.MethodPost, "/Patient", patient("A"), []string{"Content-Type", "application/fhir+xml"}, http.StatusUnsupportedMediaType},
		{"415 on update", http.MethodPut, "/Patient/x1", `{"resourceType": "Patient", "id": "x1"}`, []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType},
		{"406 Accept xml", http.MethodPost, "/Patient", patient("A"), []string{"Accept", "application/fhir+xml"}, http.StatusNotAcceptable},
		{"406 _format xml", http.MethodPost, "/Patient?_format=xml", patient("A"), nil, http.StatusNotAcceptable},
		{"413 too large", http.MethodPost, "/Patient", big, nil, http.StatusRequestEntityTooLarge},
		{"413 too large update", http.MethodPut, "/Patient/x1", big, nil, http.StatusRequestEntityTooLarge},
		{"422 type mismatch", http.MethodPost, "/Patient", `{"resourceType": "Practitioner"}`, nil, http.StatusUnprocessableEntity},
		{"422 type mismatch on update", http.MethodPut, "/Patient/x1", `{"resourceType": "Practitioner", "id": "x1"}`, nil, http.StatusUnprocessableEntity},
		{"400 not JSON", http.MethodPost, "/Patient", `{"resourceType": `, nil, http.StatusBadRequest},
		{"400 not R4", http.MethodPost, "/Patient", `{"resourceType": "Patient", "gender": 5}`, nil, http.StatusBadRequest},
		{"400 unknown element", http.MethodPost, "/Patient", `{"resourceType": "Patient", "shoeSize": 42}`, nil, http.StatusBadRequest},
		{"400 empty body", http.MethodPost, "/Patient", "", []string{"Content-Type", "application/fhir+json"}, http.StatusBadRequest},
	}
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st, MaxBody: 512})
		s.create(t, "Patient", patient("Kept"))
		before := s.typeHistoryTotal(t, "Patient")
		for _, test := range tests {
			t.Run(test.name, func(t *testing.T) {
				s.do(t, test.method, test.path, test.body, test.hdr...).wantOutcome(t, test.status)
				if got := s.typeHistoryTotal(t, "Patient"); got != before {
					t.Errorf("a rejected write stored something: Patient history %d -> %d", before, got)
				}
			})
		}
		if got := s.do(t, http.MethodGet, "/Patient", "").bundle(t).total(t); got != 1 {
			t.Errorf("Patient search total = %d, want 1", got)
		}
		s.do(t, http.MethodGet, "/Patient/x1", "").wantOutcome(t, http.StatusNotFound)
		// GET with a non-JSON Accept
		s.do(t, http.MethodGet, "/Patient", "", "Accept", "application/xml").wantOutcome(t, http.StatusNotAcceptable)
		s.do(t, http.MethodGet, "/Patient", "", "Accept", "application/xml, application/json;q=0.5").want(t, http.StatusOK)
	})
}

func TestPreferReturn(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		s := newServer(t, gateway.Config{Store: st})
		r := s.do(t, http.MethodPost, "/Patient", patient("Minimal"), "Prefer", "return=minimal").want(t, http.StatusCreated)
		if len(bytes.TrimSpace(r.body)) != 0 || r.header.Get("Location") == "" {
			t.Errorf("return=minimal: body %q, Location %q", r.body, r.header.Get("Location"))
		}
		r = s.do(t, http.MethodPost, "/Patient", patient("Outcome"), "Prefer", "return=OperationOutcome")
		r.wantOutcome(t, http.StatusCreated)
	})
}
