package store_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
)

// TestObserved: every Store call is reported once, by operation, with its
// duration and its error, and answers as the store does.
func TestObserved(t *testing.T) {
	backend, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		op  string
		err error
	}
	var got []call
	st := store.Observe(backend, func(op string, took time.Duration, err error) {
		if took < 0 {
			t.Errorf("%s took %v", op, took)
		}
		got = append(got, call{op, err})
	})
	if st.Unwrap() != store.Store(backend) {
		t.Fatalf("Unwrap is not the backend")
	}
	ctx := t.Context()
	k := store.Key{Type: "Patient", ID: "p1"}
	r := store.Record{Type: "Patient", ID: "p1", Version: 1, Updated: time.Now(), Body: []byte(`{}`), Terms: []store.Term{{Param: "x", Value: "y"}}}
	if err := st.Put(ctx, r, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	r.Version = 2
	if err := st.Commit(ctx, store.Commit{Writes: []store.Write{{Record: r}}, Cells: []store.SetCell{{ID: "c", Value: []byte("v")}}}); err != nil {
		t.Fatal(err)
	}
	if c, err := st.GetCell(ctx, "c"); err != nil || c.Version != 1 {
		t.Fatalf("GetCell = %+v, %v", c, err)
	}
	if rec, err := st.Get(ctx, k); err != nil || rec.Version != 2 {
		t.Fatalf("Get = %+v, %v", rec, err)
	}
	_, errMissing := st.GetVersion(ctx, k, 9)
	if !errors.Is(errMissing, store.ErrNotFound) {
		t.Fatalf("GetVersion(9) = %v", errMissing)
	}
	if _, n, err := st.History(ctx, store.HistoryQuery{Type: "Patient", ID: "p1"}); n != 2 || err != nil {
		t.Fatalf("History = %d, %v", n, err)
	}
	if ids, err := st.Search(ctx, store.Query{Type: "Patient", All: [][]store.Match{{{Param: "x", Value: "y"}}}}); !slices.Equal(ids, []string{"p1"}) || err != nil {
		t.Fatalf("Search = %v, %v", ids, err)
	}
	if err := st.PutKey(ctx, "k", nil, []byte("1")); err != nil {
		t.Fatal(err)
	}
	if v, err := st.GetKey(ctx, "k"); string(v) != "1" || err != nil {
		t.Fatalf("GetKey = %q, %v", v, err)
	}
	if err := st.ScanKeys(ctx, func(string, []byte) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := st.Erase(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := st.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	errClosed := st.Ping(ctx)
	if errClosed == nil {
		t.Fatal("Ping after Close succeeded")
	}
	want := []call{
		{store.OpPut, nil}, {store.OpCommit, nil}, {store.OpGetCell, nil}, {store.OpGet, nil},
		{store.OpGetVersion, errMissing}, {store.OpHistory, nil}, {store.OpSearch, nil},
		{store.OpPutKey, nil}, {store.OpGetKey, nil}, {store.OpScanKeys, nil}, {store.OpErase, nil},
		{store.OpPing, nil}, {store.OpPing, errClosed},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("reported %v,\nwant     %v", got, want)
	}
}
