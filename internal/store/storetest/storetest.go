// Package storetest is the contract suite every store.Store backend runs.
package storetest

import (
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

func term(p, v string) store.Term    { return store.Term{Param: p, Value: v} }
func ordered(p, v string) store.Term { return store.Term{Param: p, Value: v, Ordered: true} }

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
	}
	for _, test := range tests {
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
	mustPut(t, s, rec("Patient", "a", 1, t0, `{}`, ordered("family", "smith"), term("gender", "c:female")))
	mustPut(t, s, rec("Patient", "b", 1, t0, `{}`, ordered("family", "smithers"), term("gender", "c:male")))
	mustPut(t, s, rec("Patient", "c", 1, t0, `{}`, ordered("family", "jones"), term("gender", "c:female")))
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
		{"prefix", q([]store.Match{{Param: "family", Value: "smi", Prefix: true}}), []string{"a", "b"}},
		{"prefix is not exact", q([]store.Match{{Param: "family", Value: "smith", Prefix: true}}), []string{"a", "b"}},
		{"exact", q([]store.Match{{Param: "gender", Value: "c:female"}}), []string{"a", "c"}},
		{"exact needs whole value", q([]store.Match{{Param: "gender", Value: "c:fem"}}), nil},
		{"and", q([]store.Match{{Param: "family", Value: "smi", Prefix: true}}, []store.Match{{Param: "gender", Value: "c:female"}}), []string{"a"}},
		{"or", q([]store.Match{{Param: "family", Value: "jon", Prefix: true}, {Param: "gender", Value: "c:male"}}), []string{"b", "c"}},
		{"all", q(), []string{"a", "b", "c"}},
		{"other param", q([]store.Match{{Param: "given", Value: "smi", Prefix: true}}), nil},
	}
	for _, test := range tests {
		if diff := cmp.Diff(test.want, test.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", test.name, diff)
		}
	}
	// An update replaces the index entries of the old version.
	mustPut(t, s, rec("Patient", "a", 2, t0, `{}`, ordered("family", "brown"), term("gender", "c:female")))
	if got := q([]store.Match{{Param: "family", Value: "smi", Prefix: true}}); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after update, smi = %v, want [b]", got)
	}
	if got := q([]store.Match{{Param: "family", Value: "bro", Prefix: true}}); !slices.Equal(got, []string{"a"}) {
		t.Errorf("after update, bro = %v, want [a]", got)
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

// CheckConsistent verifies, through the Store interface only, that every
// live resource's current terms find it and every index hit is a live
// resource whose current version has that term.
func CheckConsistent(ctx context.Context, s store.Store, typ string, params []string) error {
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
// started by RunCrash it writes versions until killed, and never returns.
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
		cur, err := s.Get(ctx, store.Key{Type: "Observation", ID: id})
		var v int64 = 1
		if err == nil {
			v = cur.Version + 1
		}
		r := store.Record{Type: "Observation", ID: id, Version: v, Updated: time.Now(), Body: []byte(fmt.Sprintf(`{"i":%d}`, i))}
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
		h, total, err := s.History(t.Context(), store.HistoryQuery{Type: "Observation"})
		if err != nil || total == 0 || len(h) != total {
			t.Fatalf("after kill %d: history %d/%d, %v", round, len(h), total, err)
		}
		s.Close()
	}
}
