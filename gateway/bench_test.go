package gateway_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
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
	gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir"})
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
	gw := gateway.New(gateway.Config{Store: st, BaseURL: "http://x/fhir"})
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
