package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/fhirgate/fhirgate/policy"
)

// memStore is a minimal in-memory store.Store for benchmarks only: it
// isolates the gateway's own CPU cost from storage. Behavioural tests use
// the real backends.
type memStore struct {
	mu   sync.Mutex
	recs map[store.Key][]store.Record
	keys map[string][]byte
}

func newMemStore() *memStore {
	return &memStore{recs: map[store.Key][]store.Record{}, keys: map[string][]byte{}}
}

func (m *memStore) Put(_ context.Context, r store.Record, _ store.PutOptions) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if int64(len(m.recs[r.Key()])) != r.Version-1 {
		return store.ErrConflict
	}
	m.recs[r.Key()] = append(m.recs[r.Key()], r)
	return nil
}

// Commit is not atomic here: the benchmarks commit one record at a time.
func (m *memStore) Commit(ctx context.Context, c store.Commit) error {
	for _, w := range c.Writes {
		if err := m.Put(ctx, w.Record, store.PutOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) GetCell(context.Context, string) (store.Cell, error) { return store.Cell{}, nil }

func (m *memStore) Get(_ context.Context, k store.Key) (store.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.recs[k]
	if len(vs) == 0 {
		return store.Record{}, store.ErrNotFound
	}
	return vs[len(vs)-1], nil
}

func (m *memStore) GetVersion(ctx context.Context, k store.Key, v int64) (store.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	vs := m.recs[k]
	if v < 1 || int(v) > len(vs) {
		return store.Record{}, store.ErrNotFound
	}
	return vs[v-1], nil
}

func (m *memStore) History(context.Context, store.HistoryQuery) ([]store.Record, int, error) {
	return nil, 0, nil
}
func (m *memStore) Search(context.Context, store.Query) ([]string, error) { return nil, nil }
func (m *memStore) Erase(context.Context, store.Key) error                { return errors.ErrUnsupported }
func (m *memStore) Ping(context.Context) error                            { return nil }

func (m *memStore) GetKey(_ context.Context, id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.keys[id]; ok {
		return v, nil
	}
	return nil, store.ErrNotFound
}

func (m *memStore) PutKey(_ context.Context, id string, old, val []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.keys[id]; ok != (old != nil) || !bytes.Equal(cur, old) {
		return store.ErrConflict
	}
	m.keys[id] = val
	return nil
}

func (m *memStore) ScanKeys(_ context.Context, fn func(string, []byte) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, v := range m.keys {
		if err := fn(id, v); err != nil {
			return err
		}
	}
	return nil
}

// benchStores are the stores the gateway benchmarks run on: in memory,
// plain and sealed, so the difference is the cost of encryption at rest.
func benchStores(b *testing.B, fn func(b *testing.B, st store.Store)) {
	b.Run("plain", func(b *testing.B) { fn(b, newMemStore()) })
	b.Run("sealed", func(b *testing.B) { fn(b, sealedtest.Wrap(b, newMemStore())) })
}
func (m *memStore) Close() error { return nil }

func benchBody(b *testing.B) []byte {
	body, err := os.ReadFile("../testdata/conformance/r4-examples/Patient-example.json")
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// BenchmarkParseValidate is google/fhir's unmarshal+validate of the body:
// the floor for create.
func BenchmarkParseValidate(b *testing.B) {
	body := benchBody(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fhir.Parse(body, fhir.ParseOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreate is the gateway's whole create path (routing, parse,
// encode, index terms, response) over an in-memory store. Compare its
// ns/op with BenchmarkParseValidate: the target is at most 1.25x.
func BenchmarkCreate(b *testing.B) { benchStores(b, benchCreate) }

func benchCreate(b *testing.B, st store.Store) {
	body := benchBody(b)
	gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir", NoAudit: true})
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/fhir/Patient", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		w := httptest.NewRecorder()
		gw.ServeHTTP(w, req)
		if w.Code != http.StatusCreated {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkRead serves a stored resource.
func BenchmarkRead(b *testing.B) { benchStores(b, benchRead) }

func benchRead(b *testing.B, st store.Store) {
	body := benchBody(b)
	gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir", NoAudit: true})
	req := httptest.NewRequest(http.MethodPut, "/fhir/Patient/example", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	w := httptest.NewRecorder()
	gw.ServeHTTP(w, req)
	if w.Code != http.StatusCreated {
		b.Fatalf("status %d: %s", w.Code, w.Body)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		gw.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/fhir/Patient/example", nil))
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// benchAuth returns a verifier of a fresh dev key, and a func that signs
// tokens with it.
func benchAuth(b *testing.B) (*auth.Verifier, func(fhirUser, scope string) string) {
	key, err := auth.GenerateDevKey()
	if err != nil {
		b.Fatal(err)
	}
	v, err := auth.NewVerifier(b.Context(), auth.Config{JWKS: key.PublicJWKS(), Issuer: auth.DevIssuer, Audience: auth.DevAudience})
	if err != nil {
		b.Fatal(err)
	}
	return v, func(fhirUser, scope string) string {
		tk, err := key.Sign(auth.Claims{Subject: "bench", FHIRUser: fhirUser, Scope: scope}, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		return tk
	}
}

// BenchmarkSecured measures create and read on a sealed bbolt store with
// and without authentication, policy and audit: "open" is the bare REST
// core; "system" a backend client (scopes only); "practitioner" a user
// whose every request also goes through the patient's Consent; each
// secured request also stores its AuditEvent.
func BenchmarkSecured(b *testing.B) {
	v, sign := benchAuth(b)
	sys := sign("", "system/*.*")
	for _, c := range []struct {
		name  string
		open  bool
		token string
	}{
		{"open", true, ""},
		{"system", false, sys},
		{"practitioner", false, sign("Practitioner/P1", "user/*.cruds")},
	} {
		b.Run(c.name, func(b *testing.B) {
			backend, err := boltstore.New(b.Context(), boltstore.Config{Dir: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { backend.Close() })
			cfg := gateway.Config{Store: sealedtest.Wrap(b, backend), BaseURL: "http://x/fhir", NoAudit: c.open}
			if !c.open {
				eng, err := policy.New(b.Context(), policy.Config{})
				if err != nil {
					b.Fatal(err)
				}
				cfg.Auth, cfg.Policy = v, eng
			}
			gw := gateway.New(cfg)
			do := func(method, path, token string, body []byte) *httptest.ResponseRecorder {
				req := httptest.NewRequest(method, path, bytes.NewReader(body))
				if body != nil {
					req.Header.Set("Content-Type", "application/fhir+json")
				}
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				w := httptest.NewRecorder()
				gw.ServeHTTP(w, req)
				return w
			}
			do(http.MethodPut, "/fhir/Patient/A", sys, []byte(matrixPatient("A")))
			do(http.MethodPost, "/fhir/Consent", sys, []byte(consent("Patient/A", "Practitioner/P1", "2020-01-01", "2100-01-01", "")))
			obs := []byte(obsFor("Patient/A"))
			do(http.MethodPut, "/fhir/Observation/o1", sys, []byte(strings.Replace(string(obs), `{"resourceType":"Observation",`, `{"resourceType":"Observation","id":"o1",`, 1)))
			b.Run("create", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if w := do(http.MethodPost, "/fhir/Observation", c.token, obs); w.Code != http.StatusCreated {
						b.Fatalf("status %d: %s", w.Code, w.Body)
					}
				}
			})
			b.Run("read", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if w := do(http.MethodGet, "/fhir/Observation/o1", c.token, nil); w.Code != http.StatusOK {
						b.Fatalf("status %d: %s", w.Code, w.Body)
					}
				}
			})
			// Concurrent reads: bbolt coalesces the AuditEvent writes of
			// concurrent requests into one commit.
			b.Run("read-parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(16)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if w := do(http.MethodGet, "/fhir/Observation/o1", c.token, nil); w.Code != http.StatusOK {
							b.Errorf("status %d: %s", w.Code, w.Body)
							return
						}
					}
				})
			})
		})
	}
}

// BenchmarkAuditedRead is an audited read over the in-memory store (plain
// and sealed): token (cached), policy, compartments and the AuditEvent
// (built, encoded, indexed, sealed, given its log leaf), without the disk
// sync BenchmarkSecured's bbolt store adds. It is the gateway's own CPU per
// audited read.
func BenchmarkAuditedRead(b *testing.B) {
	v, sign := benchAuth(b)
	sys := sign("", "system/*.*")
	benchStores(b, func(b *testing.B, st store.Store) {
		eng, err := policy.New(b.Context(), policy.Config{})
		if err != nil {
			b.Fatal(err)
		}
		gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir", Auth: v, Policy: eng})
		do := func(method, path string, body []byte) *httptest.ResponseRecorder {
			req := httptest.NewRequest(method, path, bytes.NewReader(body))
			if body != nil {
				req.Header.Set("Content-Type", "application/fhir+json")
			}
			req.Header.Set("Authorization", "Bearer "+sys)
			w := httptest.NewRecorder()
			gw.ServeHTTP(w, req)
			return w
		}
		do(http.MethodPut, "/fhir/Patient/A", []byte(matrixPatient("A")))
		obs := strings.Replace(obsFor("Patient/A"), `{"resourceType":"Observation",`, `{"resourceType":"Observation","id":"o1",`, 1)
		if w := do(http.MethodPut, "/fhir/Observation/o1", []byte(obs)); w.Code != http.StatusCreated {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
		b.ReportAllocs()
		for b.Loop() {
			if w := do(http.MethodGet, "/fhir/Observation/o1", nil); w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	})
}

// TestLeafDigests: every version the gateway stores (resources as sent, in
// any layout, and its own AuditEvents) commits in its log leaf to
// anchor.Digest of its body, which the gateway computes from the decoded
// document rather than the body. It runs on the benchmarks' memStore, which
// keeps every record as written.
func TestLeafDigests(t *testing.T) {
	st := newMemStore()
	gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir"})
	do := func(method, path string, body []byte) {
		t.Helper()
		req := httptest.NewRequest(method, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		w := httptest.NewRecorder()
		gw.ServeHTTP(w, req)
		if w.Code >= 300 {
			t.Fatalf("%s %s: status %d: %s", method, path, w.Code, w.Body)
		}
	}
	example, err := os.ReadFile("../testdata/conformance/r4-examples/Patient-example.json")
	if err != nil {
		t.Fatal(err)
	}
	do(http.MethodPut, "/fhir/Patient/example", example)
	do(http.MethodPost, "/fhir/Patient", example)
	do(http.MethodPut, "/fhir/Patient/example", []byte(strings.Replace(string(example), `"active": true`, `"active": false`, 1)))
	do(http.MethodPut, "/fhir/Patient/u", []byte(`{"resourceType":"Patient","id":"u","meta":{"tag":[{"code":"<&>"}],"versionId":"9"},"name":[{"family":"Ünal \u00e9\ud83d\ude00","given":["a\u2028b"]}]}`))
	do(http.MethodPut, "/fhir/Observation/o1", []byte(strings.Replace(obsFor("Patient/u"), `{"resourceType":"Observation",`, `{"resourceType":"Observation","id":"o1",`, 1)))
	do(http.MethodGet, "/fhir/Observation/o1", nil)
	do(http.MethodGet, "/fhir/Patient?name=unal", nil)
	n, audits := 0, 0
	for k, vs := range st.recs {
		for _, rec := range vs {
			leaf, err := anchor.ParseLeaf(rec.Leaf)
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			want, err := anchor.Digest(rec.Salt, rec.Body)
			if err != nil {
				t.Fatal(err)
			}
			if leaf.Digest != want {
				t.Errorf("%s version %d: leaf digest %s, anchor.Digest of the body %s", k, rec.Version, leaf.Digest, want)
			}
			n++
			if k.Type == "AuditEvent" {
				audits++
			}
		}
	}
	if n < 10 || audits < 5 {
		t.Errorf("checked %d versions (%d AuditEvents)", n, audits)
	}
}
