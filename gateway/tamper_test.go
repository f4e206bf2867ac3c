package gateway_test

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/redis/go-redis/v9"
	bolt "go.etcd.io/bbolt"
)

// rawBackend edits a backend's stored version values underneath the
// gateway, as an attacker or a bad disk would.
type rawBackend interface {
	// server returns the gateway (reopened after an edit where the
	// backend needs it) and its log.
	server(t *testing.T) (*server, *syncBuffer)
	// edit replaces the stored values of versions with fn's result.
	edit(t *testing.T, fn func(get func(typ, id string, v int) []byte, set func(typ, id string, v int, b []byte)))
}

type redisRaw struct {
	rs   *redistest.Server
	ring keys.KeyRing
	srv  *server
	logs *syncBuffer
}

func (r *redisRaw) server(t *testing.T) (*server, *syncBuffer) {
	if r.srv == nil {
		backend, err := redisstore.New(t.Context(), redisstore.Config{URL: r.rs.URL(), Prefix: "tp"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { backend.Close() })
		r.logs = &syncBuffer{}
		log := slog.New(slog.NewTextHandler(r.logs, nil))
		r.srv = newServer(t, gateway.Config{Store: sealedtest.WrapRing(t, backend, r.ring), Logger: log})
	}
	return r.srv, r.logs
}

func (r *redisRaw) edit(t *testing.T, fn func(get func(string, string, int) []byte, set func(string, string, int, []byte))) {
	rdb := redis.NewClient(&redis.Options{Addr: r.rs.Addr})
	defer rdb.Close()
	ctx := t.Context()
	hk := func(typ, id string) string { return "tp:{" + typ + "}:r:" + id }
	fn(func(typ, id string, v int) []byte {
		b, err := rdb.HGet(ctx, hk(typ, id), "v:"+strconv.Itoa(v)).Bytes()
		if err != nil {
			t.Fatalf("raw get %s/%s/%d: %v", typ, id, v, err)
		}
		return b
	}, func(typ, id string, v int, b []byte) {
		if err := rdb.HSet(ctx, hk(typ, id), "v:"+strconv.Itoa(v), b).Err(); err != nil {
			t.Fatal(err)
		}
	})
}

type boltRaw struct {
	dir     string
	ring    keys.KeyRing
	backend *boltstore.Store
	srv     *server
	logs    *syncBuffer
}

func (r *boltRaw) server(t *testing.T) (*server, *syncBuffer) {
	if r.srv == nil {
		backend, err := boltstore.New(t.Context(), boltstore.Config{Dir: r.dir})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { backend.Close() })
		r.backend = backend
		r.logs = &syncBuffer{}
		log := slog.New(slog.NewTextHandler(r.logs, nil))
		r.srv = newServer(t, gateway.Config{Store: sealedtest.WrapRing(t, backend, r.ring), Logger: log})
	}
	return r.srv, r.logs
}

func (r *boltRaw) edit(t *testing.T, fn func(get func(string, string, int) []byte, set func(string, string, int, []byte))) {
	// The gateway holds the file locked: close it, edit, and let server
	// reopen it.
	r.backend.Close()
	r.srv = nil
	db, err := bolt.Open(filepath.Join(r.dir, "fhirgate.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	vk := func(typ, id string, v int) []byte {
		k := []byte(typ + "\x00" + id + "\x00")
		return binary.BigEndian.AppendUint64(k, uint64(v))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("version"))
		fn(func(typ, id string, v int) []byte {
			val := b.Get(vk(typ, id, v))
			if val == nil {
				t.Fatalf("raw get %s/%s/%d: missing", typ, id, v)
			}
			return bytes.Clone(val)
		}, func(typ, id string, v int, val []byte) {
			if err := b.Put(vk(typ, id, v), val); err != nil {
				t.Fatal(err)
			}
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTamperAndSwap: a flipped byte in a stored value, or values swapped
// between keys (another resource, another version), is detected on read:
// 500 with an OperationOutcome saying integrity failure (no plaintext, no
// stack), a log event and a metric, and every other resource still works.
func TestTamperAndSwap(t *testing.T) {
	backends := map[string]func(t *testing.T) rawBackend{
		"redis": func(t *testing.T) rawBackend { return &redisRaw{rs: redistest.Start(t), ring: sealedtest.Ring(t)} },
		"bolt":  func(t *testing.T) rawBackend { return &boltRaw{dir: t.TempDir(), ring: sealedtest.Ring(t)} },
	}
	for name, newRaw := range backends {
		t.Run(name, func(t *testing.T) {
			raw := newRaw(t)
			srv, _ := raw.server(t)
			patient := func(id, family string) string {
				return `{"resourceType":"Patient","id":"` + id + `","name":[{"family":"` + family + `"}]}`
			}
			for id, family := range map[string]string{"p1": "Tamperfamily", "p2": "Swapfamilyone", "p3": "Swapfamilytwo", "p4": "Untouched"} {
				if r := srv.do(t, "PUT", "/Patient/"+id, patient(id, family)); r.status != 201 {
					t.Fatal(r)
				}
			}
			for v := 1; v <= 2; v++ {
				obs := `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"v` + strconv.Itoa(v) + `"},"subject":{"reference":"Patient/p4"}}`
				if r := srv.do(t, "PUT", "/Observation/o1", obs); r.status/100 != 2 {
					t.Fatal(r)
				}
			}

			raw.edit(t, func(get func(string, string, int) []byte, set func(string, string, int, []byte)) {
				// Flip one bit of p1's ciphertext.
				b := get("Patient", "p1", 1)
				b[len(b)-20] ^= 0x04
				set("Patient", "p1", 1, b)
				// Swap p2 and p3, and o1's two versions.
				b2, b3 := get("Patient", "p2", 1), get("Patient", "p3", 1)
				set("Patient", "p2", 1, b3)
				set("Patient", "p3", 1, b2)
				v1, v2 := get("Observation", "o1", 1), get("Observation", "o1", 2)
				set("Observation", "o1", 1, v2)
				set("Observation", "o1", 2, v1)
			})
			srv, logs := raw.server(t)

			for _, path := range []string{"/Patient/p1", "/Patient/p2", "/Patient/p3", "/Observation/o1", "/Observation/o1/_history/1", "/Patient/p1/_history/1"} {
				r := srv.do(t, "GET", path, "")
				if r.status != 500 {
					t.Errorf("GET %s = %s, want 500", path, r)
					continue
				}
				oo := r.resource(t)
				text := string(r.body)
				if oo["resourceType"] != "OperationOutcome" || !strings.Contains(text, "integrity failure") {
					t.Errorf("GET %s: body %s, want an OperationOutcome saying integrity failure", path, text)
				}
				for _, leak := range []string{"family", "goroutine", ".go:", "Swapfamily", "Tamperfamily"} {
					if strings.Contains(text, leak) {
						t.Errorf("GET %s: response leaks %q: %s", path, leak, text)
					}
				}
			}
			// The other resources keep working.
			if r := srv.do(t, "GET", "/Patient/p4", ""); r.status != 200 || !strings.Contains(string(r.body), "Untouched") {
				t.Errorf("untouched patient: %s", r)
			}
			if r := srv.do(t, "GET", "/Patient?family=untouched", ""); r.status != 200 || !strings.Contains(string(r.body), `"id":"p4"`) {
				t.Errorf("search for the untouched patient: %s", r)
			}
			if r := srv.do(t, "PUT", "/Patient/p5", patient("p5", "Later")); r.status != 201 {
				t.Errorf("write after tampering: %s", r)
			}
			// The log event names the value, never its content.
			log := string(logs.Bytes())
			if n := strings.Count(log, "integrity failure"); n < 6 {
				t.Errorf("%d integrity-failure log events, want 6:\n%s", n, log)
			}
			if !strings.Contains(log, "value=Patient/p1/_history/1") || strings.Contains(log, "Tamperfamily") || strings.Contains(log, "Swapfamily") {
				t.Errorf("log:\n%s", log)
			}
			m := srv.do(t, "GET", strings.TrimSuffix(srv.base, "/fhir")+"/metrics", "")
			if !strings.Contains(string(m.body), "fhirgate_integrity_failures_total 6") {
				t.Errorf("metrics lack fhirgate_integrity_failures_total 6:\n%s", grepLines(string(m.body), "integrity"))
			}
		})
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
