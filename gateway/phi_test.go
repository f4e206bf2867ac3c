package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
	"github.com/redis/go-redis/v9"
)

// phiInput is one resource the PHI test stores.
type phiInput struct {
	typ, id string
	body    []byte
}

// phiInputs returns every shared R4 example and every resource of the
// three Synthea bundles, each with an id; the bundles' urn:uuid
// references are rewritten to Type/id so that their resources land in
// their patient's compartment (as a transaction would store them).
func phiInputs(t *testing.T) []phiInput {
	t.Helper()
	var out []phiInput
	files, _ := filepath.Glob("../testdata/conformance/r4-examples/*-*.json") // not manifest.json
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var head struct{ ResourceType, ID string }
		if err := json.Unmarshal(b, &head); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, phiInput{head.ResourceType, head.ID, b})
	}
	bundles, _ := filepath.Glob("../testdata/synthea/*_*.json")
	for _, f := range bundles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var bundle struct {
			Entry []struct {
				FullURL  string          `json:"fullUrl"`
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(b, &bundle); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var pairs []string
		var entries []phiInput
		for _, e := range bundle.Entry {
			var head struct{ ResourceType string }
			json.Unmarshal(e.Resource, &head)
			id := strings.TrimPrefix(e.FullURL, "urn:uuid:")
			pairs = append(pairs, `"`+e.FullURL+`"`, `"`+head.ResourceType+"/"+id+`"`)
			entries = append(entries, phiInput{head.ResourceType, id, e.Resource})
		}
		rw := strings.NewReplacer(pairs...)
		for _, e := range entries {
			e.body = []byte(rw.Replace(string(e.body)))
			out = append(out, e)
		}
	}
	if len(out) < 77+300 {
		t.Fatalf("only %d inputs", len(out))
	}
	return out
}

// phiStrings collects the identifying strings of the inputs: names,
// identifiers, telecom values, address parts and birth dates, as given
// and as normalised for search. Strings shorter than 6 bytes are left
// out: short strings occur by chance in megabytes of ciphertext and
// random tokens. Values equal to a resource id are left out too: ids are
// not encrypted (docs/security.md), and Synthea reuses the patient's id as
// an identifier value.
func phiStrings(inputs []phiInput) []string {
	ids := map[string]bool{}
	for _, in := range inputs {
		ids[in.id] = true
	}
	set := map[string]bool{}
	add := func(v any) {
		s, ok := v.(string)
		if !ok {
			return
		}
		for _, form := range []string{s, fhir.NormalizeString(s)} {
			if len(form) >= 6 && !ids[form] {
				set[form] = true
			}
		}
	}
	addAll := func(v any) {
		if l, ok := v.([]any); ok {
			for _, e := range l {
				add(e)
			}
		} else {
			add(v)
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				switch k {
				case "name":
					if l, ok := e.([]any); ok { // HumanName[]
						for _, n := range l {
							if n, ok := n.(map[string]any); ok {
								add(n["family"])
								addAll(n["given"])
								add(n["text"])
							}
						}
					}
				case "address":
					if l, ok := e.([]any); ok {
						for _, a := range l {
							if a, ok := a.(map[string]any); ok {
								addAll(a["line"])
								add(a["city"])
								add(a["postalCode"])
								add(a["text"])
							}
						}
					}
				case "telecom", "identifier":
					if l, ok := e.([]any); ok {
						for _, x := range l {
							if x, ok := x.(map[string]any); ok {
								add(x["value"])
							}
						}
					}
				case "birthDate":
					add(e)
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	for _, in := range inputs {
		var doc any
		json.Unmarshal(in.body, &doc)
		walk(doc)
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// phiScanner looks for PHI strings in named blobs.
type phiScanner struct {
	phi    [][]byte
	hits   []string
	blobs  int
	nbytes int
}

func (s *phiScanner) scan(where string, b []byte) {
	s.blobs++
	s.nbytes += len(b)
	for _, p := range s.phi {
		for off := 0; ; {
			i := bytes.Index(b[off:], p)
			if i < 0 {
				break
			}
			i += off
			if !inDigest(b, i, len(p)) {
				s.hits = append(s.hits, fmt.Sprintf("%q in %s", p, where))
				break
			}
			off = i + 1
		}
	}
}

// inDigest reports whether b[i:i+n] lies in a run of at least 64 lowercase
// hex digits: a SHA-256 in hex, such as a log leaf's salted digest, where
// a short numeric PHI string (a 6-digit MRN, say) turns up by chance about
// once in 280,000 digests.
func inDigest(b []byte, i, n int) bool {
	isHex := func(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }
	lo, hi := i, i+n
	for lo > 0 && isHex(b[lo-1]) {
		lo--
	}
	for hi < len(b) && isHex(b[hi]) {
		hi++
	}
	for j := i; j < i+n; j++ {
		if !isHex(b[j]) {
			return false
		}
	}
	return hi-lo >= 64
}

func (s *phiScanner) report(t *testing.T) {
	t.Helper()
	t.Logf("scanned %d blobs, %d bytes, for %d PHI strings", s.blobs, s.nbytes, len(s.phi))
	if len(s.hits) > 0 {
		if len(s.hits) > 30 {
			s.hits = append(s.hits[:30], "...")
		}
		t.Errorf("%d PHI hits at rest:\n%s", len(s.hits), strings.Join(s.hits, "\n"))
	}
}

// loadPHI stores every input through the REST API and checks one reads
// back in clear.
func loadPHI(t *testing.T, st store.Store, log *slog.Logger, inputs []phiInput) {
	t.Helper()
	srv := newServer(t, gateway.Config{Store: st, Logger: log})
	for _, in := range inputs {
		r := srv.do(t, "PUT", "/"+in.typ+"/"+in.id, string(in.body))
		if r.status != 200 && r.status != 201 {
			t.Fatalf("PUT %s/%s: %s", in.typ, in.id, r)
		}
		// A search by name and a read, so that queries reach the logs too.
		if in.typ == "Patient" {
			if r := srv.do(t, "GET", "/Patient?name=chalmers&_id="+in.id, ""); r.status != 200 {
				t.Fatalf("search: %s", r)
			}
		}
	}
	if r := srv.do(t, "GET", "/Patient/example", ""); r.status != 200 || !bytes.Contains(r.body, []byte("Chalmers")) {
		t.Fatalf("Patient/example does not read back in clear: %s", r)
	}
	if r := srv.do(t, "GET", "/Patient?family=chalm", ""); r.status != 200 || !bytes.Contains(r.body, []byte(`"id":"example"`)) {
		t.Fatalf("search by family prefix does not find Patient/example: %s", r)
	}
}

// TestNoPHIAtRest stores every shared example and every Synthea resource,
// then scans everything the backends hold — every Redis key, value and
// DUMP, Redis's append-only file and an uncompressed RDB dump; every byte
// of the bbolt file — and the gateway's debug log for PHI strings taken
// from the inputs.
func TestNoPHIAtRest(t *testing.T) {
	inputs := phiInputs(t)
	phi := phiStrings(inputs)
	for _, want := range []string{"Chalmers", "chalmers", "534 Erewhon St", "1974-12-25", "(03) 5555 6473"} {
		if i := sort.SearchStrings(phi, want); i == len(phi) || phi[i] != want {
			t.Fatalf("PHI list lacks %q: the extractor is broken", want)
		}
	}
	newScanner := func() *phiScanner {
		s := &phiScanner{}
		for _, p := range phi {
			s.phi = append(s.phi, []byte(p))
		}
		return s
	}
	// A control: the scanner finds PHI in the inputs themselves.
	control := newScanner()
	control.scan("input", inputs[0].body)
	for _, in := range inputs {
		if in.typ == "Patient" && in.id == "example" {
			control.scan("Patient/example", in.body)
		}
	}
	if len(control.hits) == 0 {
		t.Fatal("the scanner finds no PHI in the inputs")
	}

	t.Run("redis", func(t *testing.T) {
		rs := redistest.Start(t)
		backend, err := redisstore.New(t.Context(), redisstore.Config{URL: rs.URL()})
		if err != nil {
			t.Fatal(err)
		}
		defer backend.Close()
		var logs syncBuffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		loadPHI(t, sealedtest.Wrap(t, backend), log, inputs)

		ctx := t.Context()
		rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
		defer rdb.Close()
		// Uncompressed DUMPs and snapshots: compression would hide PHI
		// from the scan (and split the digests it skips).
		if err := rdb.ConfigSet(ctx, "rdbcompression", "no").Err(); err != nil {
			t.Fatal(err)
		}
		s := newScanner()
		keys := 0
		iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
			k := iter.Val()
			keys++
			s.scan("key name "+k, []byte(k))
			var vals []string
			switch typ := rdb.Type(ctx, k).Val(); typ {
			case "string":
				vals = []string{rdb.Get(ctx, k).Val()}
			case "hash":
				for f, v := range rdb.HGetAll(ctx, k).Val() {
					vals = append(vals, f, v)
				}
			case "set":
				vals = rdb.SMembers(ctx, k).Val()
			case "zset":
				vals = rdb.ZRange(ctx, k, 0, -1).Val()
			case "list":
				vals = rdb.LRange(ctx, k, 0, -1).Val()
			default:
				t.Fatalf("key %s: unexpected type %s", k, typ)
			}
			for _, v := range vals {
				s.scan("value of "+k, []byte(v))
			}
			s.scan("DUMP of "+k, []byte(rdb.Dump(ctx, k).Val()))
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
		if keys < len(inputs) {
			t.Fatalf("only %d Redis keys for %d resources", keys, len(inputs))
		}
		// Backups: the append-only file, and an uncompressed RDB snapshot.
		if err := rdb.Save(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		files := 0
		filepath.WalkDir(rs.Dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.HasSuffix(path, ".log") {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			s.scan("file "+filepath.Base(path), b)
			return nil
		})
		if files < 2 {
			t.Fatalf("found %d Redis data files (want the AOF and dump.rdb)", files)
		}
		s.scan("gateway log", logs.Bytes())
		s.report(t)
	})

	t.Run("bolt", func(t *testing.T) {
		dir := t.TempDir()
		backend, err := boltstore.New(t.Context(), boltstore.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		loadPHI(t, sealedtest.Wrap(t, backend), log, inputs)
		if err := backend.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "fhirgate.db"))
		if err != nil {
			t.Fatal(err)
		}
		s := newScanner()
		s.scan("fhirgate.db", b)
		s.scan("gateway log", logs.Bytes())
		s.report(t)
	})
}
