package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/google/go-cmp/cmp"
)

// The Commit and cell tests. They read bodies back but index terms only
// through Search, and give leaves 32-byte salts, so a sealing wrapper
// passes them too (with anchor.Storage of its backend).
var commitTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"Commit", testCommit},
	{"CommitAllOrNothing", testCommitAllOrNothing},
	{"CommitDuplicates", testCommitDuplicates},
	{"GetCellUnknown", testGetCellUnknown},
	{"ConcurrentCellCAS", testConcurrentCellCAS},
}

// RunCommit runs only the Commit and cell tests of the contract suite.
// The stores open returns MUST also implement anchor.Storage.
func RunCommit(t *testing.T, open Opener) {
	for _, test := range commitTests {
		t.Run(test.name, func(t *testing.T) { test.fn(t, open(t)) })
	}
}

var salt = bytes.Repeat([]byte{7}, anchor.SaltSize)

// leafRec is rec with its log leaf.
func leafRec(typ, id string, v int64, at time.Time, body string, terms ...store.Term) store.Record {
	r := rec(typ, id, v, at, body, terms...)
	r.Leaf, r.Salt = leafOf(typ, id, v), salt
	return r
}

var commitTypes = []string{"Patient", "Observation", "Encounter"}

// commitFixture stores Patient/a (name=old), Encounter/pre
// (identifier=taken), the erased Observation/gone and cell c1 at version 1,
// and returns a commit that succeeds over them: create Observation/o1,
// update Patient/a, create Encounter/e1 unless one has its identifier
// (checked before the commit, so e1 itself does not count), set c1 and
// create c2.
func commitFixture(t *testing.T, s store.Store) store.Commit {
	t.Helper()
	ctx := t.Context()
	mustPut(t, s, leafRec("Patient", "a", 1, t0, `{"a":1}`, term("name", "old")))
	mustPut(t, s, leafRec("Encounter", "pre", 1, t0, `{"pre":1}`, term("identifier", "taken")))
	mustPut(t, s, leafRec("Observation", "gone", 1, t0, `{}`, term("code", "c1")))
	if err := s.Erase(ctx, store.Key{Type: "Observation", ID: "gone"}); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, store.Commit{Cells: []store.SetCell{{ID: "c1", Value: []byte("one")}}})
	at := t0.Add(time.Minute)
	return store.Commit{
		Writes: []store.Write{
			{Record: leafRec("Observation", "o1", 1, at, `{"o1":1}`, term("code", "c1"))},
			{Record: leafRec("Patient", "a", 2, at, `{"a":2}`, term("name", "new"))},
			{Record: leafRec("Encounter", "e1", 1, at, `{"e1":1}`, term("identifier", "e1")),
				IfNoneMatch: &store.Query{Type: "Encounter", All: [][]store.Match{{match("identifier", "e1")}}}},
		},
		Cells: []store.SetCell{{ID: "c1", Version: 1, Value: []byte("two")}, {ID: "c2", Value: []byte("new")}},
	}
}

func mustCommit(t *testing.T, s store.Store, c store.Commit) {
	t.Helper()
	if err := s.Commit(t.Context(), c); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

// snapshot lists what the commit tests can see of the store: the log
// size, each type's history and live ids, each resource's current version,
// the ids each term finds, and the cells.
func snapshot(t *testing.T, s store.Store) []string {
	t.Helper()
	ctx := t.Context()
	n, err := s.(anchor.Storage).LogSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{fmt.Sprintf("log size %d", n)}
	for _, typ := range commitTypes {
		h, total := historyOf(t, s, typ)
		ids, err := s.Search(ctx, store.Query{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s history %v (%d), live %v", typ, h, total, ids))
	}
	for _, k := range []store.Key{
		{Type: "Patient", ID: "a"}, {Type: "Observation", ID: "o1"}, {Type: "Observation", ID: "gone"},
		{Type: "Encounter", ID: "pre"}, {Type: "Encounter", ID: "e1"},
	} {
		r, err := s.Get(ctx, k)
		out = append(out, fmt.Sprintf("%s: v%d %s %v", k, r.Version, r.Body, err))
	}
	for _, q := range []struct{ typ, param, value string }{
		{"Patient", "name", "old"}, {"Patient", "name", "new"}, {"Observation", "code", "c1"},
		{"Encounter", "identifier", "e1"}, {"Encounter", "identifier", "taken"},
	} {
		ids, err := s.Search(ctx, store.Query{Type: q.typ, All: [][]store.Match{{match(q.param, q.value)}}})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %s=%s finds %v", q.typ, q.param, q.value, ids))
	}
	for _, id := range []string{"c1", "c2"} {
		c, err := s.GetCell(ctx, id)
		out = append(out, fmt.Sprintf("cell %s: v%d %q %v", id, c.Version, c.Value, err))
	}
	return out
}

func testCommit(t *testing.T, s store.Store) {
	ctx := t.Context()
	c := commitFixture(t, s)
	st := s.(anchor.Storage)
	n0, err := st.LogSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, c)
	for i, w := range c.Writes {
		got, err := s.Get(ctx, w.Key())
		if err != nil || got.Version != w.Version || string(got.Body) != string(w.Body) || got.LeafIndex != n0+int64(i) {
			t.Errorf("Get(%s) = v%d %q leaf %d, %v; want v%d %q leaf %d", w.Key(), got.Version, got.Body, got.LeafIndex, err, w.Version, w.Body, n0+int64(i))
		}
	}
	leaves, err := st.Leaves(ctx, n0, n0+int64(len(c.Writes)))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range c.Writes {
		if !bytes.Equal(leaves[i], w.Leaf) {
			t.Errorf("leaf %d = %s, want write %d's %s", n0+int64(i), leaves[i], i, w.Leaf)
		}
	}
	want := []string{
		fmt.Sprintf("log size %d", n0+3),
		"Patient history [a/2 a/1] (2), live [a]",
		"Observation history [o1/1] (1), live [o1]",
		"Encounter history [e1/1 pre/1] (2), live [e1 pre]",
		`Patient/a: v2 {"a":2} <nil>`,
		`Observation/o1: v1 {"o1":1} <nil>`,
		"Observation/gone: v0  erased",
		`Encounter/pre: v1 {"pre":1} <nil>`,
		`Encounter/e1: v1 {"e1":1} <nil>`,
		"Patient name=old finds []",
		"Patient name=new finds [a]",
		"Observation code=c1 finds [o1]",
		"Encounter identifier=e1 finds [e1]",
		"Encounter identifier=taken finds [pre]",
		`cell c1: v2 "two" <nil>`,
		`cell c2: v1 "new" <nil>`,
	}
	if diff := cmp.Diff(want, snapshot(t, s)); diff != "" {
		t.Errorf("after commit (-want +got):\n%s", diff)
	}
	for _, typ := range commitTypes {
		if err := CheckLog(ctx, s, typ); err != nil {
			t.Error(err)
		}
		if err := CheckConsistent(ctx, s, typ, nil); err != nil {
			t.Error(err)
		}
	}
}

func testCommitAllOrNothing(t *testing.T, s store.Store) {
	base := commitFixture(t, s)
	before := snapshot(t, s)
	tests := []struct {
		name  string
		edit  func(c *store.Commit)
		index int   // of the failing write; -1 for a cell
		want  error // the *WriteError's Err, or ErrCellChanged
	}{
		{"version conflict", func(c *store.Commit) { c.Writes[1].Version = 3 }, 1, store.ErrConflict},
		{"create over existing", func(c *store.Commit) { c.Writes[2].ID = "pre" }, 2, store.ErrConflict},
		{"if-none-match hit", func(c *store.Commit) {
			c.Writes[2].IfNoneMatch = &store.Query{Type: "Encounter", All: [][]store.Match{{match("identifier", "taken")}}}
		}, 2, store.ErrExists},
		{"erased", func(c *store.Commit) { c.Writes[0].ID = "gone" }, 0, store.ErrErased},
		{"stale cell", func(c *store.Commit) { c.Cells[0].Version = 0 }, -1, store.ErrCellChanged},
		{"cell ahead", func(c *store.Commit) { c.Cells[0].Version = 2 }, -1, store.ErrCellChanged},
		{"unwritten cell", func(c *store.Commit) { c.Cells[1].Version = 1 }, -1, store.ErrCellChanged},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			c := store.Commit{Writes: slices.Clone(base.Writes), Cells: slices.Clone(base.Cells)}
			test.edit(&c)
			err := s.Commit(t.Context(), c)
			var we *store.WriteError
			switch {
			case test.index < 0 && (!errors.Is(err, test.want) || errors.As(err, &we)):
				t.Errorf("Commit = %v, want %v", err, test.want)
			case test.index >= 0 && (!errors.As(err, &we) || we.Index != test.index || we.Err != test.want):
				t.Errorf("Commit = %v, want a *WriteError of write %d: %v", err, test.index, test.want)
			}
			if diff := cmp.Diff(before, snapshot(t, s)); diff != "" {
				t.Errorf("a failed commit changed the store (-before +after):\n%s", diff)
			}
		})
	}
}

func testCommitDuplicates(t *testing.T, s store.Store) {
	base := commitFixture(t, s)
	before := snapshot(t, s)
	dupWrite := leafRec("Observation", "o1", 2, t0, `{}`)
	for _, c := range []store.Commit{
		{Writes: append(slices.Clone(base.Writes), store.Write{Record: dupWrite}), Cells: base.Cells},
		{Writes: base.Writes, Cells: append(slices.Clone(base.Cells), store.SetCell{ID: "c1", Version: 2})},
	} {
		err := s.Commit(t.Context(), c)
		var we *store.WriteError
		if err == nil || errors.As(err, &we) || errors.Is(err, store.ErrConflict) {
			t.Errorf("Commit with a duplicate = %v, want an error of its own", err)
		}
	}
	if diff := cmp.Diff(before, snapshot(t, s)); diff != "" {
		t.Errorf("a rejected commit changed the store (-before +after):\n%s", diff)
	}
}

func testGetCellUnknown(t *testing.T, s store.Store) {
	got, err := s.GetCell(t.Context(), "never")
	if diff := cmp.Diff(store.Cell{ID: "never"}, got); diff != "" || err != nil {
		t.Errorf("GetCell(never) = %v (-want +got):\n%s", err, diff)
	}
}

// testConcurrentCellCAS has 20 writers each increment a counter cell by
// compare-and-set, committing a record of its own with the increment and
// retrying on ErrCellChanged.
func testConcurrentCellCAS(t *testing.T, s store.Store) {
	ctx := t.Context()
	const writers = 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for {
				c, err := s.GetCell(ctx, "ctr")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(c.Value))
				err = s.Commit(ctx, store.Commit{
					Writes: []store.Write{{Record: leafRec("Basic", fmt.Sprintf("cas-%d", w), 1, t0, `{}`)}},
					Cells:  []store.SetCell{{ID: "ctr", Version: c.Version, Value: strconv.AppendInt(nil, int64(n+1), 10)}},
				})
				if err == nil {
					return
				}
				if !errors.Is(err, store.ErrCellChanged) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	c, err := s.GetCell(ctx, "ctr")
	if err != nil || c.Version != writers || string(c.Value) != strconv.Itoa(writers) {
		t.Errorf("counter cell = v%d %q, %v; want v%d %q", c.Version, c.Value, err, writers, strconv.Itoa(writers))
	}
	ids, err := s.Search(ctx, store.Query{Type: "Basic"})
	if err != nil || len(ids) != writers {
		t.Errorf("records committed with the counter: %v, %v; want %d", ids, err, writers)
	}
	if n, err := s.(anchor.Storage).LogSize(ctx); n != writers || err != nil {
		t.Errorf("LogSize = %d, %v; want %d", n, err, writers)
	}
	if err := CheckLog(ctx, s, "Basic"); err != nil {
		t.Error(err)
	}
}
