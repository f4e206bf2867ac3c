package storetest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/fhirgate/fhirgate/internal/store"
)

// RunBlobs runs the store.Blobs contract tests, with the Commit.Keep
// tests. The stores open returns MUST implement store.Blobs.
func RunBlobs(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store, b store.Blobs)
	}{
		{"ChunksRoundTrip", testChunksRoundTrip},
		{"ChunkOverwrite", testChunkOverwrite},
		{"ChunkNotFound", testChunkNotFound},
		{"DropStream", testDropStream},
		{"StreamsIndependent", testStreamsIndependent},
		{"InvalidChunk", testInvalidChunk},
		{"CommitKeep", testCommitKeep},
		{"CommitKeepNotStaged", testCommitKeepNotStaged},
		{"FailedCommitDoesNotKeep", testFailedCommitDoesNotKeep},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			s := open(t)
			b, ok := s.(store.Blobs)
			if !ok {
				t.Fatalf("%T does not implement store.Blobs", s)
			}
			test.fn(t, s, b)
		})
	}
}

// Chunk returns n bytes of test data, the same for the same seed.
func Chunk(seed uint64, n int) []byte {
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

func mustPutChunk(t *testing.T, b store.Blobs, stream string, i int, chunk []byte) {
	t.Helper()
	if err := b.PutChunk(t.Context(), stream, i, chunk); err != nil {
		t.Fatalf("PutChunk(%q, %d): %v", stream, i, err)
	}
}

// wantChunk checks chunk i of stream is want, or is missing if want is
// nil.
func wantChunk(t *testing.T, b store.Blobs, stream string, i int, want []byte) {
	t.Helper()
	got, err := b.GetChunk(t.Context(), stream, i)
	switch {
	case want == nil && !errors.Is(err, store.ErrNotFound):
		t.Errorf("GetChunk(%q, %d) = %d bytes, %v; want ErrNotFound", stream, i, len(got), err)
	case want != nil && (err != nil || !bytes.Equal(got, want)):
		t.Errorf("GetChunk(%q, %d) = %d bytes, %v; want the %d bytes written", stream, i, len(got), err, len(want))
	}
}

func testChunksRoundTrip(t *testing.T, _ store.Store, b store.Blobs) {
	chunks := [][]byte{
		[]byte("first"),
		{},
		Chunk(1, store.MaxChunk),
		Chunk(2, 1000),
	}
	// Out of order, and one past a gap.
	for _, i := range []int{2, 0, 3, 1} {
		mustPutChunk(t, b, "rt", i, chunks[i])
	}
	mustPutChunk(t, b, "rt", 9, []byte("after a gap"))
	for i, c := range chunks {
		wantChunk(t, b, "rt", i, c)
	}
	wantChunk(t, b, "rt", 9, []byte("after a gap"))
	wantChunk(t, b, "rt", 4, nil)
}

func testChunkOverwrite(t *testing.T, _ store.Store, b store.Blobs) {
	mustPutChunk(t, b, "ow", 0, Chunk(3, 4096))
	mustPutChunk(t, b, "ow", 1, []byte("one"))
	mustPutChunk(t, b, "ow", 0, []byte("shorter"))
	wantChunk(t, b, "ow", 0, []byte("shorter"))
	mustPutChunk(t, b, "ow", 1, []byte{})
	wantChunk(t, b, "ow", 1, []byte{})
}

func testChunkNotFound(t *testing.T, _ store.Store, b store.Blobs) {
	wantChunk(t, b, "never", 0, nil)
	mustPutChunk(t, b, "some", 1, []byte("x"))
	wantChunk(t, b, "some", 0, nil)
	wantChunk(t, b, "some", 2, nil)
}

func testDropStream(t *testing.T, _ store.Store, b store.Blobs) {
	ctx := t.Context()
	for i := range 3 {
		mustPutChunk(t, b, "drop", i, Chunk(uint64(i), 100))
	}
	for range 2 { // idempotent
		if err := b.DropStream(ctx, "drop"); err != nil {
			t.Fatalf("DropStream: %v", err)
		}
		for i := range 3 {
			wantChunk(t, b, "drop", i, nil)
		}
	}
	if err := b.DropStream(ctx, "never"); err != nil {
		t.Errorf("DropStream(never written) = %v, want nil", err)
	}
	// Written again after a drop: a new stream.
	mustPutChunk(t, b, "drop", 1, []byte("again"))
	wantChunk(t, b, "drop", 0, nil)
	wantChunk(t, b, "drop", 1, []byte("again"))
}

// testStreamsIndependent uses ids that are prefixes of each other.
func testStreamsIndependent(t *testing.T, s store.Store, b store.Blobs) {
	ctx := t.Context()
	streams := []string{"a", "ab", "a-b", "b"}
	for n, st := range streams {
		for i := range 3 {
			mustPutChunk(t, b, st, i, Chunk(uint64(10*n+i), 64))
		}
	}
	if err := b.DropStream(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	mustCommit(t, s, store.Commit{Keep: []string{"ab"}})
	for n, st := range streams {
		for i := range 3 {
			want := Chunk(uint64(10*n+i), 64)
			if st == "a" {
				want = nil
			}
			wantChunk(t, b, st, i, want)
		}
	}
	// "a-b" and "b" are still staged, "ab" is kept.
	mustCommit(t, s, store.Commit{Keep: []string{"a-b", "b"}})
}

func testInvalidChunk(t *testing.T, _ store.Store, b store.Blobs) {
	ctx := t.Context()
	for _, test := range []struct {
		name   string
		stream string
		i      int
	}{
		{"empty stream id", "", 0},
		{"NUL in stream id", "a\x00b", 0},
		{"negative index", "neg", -1},
	} {
		t.Run(test.name, func(t *testing.T) {
			if err := b.PutChunk(ctx, test.stream, test.i, []byte("x")); err == nil {
				t.Error("PutChunk succeeded")
			}
			if _, err := b.GetChunk(ctx, test.stream, test.i); err == nil || errors.Is(err, store.ErrNotFound) {
				t.Errorf("GetChunk = %v, want an error of its own", err)
			}
			if test.i == 0 {
				if err := b.DropStream(ctx, test.stream); err == nil {
					t.Error("DropStream succeeded")
				}
			}
		})
	}
}

// testCommitKeep keeps a staged stream with a record and a cell: the
// stream then stays readable and is no longer staged (PutChunk to it
// fails with ErrConflict, keeping it again with ErrNotFound), and
// DropStream still removes it.
func testCommitKeep(t *testing.T, s store.Store, b store.Blobs) {
	ctx := t.Context()
	chunks := [][]byte{Chunk(5, 300), {}, []byte("tail")}
	for i, c := range chunks {
		mustPutChunk(t, b, "keep", i, c)
	}
	r := rec("Binary", "bin", 1, t0, `{"stream":"keep"}`)
	mustCommit(t, s, store.Commit{
		Writes: []store.Write{{Record: r}},
		Cells:  []store.SetCell{{ID: "bincell", Value: []byte("v")}},
		// Twice: a stream listed twice is kept once.
		Keep: []string{"keep", "keep"},
	})
	got, err := s.Get(ctx, r.Key())
	if err != nil || string(got.Body) != string(r.Body) {
		t.Errorf("Get(%s) = %q, %v; want the committed body", r.Key(), got.Body, err)
	}
	for i, c := range chunks {
		wantChunk(t, b, "keep", i, c)
	}
	if err := b.PutChunk(ctx, "keep", 3, []byte("more")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("PutChunk to a kept stream = %v, want ErrConflict", err)
	}
	wantChunk(t, b, "keep", 3, nil)
	err = s.Commit(ctx, store.Commit{Writes: []store.Write{{Record: rec("Binary", "bin", 2, t0, `{}`)}}, Keep: []string{"keep"}})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Commit keeping a kept stream = %v, want ErrNotFound", err)
	}
	if got, _ := s.Get(ctx, r.Key()); got.Version != 1 {
		t.Errorf("the failed commit wrote version %d", got.Version)
	}
	if err := b.DropStream(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		wantChunk(t, b, "keep", i, nil)
	}
}

// testCommitKeepNotStaged keeps streams that are not staged: each commit
// fails with ErrNotFound and writes nothing, and a staged stream it also
// lists stays staged.
func testCommitKeepNotStaged(t *testing.T, s store.Store, b store.Blobs) {
	ctx := t.Context()
	mustPutChunk(t, b, "dropped", 0, []byte("x"))
	if err := b.DropStream(ctx, "dropped"); err != nil {
		t.Fatal(err)
	}
	mustPutChunk(t, b, "kept", 0, []byte("x"))
	mustCommit(t, s, store.Commit{Keep: []string{"kept"}})
	mustPutChunk(t, b, "staged", 0, []byte("staged"))
	r := rec("Binary", "nk", 1, t0, `{}`)
	for _, test := range []struct {
		name string
		keep []string
	}{
		{"unknown", []string{"unknown"}},
		{"dropped", []string{"dropped"}},
		{"kept", []string{"kept"}},
		{"staged then unknown", []string{"staged", "unknown"}},
		{"unknown then staged", []string{"unknown", "staged"}},
	} {
		t.Run(test.name, func(t *testing.T) {
			err := s.Commit(ctx, store.Commit{
				Writes: []store.Write{{Record: r}},
				Cells:  []store.SetCell{{ID: "nkcell", Value: []byte("v")}},
				Keep:   test.keep,
			})
			if we := (*store.WriteError)(nil); !errors.Is(err, store.ErrNotFound) || errors.As(err, &we) {
				t.Errorf("Commit = %v, want ErrNotFound", err)
			}
			if got, err := s.Get(ctx, r.Key()); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("the failed commit wrote %s: v%d, %v", r.Key(), got.Version, err)
			}
			if c, err := s.GetCell(ctx, "nkcell"); c.Version != 0 || err != nil {
				t.Errorf("the failed commit set the cell: v%d, %v", c.Version, err)
			}
		})
	}
	wantChunk(t, b, "staged", 0, []byte("staged"))
	wantChunk(t, b, "kept", 0, []byte("x"))
	mustCommit(t, s, store.Commit{Writes: []store.Write{{Record: r}}, Keep: []string{"staged"}})
}

// testFailedCommitDoesNotKeep lists a staged stream in commits that fail
// a condition: the stream stays staged (PutChunk to it still works, and a
// commit that succeeds then keeps it).
func testFailedCommitDoesNotKeep(t *testing.T, s store.Store, b store.Blobs) {
	ctx := t.Context()
	mustPut(t, s, rec("Binary", "fc", 1, t0, `{"v":1}`, term("identifier", "taken")))
	mustCommit(t, s, store.Commit{Cells: []store.SetCell{{ID: "fccell", Value: []byte("1")}}})
	mustPutChunk(t, b, "fc", 0, []byte("zero"))
	next := func() store.Commit {
		return store.Commit{
			Writes: []store.Write{{Record: rec("Binary", "fc", 2, t0, `{"v":2}`)}},
			Cells:  []store.SetCell{{ID: "fccell", Version: 1, Value: []byte("2")}},
			Keep:   []string{"fc"},
		}
	}
	for _, test := range []struct {
		name string
		edit func(c *store.Commit)
		want error
	}{
		{"version conflict", func(c *store.Commit) { c.Writes[0].Version = 3 }, store.ErrConflict},
		{"if-none-match hit", func(c *store.Commit) {
			c.Writes = append(c.Writes, store.Write{
				Record:      rec("Binary", "other", 1, t0, `{}`),
				IfNoneMatch: &store.Query{Type: "Binary", All: [][]store.Match{{match("identifier", "taken")}}},
			})
		}, store.ErrExists},
		{"stale cell", func(c *store.Commit) { c.Cells[0].Version = 0 }, store.ErrCellChanged},
	} {
		t.Run(test.name, func(t *testing.T) {
			c := next()
			test.edit(&c)
			if err := s.Commit(ctx, c); !errors.Is(err, test.want) {
				t.Errorf("Commit = %v, want %v", err, test.want)
			}
			// Still staged: another chunk can be written.
			mustPutChunk(t, b, "fc", 1, []byte(test.name))
		})
	}
	if got, err := s.Get(ctx, store.Key{Type: "Binary", ID: "fc"}); err != nil || got.Version != 1 {
		t.Errorf("Get after the failed commits = v%d, %v; want v1", got.Version, err)
	}
	mustCommit(t, s, next())
	wantChunk(t, b, "fc", 0, []byte("zero"))
	wantChunk(t, b, "fc", 1, []byte("stale cell"))
}

// BenchPutChunk measures PutChunk of 1 MiB chunks, overwriting 64 of them
// round robin (the backend holds 64 MiB), in MB/s.
func BenchPutChunk(b *testing.B, s store.Blobs) {
	chunk := Chunk(1, 1<<20)
	b.SetBytes(int64(len(chunk)))
	i := 0
	for b.Loop() {
		if err := s.PutChunk(b.Context(), "bench", i%64, chunk); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchGetChunk measures GetChunk of 1 MiB chunks, in MB/s.
func BenchGetChunk(b *testing.B, s store.Blobs) {
	chunk := Chunk(1, 1<<20)
	for i := range 64 {
		if err := s.PutChunk(b.Context(), "bench", i, chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(chunk)))
	i := 0
	for b.Loop() {
		if _, err := s.GetChunk(b.Context(), "bench", i%64); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
