package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
)

// The fuzz targets of Bundle processing. FuzzBundle POSTs a fuzzed Bundle
// to a whole gateway; FuzzParseBundle runs the steps before the store on
// their own, many times faster. Seeds: testdata/fuzzseeds/*.json (the
// R4 transaction example and small Bundles written for them) and
// testdata/fuzz/<target>.

const fuzzHost = "fhir.example.org"

// fuzzPrefers are the Prefer headers a fuzzed request is sent with.
var fuzzPrefers = []string{"", "return=representation", "return=OperationOutcome", "return=minimal"}

// fuzzState is what the store holds before fuzzing: the state the R4
// transaction example presumes, and a practitioner's schedule and slot.
const fuzzState = `{"resourceType": "Bundle", "type": "batch", "entry": [
 {"resource": {"resourceType": "Patient", "id": "example", "name": [{"given": ["Peter"], "family": "Chalmers"}]}, "request": {"method": "PUT", "url": "Patient/example"}},
 {"resource": {"resourceType": "Patient", "identifier": [{"system": "http:/example.org/fhir/ids", "value": "234234"}]}, "request": {"method": "POST", "url": "Patient"}},
 {"resource": {"resourceType": "Patient", "identifier": [{"system": "http:/example.org/fhir/ids", "value": "456456"}]}, "request": {"method": "POST", "url": "Patient"}},
 {"resource": {"resourceType": "Patient", "id": "123a"}, "request": {"method": "PUT", "url": "Patient/123a"}},
 {"resource": {"resourceType": "Patient", "id": "123a", "active": true}, "request": {"method": "PUT", "url": "Patient/123a", "ifMatch": "W/\"1\""}},
 {"resource": {"resourceType": "Patient", "id": "234"}, "request": {"method": "PUT", "url": "Patient/234"}},
 {"resource": {"resourceType": "Patient", "identifier": [{"value": "123456"}]}, "request": {"method": "POST", "url": "Patient"}},
 {"resource": {"resourceType": "Patient", "id": "12334", "birthDate": "2000-01-04"}, "request": {"method": "PUT", "url": "Patient/12334"}},
 {"resource": {"resourceType": "Practitioner", "id": "fz-p1", "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999955949"}]}, "request": {"method": "PUT", "url": "Practitioner/fz-p1"}},
 {"resource": {"resourceType": "Organization", "id": "fz-o1", "name": "Fuzz Clinic"}, "request": {"method": "PUT", "url": "Organization/fz-o1"}},
 {"resource": {"resourceType": "Schedule", "id": "fz-sched", "actor": [{"reference": "Practitioner/fz-p1"}]}, "request": {"method": "PUT", "url": "Schedule/fz-sched"}},
 {"resource": {"resourceType": "Slot", "id": "fz-slot1", "schedule": {"reference": "Schedule/fz-sched"}, "status": "free", "start": "2026-03-01T09:00:00Z", "end": "2026-03-01T09:30:00Z"}, "request": {"method": "PUT", "url": "Slot/fz-slot1"}}
]}`

// fuzzStore counts what commits change: versions of every type but
// AuditEvent, cells and erasures.
type fuzzStore struct {
	*sealed.Store
	changes atomic.Int64
}

func (s *fuzzStore) Commit(ctx context.Context, c store.Commit) error {
	err := s.Store.Commit(ctx, c)
	if err == nil {
		for _, w := range c.Writes {
			if w.Type != "AuditEvent" {
				s.changes.Add(1)
			}
		}
		s.changes.Add(int64(len(c.Cells)))
	}
	return err
}

func (s *fuzzStore) Put(ctx context.Context, r store.Record, opts store.PutOptions) error {
	err := s.Store.Put(ctx, r, opts)
	if err == nil && r.Type != "AuditEvent" {
		s.changes.Add(1)
	}
	return err
}

func (s *fuzzStore) Erase(ctx context.Context, k store.Key) error {
	err := s.Store.Erase(ctx, k)
	if err == nil {
		s.changes.Add(1)
	}
	return err
}

// fuzzLog keeps the last error the server logged, to explain a 500.
type fuzzLog struct {
	mu   sync.Mutex
	last string
}

func (l *fuzzLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *fuzzLog) WithAttrs([]slog.Attr) slog.Handler            { return l }
func (l *fuzzLog) WithGroup(string) slog.Handler                 { return l }

func (l *fuzzLog) Handle(_ context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool { s += " " + a.String(); return true })
	l.mu.Lock()
	l.last = s
	l.mu.Unlock()
	return nil
}

func (l *fuzzLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// newFuzzServer is a gateway on a sealed bbolt store in a temporary
// directory (TMPDIR), holding fuzzState, for the life of the fuzz target.
func newFuzzServer(f *testing.F) (*Server, *fuzzStore, *fuzzLog) {
	f.Helper()
	backend, err := boltstore.New(context.Background(), boltstore.Config{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { backend.Close() })
	st := &fuzzStore{Store: sealedtest.Wrap(f, backend)}
	logs := &fuzzLog{}
	s := New(Config{Store: st, Logger: slog.New(logs), ExportDir: f.TempDir(), MaxBundleEntries: 64})
	f.Cleanup(func() { s.Close() })
	code, body := fuzzPost(s, []byte(fuzzState), "")
	if code != http.StatusOK {
		f.Fatalf("setting up the store: %d %s", code, body)
	}
	var out struct {
		Entry []struct{ Response struct{ Status string } }
	}
	if err := json.Unmarshal(body, &out); err != nil {
		f.Fatal(err)
	}
	for i, e := range out.Entry {
		if !strings.HasPrefix(e.Response.Status, "2") {
			f.Fatalf("setting up the store: entry %d: %s", i, e.Response.Status)
		}
	}
	return s, st, logs
}

func fuzzPost(s *Server, body []byte, prefer string) (int, []byte) {
	req := httptest.NewRequest(http.MethodPost, "http://"+fuzzHost+"/fhir", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	if prefer != "" {
		req.Header.Set("Prefer", prefer)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

// fuzzBundles adds the seed Bundles.
func fuzzBundles(f *testing.F) [][]byte {
	f.Helper()
	files, err := filepath.Glob("testdata/fuzzseeds/*.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed Bundles: %v", err)
	}
	var out [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// fuzzHazard reports whether a Bundle would reach beyond the process: a
// Subscription (rest-hook notifications go to any URL), $export (files,
// background jobs) or a websocket. Every key and string is checked,
// JSON-, path- and query-unescaped.
func fuzzHazard(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if dec.Decode(&doc) != nil {
		return false // not JSON: the server decodes it no further
	}
	hazard := false
	check := func(s string) {
		cands := []string{s}
		if u, err := url.PathUnescape(s); err == nil {
			cands = append(cands, u)
		}
		if u, err := url.QueryUnescape(s); err == nil {
			cands = append(cands, u)
		}
		for _, c := range cands {
			c = strings.ToLower(c)
			if strings.Contains(c, "subscription") || strings.Contains(c, "export") || strings.Contains(c, "websocket") {
				hazard = true
			}
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				check(k)
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case string:
			check(v)
		}
	}
	walk(doc)
	return hazard
}

// FuzzBundle POSTs a fuzzed Bundle, with one of four Prefer headers, to a
// gateway on a sealed bbolt store (built once). The answer must never be
// a 5xx; a non-2xx answer must be an OperationOutcome with issues, and
// must leave the store as it was (but for AuditEvents); a 200 must be
// the batch- or transaction-response Bundle with one entry per entry,
// none of them a 5xx, the failed ones carrying an OperationOutcome, and
// for a transaction no write entry failed.
func FuzzBundle(f *testing.F) {
	for i, b := range fuzzBundles(f) {
		f.Add(b, uint8(i%len(fuzzPrefers)))
	}
	s, st, logs := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte, prefer uint8) {
		if fuzzHazard(body) {
			return
		}
		before := st.changes.Load()
		code, out := fuzzPost(s, body, fuzzPrefers[int(prefer)%len(fuzzPrefers)])
		if code >= 500 {
			t.Fatalf("status %d: %s\nlogged: %s", code, out, logs)
		}
		if code != http.StatusOK {
			checkOutcome(t, code, out)
			if n := st.changes.Load() - before; n != 0 {
				t.Fatalf("a %d answer, and %d changes stored: %s", code, n, out)
			}
			return
		}
		in, err := parseBundle(body)
		if err != nil {
			t.Fatalf("a 200 answer to a Bundle parseBundle refuses (%v): %s", err, out)
		}
		var resp struct {
			ResourceType, Type string
			Entry              []struct {
				Response struct {
					Status  string
					Outcome json.RawMessage
				}
			}
		}
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatalf("200 with a body that is not JSON (%v): %s", err, out)
		}
		if resp.ResourceType != "Bundle" || resp.Type != in.Type+"-response" || len(resp.Entry) != len(in.Entry) {
			t.Fatalf("a %s of %d entries answered with a %s %s of %d entries", in.Type, len(in.Entry), resp.Type, resp.ResourceType, len(resp.Entry))
		}
		for i, e := range resp.Entry {
			var code int
			if _, err := fmt.Sscanf(e.Response.Status, "%d", &code); err != nil || code < 100 {
				t.Fatalf("entry %d: status %q", i, e.Response.Status)
			}
			if code >= 500 {
				t.Fatalf("entry %d: status %s: %s\nlogged: %s", i, e.Response.Status, e.Response.Outcome, logs)
			}
			if code >= 400 {
				checkOutcome(t, code, e.Response.Outcome)
			}
			m := in.Entry[i].Request.Method
			if in.Type == "transaction" && code >= 400 && m != http.MethodGet && m != http.MethodHead {
				t.Fatalf("a committed transaction with entry %d (%s) failed: %s", i, m, e.Response.Status)
			}
		}
	})
}

// checkOutcome checks body is an OperationOutcome with issues that each
// have a severity and a code.
func checkOutcome(t *testing.T, code int, body []byte) {
	t.Helper()
	var oo struct {
		ResourceType string
		Issue        []struct{ Severity, Code string }
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("a %d answer that is not an OperationOutcome with issues (%v): %s", code, err, body)
	}
	for _, is := range oo.Issue {
		if is.Severity == "" || is.Code == "" {
			t.Fatalf("an issue without severity or code: %s", body)
		}
	}
}

// FuzzParseBundle runs what the gateway does to a Bundle before anything
// is stored: parseBundle, checkEntry, processingOrder, parseEntryURL,
// checkTxEntry, and the rewriter (fullUrls mapped as a transaction maps
// them; conditional references resolved in a store holding fuzzState).
// Errors must be *fhir.Error or *HTTPError with a 4xx status;
// processingOrder must be a stable sort of the entries by method; a
// parsed request.url must name a known type and a valid id; rewriting
// must be deterministic, leave no reference to a urn:uuid, and give JSON.
func FuzzParseBundle(f *testing.F) {
	for _, b := range fuzzBundles(f) {
		f.Add(b)
	}
	s, _, _ := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := parseBundle(body)
		if err != nil {
			checkClientError(t, "parseBundle", err)
			return
		}
		if b.ResourceType != "Bundle" || (b.Type != "batch" && b.Type != "transaction") {
			t.Fatalf("parseBundle took a %s of type %q", b.ResourceType, b.Type)
		}
		for i, e := range b.Entry {
			if err := checkEntry(i, e); err != nil {
				checkClientError(t, "checkEntry", err)
				return
			}
		}
		order := processingOrder(b.Entry)
		if len(order) != len(b.Entry) {
			t.Fatalf("processingOrder: %d of %d entries", len(order), len(b.Entry))
		}
		seen := make([]bool, len(b.Entry))
		for k, i := range order {
			if seen[i] {
				t.Fatalf("processingOrder %v repeats %d", order, i)
			}
			seen[i] = true
			if k > 0 {
				p, c := methodOrder[b.Entry[order[k-1]].Request.Method], methodOrder[b.Entry[i].Request.Method]
				if p > c || (p == c && order[k-1] > i) {
					t.Fatalf("processingOrder %v is not a stable sort by method", order)
				}
			}
		}
		r := httptest.NewRequest(http.MethodPost, "http://"+fuzzHost+"/fhir", nil)
		rw := newRewriter(s, r)
		targets := make([]entryTarget, len(b.Entry))
		for i, e := range b.Entry {
			tg, err := s.parseEntryURL(r, e.Request.URL)
			if err != nil {
				continue
			}
			targets[i] = tg
			if !tg.operation {
				if !fhir.IsResourceType(tg.typ) || (tg.id != "" && !fhir.ValidID(tg.id)) {
					t.Fatalf("request.url %q parsed as %+v", e.Request.URL, tg)
				}
			}
			if b.Type == "transaction" {
				if err := checkTxEntry(&txEntry{i: i, e: e, method: e.Request.Method, t: tg}); err != nil {
					checkClientError(t, "checkTxEntry", err)
				}
			}
			if e.Request.Method != http.MethodDelete && tg.typ != "" && fhir.IsResourceType(tg.typ) {
				id := tg.id
				if id == "" {
					id = fmt.Sprintf("fz%d", i)
				}
				rw.mapFullURL(e.FullURL, tg.typ, id)
			}
		}
		for i, e := range b.Entry {
			if len(e.Resource) == 0 {
				continue
			}
			path := fmt.Sprintf("Bundle.entry[%d].resource", i)
			out, err := rw.rewrite(e.Resource, path)
			out2, err2 := rw.rewrite(e.Resource, path)
			if (err == nil) != (err2 == nil) || !bytes.Equal(out, out2) {
				t.Fatalf("rewriting entry %d is not deterministic: %v %v\n%s\n%s", i, err, err2, out, out2)
			}
			if err != nil {
				checkClientError(t, "rewrite", err)
				continue
			}
			if !json.Valid(out) {
				t.Fatalf("entry %d rewritten to invalid JSON: %s", i, out)
			}
			var doc any
			json.Unmarshal(out, &doc)
			if ref := urnReference(doc); ref != "" {
				t.Fatalf("entry %d rewritten keeps the reference %q: %s", i, ref, out)
			}
		}
	})
}

// urnReference returns a "reference" whose value is a urn:uuid in v.
func urnReference(v any) string {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok && k == "reference" && strings.HasPrefix(s, "urn:uuid:") {
				return s
			}
			if ref := urnReference(e); ref != "" {
				return ref
			}
		}
	case []any:
		for _, e := range v {
			if ref := urnReference(e); ref != "" {
				return ref
			}
		}
	}
	return ""
}

// checkClientError: err is a *fhir.Error or an *HTTPError of status 4xx,
// with issues.
func checkClientError(t *testing.T, what string, err error) {
	t.Helper()
	var fe *fhir.Error
	var he *HTTPError
	switch {
	case errors.As(err, &fe):
		if fe.Status < 400 || fe.Status > 499 || len(fe.Issues) == 0 {
			t.Fatalf("%s: %+v", what, fe)
		}
	case errors.As(err, &he):
		if he.Status < 400 || he.Status > 499 {
			t.Fatalf("%s: %+v", what, he)
		}
	default:
		t.Fatalf("%s: error %T %v, want a *fhir.Error or *HTTPError", what, err, err)
	}
}
