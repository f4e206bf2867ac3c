package sealed_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"github.com/fhirgate/fhirgate/internal/store/sealed"
	"github.com/fhirgate/fhirgate/internal/store/sealed/sealedtest"
)

// recorder is a backend that records the streams chunks are written to.
type recorder struct {
	*boltstore.Store
	mu      sync.Mutex
	streams map[string]bool
}

func (r *recorder) PutChunk(ctx context.Context, stream string, i int, chunk []byte) error {
	r.mu.Lock()
	r.streams[stream] = true
	r.mu.Unlock()
	return r.Store.PutChunk(ctx, stream, i, chunk)
}

func newBlobStore(t testing.TB) (*sealed.Store, *recorder) {
	backend, err := boltstore.New(t.Context(), boltstore.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	rec := &recorder{Store: backend, streams: map[string]bool{}}
	return sealedtest.Wrap(t, rec), rec
}

func keep(t testing.TB, s *sealed.Store, b sealed.Blob) {
	t.Helper()
	if err := s.Commit(t.Context(), store.Commit{Keep: []string{b.Stream}, Cells: []store.SetCell{{ID: b.Cell(), Value: b.Encode()}}}); err != nil {
		t.Fatal(err)
	}
}

func readBlob(s *sealed.Store, b sealed.Blob) ([]byte, error) {
	br, err := s.OpenBlob(context.Background(), b)
	if err != nil {
		return nil, err
	}
	defer br.Close()
	return io.ReadAll(br)
}

func TestBlobRoundTrip(t *testing.T) {
	s, _ := newBlobStore(t)
	ctx := t.Context()
	for _, size := range []int{0, 1, sealed.ChunkSize - 1, sealed.ChunkSize, sealed.ChunkSize + 1, 3*sealed.ChunkSize + 5} {
		content := make([]byte, size)
		rand.Read(content)
		b, err := s.WriteBlob(ctx, "Patient/p", bytes.NewReader(content))
		if err != nil {
			t.Fatalf("WriteBlob(%d bytes): %v", size, err)
		}
		wantChunks := max(1, (size+sealed.ChunkSize-1)/sealed.ChunkSize)
		if b.Size != int64(size) || b.Chunks != wantChunks || b.SHA256 != sha256.Sum256(content) || b.SHA1 != sha1.Sum(content) ||
			b.KeyID != s.KeyID("Patient/p") {
			t.Errorf("WriteBlob(%d bytes) = size %d, %d chunks, key %s", size, b.Size, b.Chunks, b.KeyID)
		}
		keep(t, s, b)
		found, v, err := s.FindBlob(ctx, s.KeyID("Patient/p"), sha256.Sum256(content))
		if err != nil || v != 1 || found != b {
			t.Errorf("FindBlob = %+v, %d, %v", found, v, err)
		}
		got, err := readBlob(s, b)
		if err != nil || !bytes.Equal(got, content) {
			t.Errorf("read back %d of %d bytes: %v", len(got), size, err)
		}
		// Another data key does not find it.
		if _, v, err := s.FindBlob(ctx, s.KeyID("Patient/q"), sha256.Sum256(content)); err != nil || v != 0 {
			t.Errorf("FindBlob under another key: version %d, %v", v, err)
		}
	}
}

// TestBlobTampered alters a blob's chunks in the backend: swapped, moved
// from another blob, or cut off at the end, they fail to read.
func TestBlobTampered(t *testing.T) {
	s, backend := newBlobStore(t)
	ctx := t.Context()
	content := make([]byte, 3*sealed.ChunkSize+10)
	rand.Read(content)
	// Staged (not kept) streams: the backend takes chunk writes to them.
	a, err := s.WriteBlob(ctx, "", bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.WriteBlob(ctx, "", bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	chunk := func(b sealed.Blob, i int) []byte {
		c, err := backend.GetChunk(ctx, b.Stream, i)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	put := func(i int, c []byte) {
		if err := backend.PutChunk(ctx, a.Stream, i, c); err != nil {
			t.Fatal(err)
		}
	}
	c0, c1, c2, c3 := chunk(a, 0), chunk(a, 1), chunk(a, 2), chunk(a, 3)
	wantIntegrity := func(what string) {
		t.Helper()
		if _, err := readBlob(s, a); !errors.Is(err, keys.ErrIntegrity) {
			t.Errorf("%s: read error %v, want an integrity failure", what, err)
		}
	}
	put(0, c1)
	put(1, c0)
	wantIntegrity("chunks 0 and 1 swapped")
	put(0, c0)
	put(1, c1)
	put(1, chunk(other, 1))
	wantIntegrity("chunk 1 from another blob of the same key")
	put(1, c1)
	put(2, c3)
	wantIntegrity("the last chunk in the place of the one before")
	put(2, c2)
	if got, err := readBlob(s, a); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("restored blob: %v", err)
	}
	// Cut off at the end: a description that ends a chunk early.
	short := a
	short.Chunks, short.Size = 3, 3*sealed.ChunkSize
	if _, err := readBlob(s, short); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("a blob cut off after chunk 2 read: %v", err)
	}
	// A chunk missing.
	dropped := a
	dropped.Stream = other.Stream
	if err := backend.DropStream(ctx, other.Stream); err != nil {
		t.Fatal(err)
	}
	if _, err := readBlob(s, dropped); !errors.Is(err, keys.ErrIntegrity) {
		t.Errorf("a missing chunk read: %v", err)
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	n := min(len(p), f.n)
	rand.Read(p[:n])
	f.n -= n
	return n, nil
}

// TestBlobWriteFails: a reader that fails midway leaves no chunk behind,
// and its error is returned as it is.
func TestBlobWriteFails(t *testing.T) {
	s, rec := newBlobStore(t)
	ctx := t.Context()
	cut := errors.New("client went away")
	_, err := s.WriteBlob(ctx, "Patient/p", &failingReader{n: 2*sealed.ChunkSize + 100, err: cut})
	if !errors.Is(err, cut) {
		t.Fatalf("WriteBlob error = %v, want the reader's", err)
	}
	if len(rec.streams) != 1 {
		t.Fatalf("%d streams written, want 1", len(rec.streams))
	}
	for stream := range rec.streams {
		for i := range 3 {
			if _, err := rec.GetChunk(ctx, stream, i); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("chunk %d of the failed upload: %v, want it dropped", i, err)
			}
		}
	}
}

// TestBlobCellSealed: the backend holds a blob's description under a
// blind id, sealed: neither the digest nor the data key shows.
func TestBlobCellSealed(t *testing.T) {
	s, rec := newBlobStore(t)
	ctx := t.Context()
	b, err := s.WriteBlob(ctx, "Patient/p", strings.NewReader("scan"))
	if err != nil {
		t.Fatal(err)
	}
	keep(t, s, b)
	if c, err := rec.GetCell(ctx, b.Cell()); err != nil || c.Version != 0 {
		t.Errorf("the backend holds the blob cell under its plain id: %+v, %v", c, err)
	}
	raw, err := rec.GetCell(ctx, s.Keys().Blind("#cell", b.Cell()))
	if err != nil || raw.Version != 1 || bytes.Contains(raw.Value, []byte(b.Stream)) {
		t.Errorf("blind cell: version %d, %v, or its value is not sealed", raw.Version, err)
	}
}

// TestBlobErased: a blob sealed under an erased patient's key no longer
// opens.
func TestBlobErased(t *testing.T) {
	s, _ := newBlobStore(t)
	ctx := t.Context()
	b, err := s.WriteBlob(ctx, "Patient/gone", strings.NewReader(strings.Repeat("x", sealed.ChunkSize+1)))
	if err != nil {
		t.Fatal(err)
	}
	keep(t, s, b)
	if err := s.Keys().Erase(ctx, "Patient/gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := readBlob(s, b); !errors.Is(err, store.ErrErased) {
		t.Errorf("read after erasure: %v, want ErrErased", err)
	}
	if _, err := s.WriteBlob(ctx, "Patient/gone", strings.NewReader("more")); !errors.Is(err, store.ErrErased) {
		t.Errorf("write after erasure: %v, want ErrErased", err)
	}
}

// BenchmarkWriteBlob and BenchmarkReadBlob measure the sealed blob path on
// bbolt (hashing, sealing and storing; reading and opening) in MB/s.
func BenchmarkWriteBlob(b *testing.B) {
	s, _ := newBlobStore(b)
	content := make([]byte, 64<<20)
	rand.Read(content)
	b.SetBytes(int64(len(content)))
	for b.Loop() {
		blob, err := s.WriteBlob(b.Context(), "Patient/p", bytes.NewReader(content))
		if err != nil {
			b.Fatal(err)
		}
		s.DropBlob(b.Context(), blob)
	}
}

func BenchmarkReadBlob(b *testing.B) {
	s, _ := newBlobStore(b)
	content := make([]byte, 64<<20)
	rand.Read(content)
	blob, err := s.WriteBlob(b.Context(), "Patient/p", bytes.NewReader(content))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(content)))
	for b.Loop() {
		br, err := s.OpenBlob(b.Context(), blob)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, br); err != nil || n != int64(len(content)) {
			b.Fatal(n, err)
		}
		br.Close()
	}
}
