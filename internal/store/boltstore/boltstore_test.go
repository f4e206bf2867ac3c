package boltstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/storetest"
)

func TestMain(m *testing.M) {
	storetest.CrashChild(func() (store.Store, error) {
		return boltstore.New(context.Background(), boltstore.Config{Dir: os.Getenv("BOLT_DIR")})
	})
	os.Exit(m.Run())
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBlobs(t *testing.T) {
	storetest.RunBlobs(t, func(t *testing.T) store.Store { return open(t, t.TempDir()) })
}

// open opens the store in dir, and closes it at cleanup unless the test
// closed it.
func open(tb testing.TB, dir string) *boltstore.Store {
	tb.Helper()
	s, err := boltstore.New(tb.Context(), boltstore.Config{Dir: dir})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// TestBlobsReopen closes and reopens the file: a stream left staged (never
// kept, or listed by a commit that failed) is swept with its chunks; a
// kept one stays, with its exact bytes.
func TestBlobsReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	ctx := t.Context()
	kept := [][]byte{storetest.Chunk(1, store.MaxChunk), {}, storetest.Chunk(2, 12345)}
	for _, stream := range []string{"kept", "staged", "failed"} {
		for i, c := range kept {
			if err := s.PutChunk(ctx, stream, i, c); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := store.Record{Type: "Binary", ID: "b", Version: 1, Body: []byte(`{}`)}
	if err := s.Commit(ctx, store.Commit{Writes: []store.Write{{Record: r}}, Keep: []string{"kept"}}); err != nil {
		t.Fatal(err)
	}
	r.Version = 3
	err := s.Commit(ctx, store.Commit{Writes: []store.Write{{Record: r}}, Keep: []string{"failed"}})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Commit of a conflicting version = %v, want ErrConflict", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	for i, c := range kept {
		got, err := s.GetChunk(ctx, "kept", i)
		if err != nil || !bytes.Equal(got, c) {
			t.Errorf("kept chunk %d after reopen = %d bytes, %v; want its %d bytes", i, len(got), err, len(c))
		}
		for _, stream := range []string{"staged", "failed"} {
			if _, err := s.GetChunk(ctx, stream, i); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s chunk %d after reopen: %v, want ErrNotFound", stream, i, err)
			}
		}
	}
	for _, stream := range []string{"staged", "failed"} {
		if err := s.Commit(ctx, store.Commit{Keep: []string{stream}}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Commit keeping the swept %s stream = %v, want ErrNotFound", stream, err)
		}
	}
	if err := s.PutChunk(ctx, "kept", 3, []byte("x")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("PutChunk to the kept stream after reopen = %v, want ErrConflict", err)
	}
}

func BenchmarkPutChunk(b *testing.B) { storetest.BenchPutChunk(b, open(b, b.TempDir())) }

func BenchmarkGetChunk(b *testing.B) { storetest.BenchGetChunk(b, open(b, b.TempDir())) }

func TestCrashConsistency(t *testing.T) {
	dir := t.TempDir()
	storetest.RunCrash(t, []string{"BOLT_DIR=" + dir}, func(t *testing.T) store.Store {
		s, err := boltstore.New(t.Context(), boltstore.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
