// Package storetest is the contract suite every store.Store backend runs.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/google/go-cmp/cmp"
)

// Opener returns a fresh, empty store for one test.
type Opener func(t *testing.T) store.Store

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func rec(typ, id string, v int64, at time.Time, body string, terms ...store.Term) store.Record {
	return store.Record{Type: typ, ID: id, Version: v, Updated: at, Body: []byte(body), Terms: terms}
}

func term(p, v string) store.Term { return store.Term{Param: p, Value: v} }

func match(p, v string) store.Match { return store.Match{Param: p, Value: v} }

func mustPut(t *testing.T, s store.Store, r store.Record) {
	t.Helper()
	if err := s.Put(t.Context(), r, store.PutOptions{}); err != nil {
		t.Fatalf("Put(%s v%d): %v", r.Key(), r.Version, err)
	}
}

// Run runs the contract suite.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateReadVersions", testCreateRead},
		{"VersionConflict", testConflict},
		{"DeleteTombstone", testDelete},
		{"History", testHistory},
		{"SearchTerms", testSearch},
		{"IfNoneMatchRace", testIfNoneMatchRace},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"TypesIsolated", testTypesIsolated},
		{"Erase", testErase},
		{"EraseAbsent", testEraseAbsent},
		{"EraseRace", testEraseRace},
		{"KeyCompareAndSet", testKeyCAS},
		{"ScanKeys", testScanKeys},
		{"ConcurrentKeyCAS", testConcurrentKeyCAS},
		{"Log", testLog},
	}
	for _, test := range append(tests, commitTests...) {
		t.Run(test.name, func(t *testing.T) { test.fn(t, open(t)) })
	}
}

func testCreateRead(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.Get(ctx, store.Key{Type: "Patient", ID: "p1"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	mustPut(t, s, rec("Patient", "p1", 1, t0, `{"v":1}`, term("gender", "c:female")))
	mustPut(t, s, rec("Patient", "p1", 2, t0.Add(time.Second), `{"v":2}`, term("gender", "c:male")))
	got, err := s.Get(ctx, store.Key{Type: "Patient", ID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || string(got.Body) != `{"v":2}` || !got.Updated.Equal(t0.Add(time.Second)) || got.Deleted {
		t.Errorf("Get = %+v, want version 2", got)
	}
	if diff := cmp.Diff([]store.Term{term("gender", "c:male")}, got.Terms); diff != "" {
		t.Errorf("terms (-want +got):\n%s", diff)
	}
	v1, err := s.GetVersion(ctx, store.Key{Type: "Patient", ID: "p1"}, 1)
	if err != nil || string(v1.Body) != `{"v":1}` {
		t.Errorf("GetVersion(1) = %q, %v", v1.Body, err)
	}
	if _, err := s.GetVersion(ctx, store.Key{Type: "Patient", ID: "p1"}, 3); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetVersion(3) = %v, want ErrNotFound", err)
	}
}

func testConflict(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, rec("Patient", "c", 1, t0, `{}`))
	for _, v := range []int64{1, 3, 0} {
		if err := s.Put(ctx, rec("Patient", "c", v, t0, `{"bad":true}`), store.PutOptions{}); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Put(version %d over 1) = %v, want ErrConflict", v, err)
		}
	}
	got, _ := s.Get(ctx, store.Key{Type: "Patient", ID: "c"})
	if string(got.Body) != `{}` {
		t.Errorf("a rejected Put changed the resource: %q", got.Body)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, rec("Patient", "d", 1, t0, `{}`, term("name", "x")))
	mustPut(t, s, store.Record{Type: "Patient", ID: "d", Version: 2, Updated: t0.Add(time.Second), Deleted: true})
	got, err := s.Get(ctx, store.Key{Type: "Patient", ID: "d"})
	if err != nil || !got.Deleted || got.Version != 2 {
		t.Fatalf("Get after delete = %+v, %v; want tombstone v2", got, err)
	}
	ids, _ := s.Search(ctx, store.Query{Type: "Patient", All: [][]store.Match{{{Param: "name", Value: "x"}}}})
	if len(ids) != 0 {
		t.Errorf("deleted resource still indexed: %v", ids)
	}
	ids, _ = s.Search(ctx, store.Query{Type: "Patient"})
	if slices.Contains(ids, "d") {
		t.Errorf("deleted resource still live: %v", ids)
	}
	h, total, err := s.History(ctx, store.HistoryQuery{Type: "Patient", ID: "d"})
	if err != nil || total != 2 || !h[0].Deleted || h[1].Deleted {
		t.Errorf("History after delete = %+v (total %d), %v", h, total, err)
	}
	// Re-create after delete continues the version sequence.
	mustPut(t, s, rec("Patient", "d", 3, t0.Add(2*time.Second), `{"back":1}`, term("name", "x")))
	ids, _ = s.Search(ctx, store.Query{Type: "Patient", All: [][]store.Match{{{Param: "name", Value: "x"}}}})
	if diff := cmp.Diff([]string{"d"}, ids); diff != "" {
		t.Errorf("after re-create (-want +got):\n%s", diff)
	}
}

func testHistory(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("h%d", i)
		mustPut(t, s, rec("Observation", id, 1, t0.Add(time.Duration(i)*time.Minute), `{}`))
	}
	mustPut(t, s, rec("Observation", "h0", 2, t0.Add(10*time.Minute), `{}`))
	h, total, err := s.History(ctx, store.HistoryQuery{Type: "Observation"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range h {
		got = append(got, fmt.Sprintf("%s/%d", r.ID, r.Version))
	}
	want := []string{"h0/2", "h4/1", "h3/1", "h2/1", "h1/1", "h0/1"}
	if diff := cmp.Diff(want, got); diff != "" || total != 6 {
		t.Errorf("type history total %d (-want +got):\n%s", total, diff)
	}
	h, total, _ = s.History(ctx, store.HistoryQuery{Type: "Observation", Since: t0.Add(3 * time.Minute), Offset: 1, Count: 1})
	if total != 3 || len(h) != 1 || h[0].ID != "h4" {
		t.Errorf("since/offset/count: total %d, got %+v", total, h)
	}
	h, total, _ = s.History(ctx, store.HistoryQuery{Type: "Observation", ID: "h0", Count: 1})
	if total != 2 || len(h) != 1 || h[0].Version != 2 {
		t.Errorf("instance history: total %d, got %+v", total, h)
	}
	if _, _, err := s.History(ctx, store.HistoryQuery{Type: "Observation", ID: "nope"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("history of missing resource = %v, want ErrNotFound", err)
	}
}

func testSearch(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, rec("Patient", "a", 1, t0, `{}`, term("family", "smith"), term("gender", "c:female")))
	mustPut(t, s, rec("Patient", "b", 1, t0, `{}`, term("family", "smithers"), term("gender", "c:male")))
	mustPut(t, s, rec("Patient", "c", 1, t0, `{}`, term("family", "jones"), term("gender", "c:female")))
	q := func(all ...[]store.Match) []string {
		ids, err := s.Search(ctx, store.Query{Type: "Patient", All: all})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{"exact", q([]store.Match{match("gender", "c:female")}), []string{"a", "c"}},
		{"exact is not prefix", q([]store.Match{match("family", "smith")}), []string{"a"}},
		{"exact needs whole value", q([]store.Match{match("gender", "c:fem")}), nil},
		{"and", q([]store.Match{match("family", "smith"), match("family", "smithers")}, []store.Match{match("gender", "c:female")}), []string{"a"}},
		{"or", q([]store.Match{match("family", "jones"), match("gender", "c:male")}), []string{"b", "c"}},
		{"all", q(), []string{"a", "b", "c"}},
		{"other param", q([]store.Match{match("given", "smith")}), nil},
	}
	for _, test := range tests {
		if diff := cmp.Diff(test.want, test.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", test.name, diff)
		}
	}
	// An update replaces the index entries of the old version.
	mustPut(t, s, rec("Patient", "a", 2, t0, `{}`, term("family", "brown"), term("gender", "c:female")))
	if got := q([]store.Match{match("family", "smith"), match("family", "smithers")}); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after update, smith or smithers = %v, want [b]", got)
	}
	if got := q([]store.Match{match("family", "brown")}); !slices.Equal(got, []string{"a"}) {
		t.Errorf("after update, brown = %v, want [a]", got)
	}
}

func testIfNoneMatchRace(t *testing.T, s store.Store) {
	ctx := t.Context()
	guard := &store.Query{Type: "Patient", All: [][]store.Match{{{Param: "identifier", Value: "sc:urn:x|42"}}}}
	var ok, exists atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rec("Patient", fmt.Sprintf("race-%d", i), 1, t0, `{}`, term("identifier", "sc:urn:x|42"))
			err := s.Put(ctx, r, store.PutOptions{IfNoneMatch: guard})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrExists):
				exists.Add(1)
			default:
				t.Errorf("Put: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || exists.Load() != 63 {
		t.Errorf("64 guarded creates: %d created, %d saw a match; want 1 and 63", ok.Load(), exists.Load())
	}
	ids, _ := s.Search(ctx, *guard)
	if len(ids) != 1 {
		t.Errorf("resources with the identifier: %v, want exactly one", ids)
	}
}

func testConcurrentUpdates(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, rec("Patient", "cu", 1, t0, `{}`))
	var wins atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				for {
					cur, err := s.Get(ctx, store.Key{Type: "Patient", ID: "cu"})
					if err != nil {
						t.Error(err)
						return
					}
					err = s.Put(ctx, rec("Patient", "cu", cur.Version+1, t0, `{}`), store.PutOptions{})
					if err == nil {
						wins.Add(1)
						break
					}
					if !errors.Is(err, store.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	got, _ := s.Get(ctx, store.Key{Type: "Patient", ID: "cu"})
	if got.Version != 81 || wins.Load() != 80 {
		t.Errorf("after 80 compare-and-set updates: version %d, wins %d; want 81, 80", got.Version, wins.Load())
	}
}

func testTypesIsolated(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustPut(t, s, rec("Patient", "same", 1, t0, `{"p":1}`, term("code", "c:x")))
	mustPut(t, s, rec("Observation", "same", 1, t0, `{"o":1}`, term("code", "c:x")))
	p, _ := s.Get(ctx, store.Key{Type: "Patient", ID: "same"})
	o, _ := s.Get(ctx, store.Key{Type: "Observation", ID: "same"})
	if string(p.Body) != `{"p":1}` || string(o.Body) != `{"o":1}` {
		t.Errorf("types share storage: %q %q", p.Body, o.Body)
	}
	ids, _ := s.Search(ctx, store.Query{Type: "Patient", All: [][]store.Match{{{Param: "code", Value: "c:x"}}}})
	if !slices.Equal(ids, []string{"same"}) {
		t.Errorf("search crossed types: %v", ids)
	}
}

// checkErased checks that reads and writes of k fail with ErrErased.
func checkErased(t *testing.T, s store.Store, k store.Key) {
	t.Helper()
	ctx := t.Context()
	if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrErased) {
		t.Errorf("Get(%s) = %v, want ErrErased", k, err)
	}
	for _, v := range []int64{1, 2, 3} {
		if _, err := s.GetVersion(ctx, k, v); !errors.Is(err, store.ErrErased) {
			t.Errorf("GetVersion(%s, %d) = %v, want ErrErased", k, v, err)
		}
	}
	if _, _, err := s.History(ctx, store.HistoryQuery{Type: k.Type, ID: k.ID}); !errors.Is(err, store.ErrErased) {
		t.Errorf("History(%s) = %v, want ErrErased", k, err)
	}
	for _, v := range []int64{1, 2, 3} {
		if err := s.Put(ctx, rec(k.Type, k.ID, v, t0, `{"again":1}`, term("name", "x")), store.PutOptions{}); !errors.Is(err, store.ErrErased) {
			t.Errorf("Put(%s v%d) = %v, want ErrErased", k, v, err)
		}
	}
}

// historyOf lists a type's history as id/version, and its total.
func historyOf(t *testing.T, s store.Store, typ string) ([]string, int) {
	t.Helper()
	h, total, err := s.History(t.Context(), store.HistoryQuery{Type: typ})
	if err != nil {
		t.Fatalf("History(%s): %v", typ, err)
	}
	var out []string
	for _, r := range h {
		out = append(out, fmt.Sprintf("%s/%d", r.ID, r.Version))
	}
	return out, total
}

func testErase(t *testing.T, s store.Store) {
	ctx := t.Context()
	// e is live with two versions, d is deleted; keep and Observation/e
	// (same id, other type) must survive.
	mustPut(t, s, rec("Patient", "e", 1, t0, `{"e":1}`, term("name", "x")))
	mustPut(t, s, rec("Patient", "e", 2, t0.Add(time.Minute), `{"e":2}`, term("name", "y")))
	mustPut(t, s, rec("Patient", "d", 1, t0.Add(2*time.Minute), `{"d":1}`, term("name", "y")))
	mustPut(t, s, store.Record{Type: "Patient", ID: "d", Version: 2, Updated: t0.Add(3 * time.Minute), Deleted: true})
	mustPut(t, s, rec("Patient", "keep", 1, t0.Add(4*time.Minute), `{"k":1}`, term("name", "y")))
	mustPut(t, s, rec("Patient", "keep", 2, t0.Add(5*time.Minute), `{"k":2}`, term("name", "x")))
	mustPut(t, s, rec("Observation", "e", 1, t0, `{"o":1}`, term("name", "x")))
	search := func(typ string, all ...[]store.Match) []string {
		ids, err := s.Search(ctx, store.Query{Type: typ, All: all})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	// The second round erases again: a no-op.
	for round := 0; round < 2; round++ {
		for _, id := range []string{"e", "d"} {
			if err := s.Erase(ctx, store.Key{Type: "Patient", ID: id}); err != nil {
				t.Fatalf("round %d: Erase(%s): %v", round, id, err)
			}
		}
		checkErased(t, s, store.Key{Type: "Patient", ID: "e"})
		checkErased(t, s, store.Key{Type: "Patient", ID: "d"})
		h, total := historyOf(t, s, "Patient")
		if diff := cmp.Diff([]string{"keep/2", "keep/1"}, h); diff != "" || total != 2 {
			t.Errorf("round %d: type history total %d (-want +got):\n%s", round, total, diff)
		}
		if got := search("Patient"); !slices.Equal(got, []string{"keep"}) {
			t.Errorf("round %d: live = %v, want [keep]", round, got)
		}
		if got := search("Patient", []store.Match{match("name", "x")}); !slices.Equal(got, []string{"keep"}) {
			t.Errorf("round %d: name=x finds %v, want [keep]", round, got)
		}
		if got := search("Patient", []store.Match{match("name", "y")}); len(got) != 0 {
			t.Errorf("round %d: name=y finds %v, want none", round, got)
		}
		k, err := s.Get(ctx, store.Key{Type: "Patient", ID: "keep"})
		if err != nil || k.Version != 2 || string(k.Body) != `{"k":2}` {
			t.Errorf("round %d: keep = %+v, %v", round, k, err)
		}
		if k1, err := s.GetVersion(ctx, store.Key{Type: "Patient", ID: "keep"}, 1); err != nil || string(k1.Body) != `{"k":1}` {
			t.Errorf("round %d: keep v1 = %q, %v", round, k1.Body, err)
		}
		if o, err := s.Get(ctx, store.Key{Type: "Observation", ID: "e"}); err != nil || string(o.Body) != `{"o":1}` {
			t.Errorf("round %d: Observation/e = %q, %v", round, o.Body, err)
		}
		if got := search("Observation", []store.Match{match("name", "x")}); !slices.Equal(got, []string{"e"}) {
			t.Errorf("round %d: Observation name=x finds %v, want [e]", round, got)
		}
	}
	// A guard no longer matches the erased resource's terms.
	guard := &store.Query{Type: "Patient", All: [][]store.Match{{match("name", "y")}}}
	if err := s.Put(ctx, rec("Patient", "new", 1, t0, `{}`, term("name", "y")), store.PutOptions{IfNoneMatch: guard}); err != nil {
		t.Errorf("guarded create after erase: %v", err)
	}
}

func testEraseAbsent(t *testing.T, s store.Store) {
	k := store.Key{Type: "Patient", ID: "never"}
	for i := 0; i < 2; i++ {
		if err := s.Erase(t.Context(), k); err != nil {
			t.Fatalf("Erase(absent) #%d: %v", i+1, err)
		}
	}
	checkErased(t, s, k)
	if h, total := historyOf(t, s, "Patient"); len(h) != 0 || total != 0 {
		t.Errorf("type history after erasing an absent resource: %v (total %d)", h, total)
	}
	if ids, err := s.Search(t.Context(), store.Query{Type: "Patient"}); err != nil || len(ids) != 0 {
		t.Errorf("live after erasing an absent resource: %v, %v", ids, err)
	}
}

// testEraseRace erases a resource while writers update it (and its terms).
func testEraseRace(t *testing.T, s store.Store) {
	ctx := t.Context()
	k := store.Key{Type: "Patient", ID: "er"}
	mustPut(t, s, rec("Patient", "er", 1, t0, `{}`, term("n", "v1")))
	var writes atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				cur, err := s.Get(ctx, k)
				if errors.Is(err, store.ErrErased) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				v := cur.Version + 1
				err = s.Put(ctx, rec("Patient", "er", v, t0, `{}`, term("n", fmt.Sprintf("v%d", v%crashValues))), store.PutOptions{})
				switch {
				case err == nil:
					writes.Add(1)
				case errors.Is(err, store.ErrErased):
					return
				case !errors.Is(err, store.ErrConflict):
					t.Error(err)
					return
				}
			}
		}()
	}
	for writes.Load() < 20 && !t.Failed() {
		time.Sleep(time.Millisecond)
	}
	if err := s.Erase(ctx, k); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	checkErased(t, s, k)
	if h, total := historyOf(t, s, "Patient"); len(h) != 0 || total != 0 {
		t.Errorf("type history after erase: %v (total %d)", h, total)
	}
	if err := CheckConsistent(ctx, s, "Patient", []string{"n"}); err != nil {
		t.Error(err)
	}
}

func testKeyCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
	v1, v2 := []byte{0, 1, 0xff, 'a'}, []byte("second\x00value")
	get := func(id string) []byte {
		t.Helper()
		b, err := s.GetKey(ctx, id)
		if err != nil {
			t.Fatalf("GetKey(%s): %v", id, err)
		}
		return b
	}
	if _, err := s.GetKey(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetKey(missing) = %v, want ErrNotFound", err)
	}
	if err := s.PutKey(ctx, "k", nil, v1); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := get("k"); !bytes.Equal(got, v1) {
		t.Errorf("after create = %q, want %q", got, v1)
	}
	// Creating an id that sorts before, or after, an existing one.
	for _, id := range []string{"a", "j", "l", "z"} {
		if err := s.PutKey(ctx, id, nil, v2); err != nil {
			t.Errorf("create %s next to an existing key: %v", id, err)
		}
	}
	// Create again, and compare-and-set with anything but the exact value.
	for _, old := range [][]byte{nil, {}, v1[:3], append(bytes.Clone(v1), 0), v2} {
		if err := s.PutKey(ctx, "k", old, v2); !errors.Is(err, store.ErrConflict) {
			t.Errorf("PutKey(old %q) = %v, want ErrConflict", old, err)
		}
	}
	if got := get("k"); !bytes.Equal(got, v1) {
		t.Errorf("a rejected PutKey changed the value: %q", got)
	}
	if err := s.PutKey(ctx, "k", v1, v2); err != nil {
		t.Fatalf("compare-and-set: %v", err)
	}
	if got := get("k"); !bytes.Equal(got, v2) {
		t.Errorf("after compare-and-set = %q, want %q", got, v2)
	}
	// An expected value needs the id to exist.
	if err := s.PutKey(ctx, "absent", v1, v2); !errors.Is(err, store.ErrConflict) {
		t.Errorf("PutKey(absent, old) = %v, want ErrConflict", err)
	}
	if _, err := s.GetKey(ctx, "absent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetKey(absent) = %v, want ErrNotFound", err)
	}
}

func testScanKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	want := map[string]string{}
	for i := 0; i < 300; i++ {
		id, val := fmt.Sprintf("key-%03d", i), fmt.Sprintf("val\x00%d", i)
		if err := s.PutKey(ctx, id, nil, []byte(val)); err != nil {
			t.Fatal(err)
		}
		want[id] = val
	}
	scan := func(fn func(id string, val []byte) error) map[string]string {
		t.Helper()
		got := map[string]string{}
		err := s.ScanKeys(ctx, func(id string, val []byte) error {
			got[id] = string(val)
			return fn(id, val)
		})
		if err != nil {
			t.Fatalf("ScanKeys: %v", err)
		}
		return got
	}
	if diff := cmp.Diff(want, scan(func(string, []byte) error { return nil })); diff != "" {
		t.Errorf("scan (-want +got):\n%s", diff)
	}
	// fn may rewrite the entry it is given (as a key rotation does); an
	// entry may be seen again after the rewrite.
	scan(func(id string, val []byte) error {
		if bytes.HasPrefix(val, []byte("re:")) {
			return nil
		}
		return s.PutKey(ctx, id, val, append([]byte("re:"), val...))
	})
	for id, val := range want {
		want[id] = "re:" + val
	}
	if diff := cmp.Diff(want, scan(func(string, []byte) error { return nil })); diff != "" {
		t.Errorf("after rewrite (-want +got):\n%s", diff)
	}
	// An error from fn ends the scan.
	stop, calls := errors.New("stop"), 0
	if err := s.ScanKeys(ctx, func(string, []byte) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ScanKeys with failing fn = %v after %d calls, want stop after 1", err, calls)
	}
}

// testConcurrentKeyCAS races 16 writers per round on one id: the first
// round creates it, later ones compare-and-set the value read after the
// previous round; exactly one writer must win each round.
func testConcurrentKeyCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
	var old []byte
	for round := 0; round < 20; round++ {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch err := s.PutKey(ctx, "ctr", old, fmt.Appendf(nil, "r%d-w%d", round, w)); {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, store.ErrConflict):
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d writers won, want 1", round, wins.Load())
		}
		var err error
		if old, err = s.GetKey(ctx, "ctr"); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(old, fmt.Appendf(nil, "r%d-", round)) {
			t.Fatalf("round %d: value %q is not this round's", round, old)
		}
	}
}

// CheckConsistent verifies, through the Store interface only, that every
// live resource's current terms find it, every index hit is a live
// resource whose current version has that term, and every type-history
// entry is a version of a resource that exists (so none is left of an
// erased one).
func CheckConsistent(ctx context.Context, s store.Store, typ string, params []string) error {
	h, _, err := s.History(ctx, store.HistoryQuery{Type: typ})
	if err != nil {
		return err
	}
	for _, r := range h {
		cur, err := s.Get(ctx, r.Key())
		if err != nil {
			return fmt.Errorf("history lists %s/%s version %d: %w", typ, r.ID, r.Version, err)
		}
		if cur.Version < r.Version {
			return fmt.Errorf("history lists %s/%s version %d, past current %d", typ, r.ID, r.Version, cur.Version)
		}
	}
	ids, err := s.Search(ctx, store.Query{Type: typ})
	if err != nil {
		return err
	}
	live := map[string][]store.Term{}
	for _, id := range ids {
		r, err := s.Get(ctx, store.Key{Type: typ, ID: id})
		if err != nil {
			return fmt.Errorf("live %s/%s: %w", typ, id, err)
		}
		if r.Deleted || r.Body == nil {
			return fmt.Errorf("live %s/%s has no body", typ, id)
		}
		for v := int64(1); v <= r.Version; v++ {
			if _, err := s.GetVersion(ctx, r.Key(), v); err != nil {
				return fmt.Errorf("%s/%s version %d missing: %w", typ, id, v, err)
			}
		}
		live[id] = r.Terms
		for _, tm := range r.Terms {
			hits, err := s.Search(ctx, store.Query{Type: typ, All: [][]store.Match{{{Param: tm.Param, Value: tm.Value}}}})
			if err != nil {
				return err
			}
			if !slices.Contains(hits, id) {
				return fmt.Errorf("%s/%s: term %s=%s does not find it", typ, id, tm.Param, tm.Value)
			}
		}
	}
	for _, p := range params {
		for v := 0; v < crashValues; v++ {
			val := fmt.Sprintf("v%d", v)
			hits, err := s.Search(ctx, store.Query{Type: typ, All: [][]store.Match{{{Param: p, Value: val}}}})
			if err != nil {
				return err
			}
			for _, id := range hits {
				if !slices.Contains(live[id], store.Term{Param: p, Value: val}) {
					return fmt.Errorf("index %s=%s lists %s, whose current version lacks it", p, val, id)
				}
			}
		}
	}
	return nil
}

const (
	crashEnv    = "FHIRGATE_STORETEST_CRASH_CHILD"
	crashValues = 8
)

// CrashChild is called from a backend's TestMain: in the child process
// started by RunCrash it writes versions, and now and then erases a
// resource of its own, until killed; it never returns.
func CrashChild(open func() (store.Store, error)) {
	if os.Getenv(crashEnv) == "" {
		return
	}
	s, err := open()
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(2)
	}
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(uint64(os.Getpid()), 1))
	fmt.Println("ready")
	for i := 0; ; i++ {
		id := fmt.Sprintf("r%d", rnd.IntN(20))
		if rnd.IntN(4) == 0 {
			// Ids of this process only, so erasing leaves the r ids.
			id = fmt.Sprintf("e%d-%d", os.Getpid(), rnd.IntN(4))
			if rnd.IntN(8) == 0 {
				s.Erase(ctx, store.Key{Type: "Observation", ID: id})
				continue
			}
		}
		cur, err := s.Get(ctx, store.Key{Type: "Observation", ID: id})
		var v int64 = 1
		if err == nil {
			v = cur.Version + 1
		}
		r := store.Record{Type: "Observation", ID: id, Version: v, Updated: time.Now(), Body: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Leaf: leafOf("Observation", id, v)}
		if rnd.IntN(5) == 0 && v > 1 {
			r.Deleted, r.Body = true, nil
		} else {
			for _, p := range []string{"code", "status"} {
				r.Terms = append(r.Terms, store.Term{Param: p, Value: fmt.Sprintf("v%d", rnd.IntN(crashValues))})
			}
		}
		s.Put(ctx, r, store.PutOptions{})
	}
}

// RunCrash starts the test binary as a child running CrashChild with the
// given environment, SIGKILLs it mid-write several times, and checks the
// store opened by reopen is consistent after each kill.
func RunCrash(t *testing.T, env []string, reopen func(t *testing.T) store.Store) {
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(append(os.Environ(), crashEnv+"=1"), env...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := out.Read(buf); err != nil {
			t.Fatalf("child did not start: %v", err)
		}
		time.Sleep(time.Duration(150+round*100) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		s := reopen(t)
		if err := CheckConsistent(t.Context(), s, "Observation", []string{"code", "status"}); err != nil {
			t.Fatalf("after kill %d: %v", round, err)
		}
		if err := CheckLog(t.Context(), s, "Observation"); err != nil {
			t.Fatalf("after kill %d: log: %v", round, err)
		}
		h, total, err := s.History(t.Context(), store.HistoryQuery{Type: "Observation"})
		if err != nil || total == 0 || len(h) != total {
			t.Fatalf("after kill %d: history %d/%d, %v", round, len(h), total, err)
		}
		s.Close()
	}
}
