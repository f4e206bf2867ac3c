package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
)

// onceStore makes Close idempotent, so a test can close a backend early
// and still register a cleanup.
type onceStore struct {
	store.Store
	once sync.Once
	err  error
}

func (s *onceStore) Close() error {
	s.once.Do(func() { s.err = s.Store.Close() })
	return s.err
}

// eachBackend runs fn against a bolt and a Redis backend, unsealed. open
// returns a new client of the subtest's backend (for bolt, the previous
// one must be closed first: it holds the file lock); shared says whether
// several clients can be open at once (separate gateway processes).
func eachBackend(t *testing.T, fn func(t *testing.T, open func(t *testing.T) store.Store, shared bool)) {
	t.Run("bolt", func(t *testing.T) {
		dir := t.TempDir()
		fn(t, func(t *testing.T) store.Store {
			t.Helper()
			st, err := boltstore.New(t.Context(), boltstore.Config{Dir: dir, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			s := &onceStore{Store: st}
			t.Cleanup(func() { s.Close() })
			return s
		}, false)
	})
	t.Run("redis", func(t *testing.T) {
		srv := redistest.Start(t)
		prefix := fmt.Sprintf("gw%d", redisPrefix.Add(1))
		fn(t, func(t *testing.T) store.Store {
			t.Helper()
			st, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			s := &onceStore{Store: st}
			t.Cleanup(func() { s.Close() })
			return s
		}, true)
	})
}

// sealedGateway is a gateway over a backend sealed with a key ring, on an
// httptest server (loopback, so /admin/keys answers it).
type sealedGateway struct {
	*server
	root    string // the server's URL, without /fhir
	ts      *httptest.Server
	backend store.Store
}

func startSealedGateway(t *testing.T, ring keys.KeyRing, backend store.Store) *sealedGateway {
	t.Helper()
	m, err := keys.Open(t.Context(), ring, backend, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(gateway.New(gateway.Config{Store: sealed.New(backend, m)}))
	t.Cleanup(ts.Close)
	return &sealedGateway{server: &server{base: ts.URL + "/fhir", hc: ts.Client()}, root: ts.URL, ts: ts, backend: backend}
}

// close stops the gateway and closes its backend.
func (g *sealedGateway) close() {
	g.ts.Close()
	g.backend.Close()
}

// admin calls /admin/keys/{op} and decodes its JSON answer into out.
func (g *sealedGateway) admin(t *testing.T, method, op string, out any) {
	t.Helper()
	r := g.do(t, method, g.root+"/admin/keys/"+op, "").want(t, http.StatusOK)
	if err := json.Unmarshal(r.body, out); err != nil {
		t.Fatalf("/admin/keys/%s: %v: %s", op, err, r.body)
	}
	t.Logf("/admin/keys/%s: %s", op, strings.Join(strings.Fields(string(r.body)), " "))
}

// written records every version the gateways answered a write with.
type written struct {
	mu   sync.Mutex
	refs []string            // Type/id, in order of creation
	vers map[string][][]byte // Type/id -> body of version n at [n-1]
}

func (w *written) add(ref string, version int, body []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.vers == nil {
		w.vers = map[string][][]byte{}
	}
	vs, ok := w.vers[ref]
	if !ok {
		w.refs = append(w.refs, ref)
	}
	for len(vs) < version {
		vs = append(vs, nil)
	}
	if vs[version-1] != nil {
		return fmt.Errorf("%s version %d written twice", ref, version)
	}
	vs[version-1] = body
	w.vers[ref] = vs
	return nil
}

// pick returns a random recorded version.
func (w *written) pick(rng *rand.Rand) (ref string, version int, body []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ref = w.refs[rng.IntN(len(w.refs))]
	vs := w.vers[ref]
	for {
		version = 1 + rng.IntN(len(vs))
		if body = vs[version-1]; body != nil {
			return ref, version, body
		}
	}
}

// ownedRes is a resource one load worker writes (so that updates do not
// race each other into 409s).
type ownedRes struct {
	typ, id string
	version int
	patient string // the Patient id: itself, or an Observation's subject
	family  string // a Patient's family name
}

func (o *ownedRes) ref() string { return o.typ + "/" + o.id }

func patientBody(id, family string, v int) string {
	idField := ""
	if id != "" {
		idField = `"id": "` + id + `", `
	}
	return `{"resourceType": "Patient", ` + idField + `"name": [{"family": "` + family + `", "given": ["v` + strconv.Itoa(v) + `"]}], "gender": "other"}`
}

func observationBody(id, patient string, v int) string {
	idField := ""
	if id != "" {
		idField = `"id": "` + id + `", `
	}
	return `{"resourceType": "Observation", ` + idField + `"status": "final", "code": {"text": "pulse"}, "subject": {"reference": "Patient/` + patient + `"}, "valueQuantity": {"value": ` + strconv.Itoa(60+v) + `, "unit": "/min"}}`
}

// loadClient sends requests from a load goroutine: it reports failures
// instead of stopping the test.
type loadClient struct {
	ctx  context.Context
	gw   *sealedGateway
	rec  *written
	fail func(format string, args ...any)
}

func (c *loadClient) call(method, path, body string) (int, http.Header, []byte) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(c.ctx, method, c.gw.base+path, rd)
	if err != nil {
		c.fail("%s %s: %v", method, path, err)
		return 0, nil, nil
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	res, err := c.gw.hc.Do(req)
	if err != nil {
		c.fail("%s %s: %v", method, path, err)
		return 0, nil, nil
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		c.fail("%s %s: %v", method, path, err)
		return 0, nil, nil
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		c.fail("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	return res.StatusCode, res.Header, b
}

// write creates (POST, o.id empty) or updates o and records the version.
func (c *loadClient) write(o *ownedRes, body string) bool {
	method, path := http.MethodPut, "/"+o.ref()
	if o.id == "" {
		method, path = http.MethodPost, "/"+o.typ
	}
	status, hdr, b := c.call(method, path, body)
	if status < 200 || status > 299 {
		return false
	}
	var meta struct {
		ID   string
		Meta struct{ VersionID string }
	}
	if err := json.Unmarshal(b, &meta); err != nil || meta.ID == "" {
		c.fail("%s %s answered no resource: %s", method, path, b)
		return false
	}
	v, err := strconv.Atoi(meta.Meta.VersionID)
	if err != nil || hdr.Get("ETag") != `W/"`+meta.Meta.VersionID+`"` {
		c.fail("%s %s: version %q, ETag %q", method, path, meta.Meta.VersionID, hdr.Get("ETag"))
		return false
	}
	if o.id != "" && v != o.version+1 {
		c.fail("%s %s: version %d, want %d", method, path, v, o.version+1)
	}
	o.id, o.version = meta.ID, v
	if o.typ == "Patient" {
		o.patient = o.id
	}
	if err := c.rec.add(o.ref(), v, b); err != nil {
		c.fail("%v", err)
	}
	return true
}

// TestRotateUnderLoad: a KEK rotation through /admin/keys while reads and
// writes run concurrently (none may fail), then pruning of the old KEK;
// afterwards everything opens with the new KEK alone and nothing with the
// old one.
func TestRotateUnderLoad(t *testing.T) {
	eachBackend(t, func(t *testing.T, open func(t *testing.T) store.Store, shared bool) {
		ctx := t.Context()
		path := filepath.Join(t.TempDir(), "kek.keys")
		if err := keys.CreateFile(path); err != nil {
			t.Fatal(err)
		}
		oldKEKs := kekLines(t, path)
		if len(oldKEKs) != 1 {
			t.Fatalf("new KEK file holds %d keys", len(oldKEKs))
		}
		ring, err := keys.OpenFileRing(path)
		if err != nil {
			t.Fatal(err)
		}
		oldID := ring.IDs()[0]

		gws := []*sealedGateway{startSealedGateway(t, ring, open(t))}
		if shared {
			// A second gateway process: its own client and its own view
			// of the KEK file.
			ring2, err := keys.OpenFileRing(path)
			if err != nil {
				t.Fatal(err)
			}
			gws = append(gws, startSealedGateway(t, ring2, open(t)))
		}
		admin := gws[0]

		var (
			rec      written
			failures atomic.Int64
			ops      atomic.Int64
			stop     atomic.Bool
			failMu   sync.Mutex
			failMsgs []string
		)
		fail := func(format string, args ...any) {
			failures.Add(1)
			failMu.Lock()
			if len(failMsgs) < 20 {
				failMsgs = append(failMsgs, fmt.Sprintf(format, args...))
			}
			failMu.Unlock()
		}

		// Seed 50 Patients with an Observation each, shared out between
		// the workers that will update them.
		const workers = 8
		owned := make([][]*ownedRes, workers)
		seeder := &loadClient{ctx: ctx, rec: &rec, fail: fail}
		for i := range 50 {
			seeder.gw = gws[i%len(gws)]
			p := &ownedRes{typ: "Patient", family: fmt.Sprintf("Seed%02d", i)}
			if !seeder.write(p, patientBody("", p.family, 1)) {
				t.Fatalf("seeding: %v", failMsgs)
			}
			o := &ownedRes{typ: "Observation", patient: p.id}
			if !seeder.write(o, observationBody("", p.id, 1)) {
				t.Fatalf("seeding: %v", failMsgs)
			}
			owned[i%workers] = append(owned[i%workers], p, o)
		}

		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &loadClient{ctx: ctx, gw: gws[w%len(gws)], rec: &rec, fail: fail}
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				mine := owned[w]
				patients := func() []*ownedRes {
					var ps []*ownedRes
					for _, o := range mine {
						if o.typ == "Patient" {
							ps = append(ps, o)
						}
					}
					return ps
				}
				for n := 0; !stop.Load(); n++ {
					ops.Add(1)
					switch op := rng.IntN(100); {
					case op < 10: // create a Patient
						p := &ownedRes{typ: "Patient", family: fmt.Sprintf("Load%d-%d", w, n)}
						if c.write(p, patientBody("", p.family, 1)) {
							mine = append(mine, p)
						}
					case op < 22: // create an Observation
						ps := patients()
						p := ps[rng.IntN(len(ps))]
						o := &ownedRes{typ: "Observation", patient: p.id}
						if c.write(o, observationBody("", p.id, 1)) {
							mine = append(mine, o)
						}
					case op < 40: // update
						o := mine[rng.IntN(len(mine))]
						if o.typ == "Patient" {
							c.write(o, patientBody(o.id, o.family, o.version+1))
						} else {
							c.write(o, observationBody(o.id, o.patient, o.version+1))
						}
					case op < 62: // read anyone's resource
						ref, _, _ := rec.pick(rng)
						status, _, b := c.call(http.MethodGet, "/"+ref, "")
						if status == http.StatusOK && !strings.Contains(string(b), `"resourceType":`) {
							c.fail("GET %s: %s", ref, b)
						}
					case op < 84: // vread anyone's version
						ref, v, body := rec.pick(rng)
						path := fmt.Sprintf("/%s/_history/%d", ref, v)
						if status, _, b := c.call(http.MethodGet, path, ""); status == http.StatusOK && string(b) != string(body) {
							c.fail("GET %s = %s, want %s", path, b, body)
						}
					default: // search for one of my resources
						o := mine[rng.IntN(len(mine))]
						q := "/Observation?subject=Patient/" + o.patient
						if o.typ == "Patient" {
							q = "/Patient?family=" + o.family
						}
						status, _, b := c.call(http.MethodGet, q, "")
						if status == http.StatusOK && !strings.Contains(string(b), `"id":"`+o.id+`"`) {
							c.fail("GET %s does not find %s: %s", q, o.ref(), b)
						}
					}
				}
			}()
		}
		waitOps := func(n int64) {
			for ops.Load() < n && failures.Load() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}

		waitOps(200)
		var rot keys.RotateResult
		admin.admin(t, http.MethodPost, "rotate", &rot)
		if rot.NewKEK == "" || rot.NewKEK == oldID || rot.Rewrapped == 0 {
			t.Errorf("rotate = %+v; want a new KEK other than %s and keys rewrapped", rot, oldID)
		}
		// Data keys created while the rotation ran are under the new KEK
		// too (rewrapped by the scan, or settled by their creator), in
		// every process.
		waitOps(ops.Load() + 100)
		var st keys.Status
		admin.admin(t, http.MethodGet, "status", &st)
		if st.Primary != rot.NewKEK || len(st.ByKEK) != 1 || st.ByKEK[rot.NewKEK] == 0 {
			t.Errorf("status after rotation = %+v; want every key under %s", st, rot.NewKEK)
		}
		var pr keys.RotateResult
		admin.admin(t, http.MethodPost, "prune", &pr)
		if !slices.Equal(pr.Removed, []string{oldID}) {
			t.Errorf("prune removed %v, want [%s]", pr.Removed, oldID)
		}
		waitOps(ops.Load() + 200)
		stop.Store(true)
		wg.Wait()

		t.Logf("%d requests under load (plus 100 seeding), %d resources, %d failures", ops.Load(), len(rec.refs), failures.Load())
		if n := failures.Load(); n > 0 {
			t.Fatalf("%d requests failed during rotation; first ones:\n%s", n, strings.Join(failMsgs, "\n"))
		}

		// The file holds the new KEK alone.
		after, err := keys.OpenFileRing(path)
		if err != nil {
			t.Fatal(err)
		}
		if ids := after.IDs(); !slices.Equal(ids, []string{rot.NewKEK}) {
			t.Errorf("KEK file holds %v, want [%s]", ids, rot.NewKEK)
		}

		// A fresh process opens everything with it; the old KEK alone
		// opens nothing.
		for _, g := range gws {
			g.close()
		}
		backend := open(t)
		oldRaw, err := keys.ParseKEKs(oldKEKs[0])
		if err != nil {
			t.Fatal(err)
		}
		oldRing, err := keys.NewRing(oldRaw)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := keys.Open(ctx, oldRing, backend, keys.Options{}); !errors.Is(err, keys.ErrUnknownKEK) {
			t.Errorf("keys.Open with the old KEK alone: %v, want ErrUnknownKEK", err)
		}
		fresh := startSealedGateway(t, after, backend)
		for _, ref := range rec.refs {
			vs := rec.vers[ref]
			r := fresh.do(t, http.MethodGet, "/"+ref, "").want(t, http.StatusOK)
			if string(r.body) != string(vs[len(vs)-1]) {
				t.Errorf("GET %s = %s, want %s", ref, r.body, vs[len(vs)-1])
			}
			for i, body := range vs {
				path := fmt.Sprintf("/%s/_history/%d", ref, i+1)
				if r := fresh.do(t, http.MethodGet, path, "").want(t, http.StatusOK); string(r.body) != string(body) {
					t.Errorf("GET %s = %s, want %s", path, r.body, body)
				}
			}
		}
	})
}

// kekLines returns the base64 key lines of a KEK file.
func kekLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}
