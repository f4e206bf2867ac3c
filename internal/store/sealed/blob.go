package sealed

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
)

// Large contents (Binary resources) are kept as blobs: the plaintext is
// cut into chunks of ChunkSize bytes (the last one shorter, or empty for
// an empty file), each sealed under the owner's data key and bound to
// "blob/{stream}/{index}", with "/last" appended for the last chunk, so
// that chunks cannot be reordered, moved between blobs, dropped or cut off
// at the end without the read failing. The chunks go to the backend's
// store.Blobs as one staged stream, which the commit of the version that
// names the blob keeps.
//
// A blob is found by its content: the cell BlobCell(keyID, sha256) holds
// its Blob description (sealed, under a blind id, like every cell), so
// one content is stored once per data key. It is never shared between
// data keys: whether two patients hold the same file is not to be told.

// ChunkSize is the plaintext size of a blob's chunks.
const ChunkSize = 1 << 20

// Blob describes a stored content: where its chunks are, and what they
// hold.
type Blob struct {
	Stream    string `json:"stream"`
	Size      int64  `json:"size"`
	Chunks    int    `json:"chunks"`
	ChunkSize int    `json:"chunkSize"`
	// SHA256 and SHA1 are the plaintext's digests. (R4's
	// Attachment.hash is SHA-1; the log and the Binary record SHA-256.)
	SHA256 [sha256.Size]byte `json:"sha256"`
	SHA1   [sha1.Size]byte   `json:"sha1"`
	// KeyID is the data key the chunks are sealed under.
	KeyID string `json:"key"`
}

// BlobCell is the id of the cell that holds the Blob of the content with
// digest sha256 under data key keyID.
func BlobCell(keyID string, sha256 [sha256.Size]byte) string {
	return "blob/" + keyID + "/" + hex.EncodeToString(sha256[:])
}

// Cell returns b's cell id.
func (b Blob) Cell() string { return BlobCell(b.KeyID, b.SHA256) }

// Encode returns b as a cell value.
func (b Blob) Encode() []byte {
	v, _ := json.Marshal(b)
	return v
}

// DecodeBlob decodes a cell value Encode wrote.
func DecodeBlob(v []byte) (Blob, error) {
	var b Blob
	if err := json.Unmarshal(v, &b); err != nil || b.Stream == "" || b.ChunkSize <= 0 || b.Size < 0 ||
		int64(b.Chunks) != chunkCount(b.Size, b.ChunkSize) {
		return Blob{}, errors.New("sealed: corrupt blob description")
	}
	return b, nil
}

// chunkCount is how many chunks a content of size bytes takes: an empty
// content has one, empty, chunk.
func chunkCount(size int64, chunkSize int) int64 {
	if size == 0 {
		return 1
	}
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

func chunkName(stream string, i int, last bool) string {
	n := "blob/" + stream + "/" + strconv.Itoa(i)
	if last {
		n += "/last"
	}
	return n
}

// ErrNoBlobs: the backend does not keep blobs.
var ErrNoBlobs = errors.New("sealed: the store does not keep large contents")

func (s *Store) blobs() (store.Blobs, error) {
	b, ok := s.Store.(store.Blobs)
	if !ok {
		return nil, ErrNoBlobs
	}
	return b, nil
}

// KeyID returns the id of the data key that seals owner's values.
func (s *Store) KeyID(owner string) string { return s.keys.DataKeyID(owner) }

// chunkDepth is how many sealed chunks WriteBlob keeps in flight to the
// backend, written by as many goroutines, while it reads and seals the
// next: reading the request and writing the store overlap (bbolt commits
// concurrent chunks in one transaction, Redis takes them on several
// connections), and memory stays at a few chunks.
const chunkDepth = 4

// WriteBlob reads r to its end and stores it as a new staged stream,
// sealed under owner's data key, returning its description. The stream
// stays staged until a Commit keeps it (store.Commit.Keep: b.Stream);
// the caller drops it (DropBlob) if it does not commit. On error nothing
// is left behind: the chunks written so far are dropped. Errors reading
// r are returned as they are (an *http.MaxBytesError, say).
func (s *Store) WriteBlob(ctx context.Context, owner string, r io.Reader) (Blob, error) {
	bs, err := s.blobs()
	if err != nil {
		return Blob{}, err
	}
	var id [16]byte
	rand.Read(id[:])
	b := Blob{Stream: hex.EncodeToString(id[:]), ChunkSize: ChunkSize, KeyID: s.keys.DataKeyID(owner)}

	// chunkDepth writer goroutines store sealed chunks while this one
	// reads, hashes and seals the next.
	type sealedChunk struct {
		i  int
		ct []byte
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	out := make(chan sealedChunk)
	// The buffers chunks are sealed into go round: a backend keeps no
	// chunk it was given once PutChunk returns.
	free := make(chan []byte, chunkDepth+1)
	for range chunkDepth + 1 {
		free <- nil
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		werr error
	)
	for range chunkDepth {
		wg.Go(func() {
			for c := range out {
				if err := bs.PutChunk(ctx, b.Stream, c.i, c.ct); err != nil {
					mu.Lock()
					if werr == nil {
						werr = fmt.Errorf("sealed: storing chunk %d: %w", c.i, err)
						cancel(werr)
					}
					mu.Unlock()
				}
				free <- c.ct[:0]
			}
		})
	}
	fail := func(err error) (Blob, error) {
		close(out)
		wg.Wait()
		if werr != nil && (ctx.Err() != nil || err == nil) {
			err = werr
		}
		s.DropBlob(context.WithoutCancel(ctx), b)
		return Blob{}, err
	}

	h256, h1 := sha256.New(), sha1.New()
	cur, next := make([]byte, ChunkSize), make([]byte, ChunkSize)
	n, err := readChunk(r, cur)
	for i := 0; ; i++ {
		if err != nil {
			return fail(err)
		}
		last := n < ChunkSize
		var m int
		if !last {
			// Look ahead: a full chunk is the last only if nothing follows.
			m, err = readChunk(r, next)
			last = m == 0 && err == nil
		}
		chunk := cur[:n]
		h256.Write(chunk)
		h1.Write(chunk)
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
			return fail(context.Cause(ctx))
		}
		ct, serr := s.keys.AppendSeal(ctx, buf, owner, chunkName(b.Stream, i, last), chunk)
		if errors.Is(serr, keys.ErrErased) {
			return fail(store.ErrErased)
		}
		if serr != nil {
			return fail(serr)
		}
		select {
		case out <- sealedChunk{i, ct}:
		case <-ctx.Done():
			return fail(context.Cause(ctx))
		}
		b.Size += int64(n)
		if last {
			b.Chunks = i + 1
			break
		}
		cur, next, n = next, cur, m
	}
	close(out)
	wg.Wait()
	if werr != nil {
		s.DropBlob(context.WithoutCancel(ctx), b)
		return Blob{}, werr
	}
	h256.Sum(b.SHA256[:0])
	h1.Sum(b.SHA1[:0])
	return b, nil
}

// readChunk fills buf from r as far as r goes: at r's end (io.EOF) it
// returns a short count and a nil error. Any other error of r, an
// io.ErrUnexpectedEOF of a body cut short included, is returned.
func readChunk(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DropBlob removes b's stream. Dropping a stream a committed version names
// loses its content: only drop what no commit kept.
func (s *Store) DropBlob(ctx context.Context, b Blob) error {
	bs, err := s.blobs()
	if err != nil {
		return err
	}
	return bs.DropStream(ctx, b.Stream)
}

// FindBlob returns the Blob of the content with digest sha256 under data
// key keyID, and the version of its cell (0, with no Blob, when there is
// none).
func (s *Store) FindBlob(ctx context.Context, keyID string, sha256 [sha256.Size]byte) (Blob, int64, error) {
	c, err := s.GetCell(ctx, BlobCell(keyID, sha256))
	if err != nil || c.Version == 0 {
		return Blob{}, 0, err
	}
	b, err := DecodeBlob(c.Value)
	if err != nil {
		return Blob{}, 0, err
	}
	if b.SHA256 != sha256 || b.KeyID != keyID {
		return Blob{}, 0, &keys.IntegrityError{Name: "blob cell"}
	}
	return b, c.Version, nil
}

// BlobReader reads a blob's plaintext, chunk by chunk, from the store.
// It is an io.ReadSeeker (http.ServeContent serves ranges with it); a
// chunk that fails to open (altered, swapped, missing, or its data key
// erased) fails the Read with an error wrapping keys.ErrIntegrity,
// store.ErrNotFound or store.ErrErased.
type BlobReader struct {
	s   *Store
	bs  store.Blobs
	ctx context.Context
	b   Blob
	pos int64

	// The chunk read last, and the next one, fetched ahead while the
	// reader serves the last.
	idx   int
	chunk []byte
	ahead chan fetched
}

type fetched struct {
	idx   int
	chunk []byte
	err   error
}

// OpenBlob returns a reader of b's content.
func (s *Store) OpenBlob(ctx context.Context, b Blob) (*BlobReader, error) {
	bs, err := s.blobs()
	if err != nil {
		return nil, err
	}
	return &BlobReader{s: s, bs: bs, ctx: ctx, b: b, idx: -1}, nil
}

// Size returns the content's size.
func (br *BlobReader) Size() int64 { return br.b.Size }

// Seek implements io.Seeker.
func (br *BlobReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += br.pos
	case io.SeekEnd:
		offset += br.b.Size
	default:
		return 0, errors.New("sealed: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("sealed: seek before the start")
	}
	br.pos = offset
	return offset, nil
}

// Read implements io.Reader.
func (br *BlobReader) Read(p []byte) (int, error) {
	if br.pos >= br.b.Size {
		return 0, io.EOF
	}
	i := int(br.pos / int64(br.b.ChunkSize))
	if i != br.idx {
		c, err := br.get(i)
		if err != nil {
			return 0, err
		}
		br.idx, br.chunk = i, c
	}
	n := copy(p, br.chunk[br.pos-int64(i)*int64(br.b.ChunkSize):])
	br.pos += int64(n)
	return n, nil
}

// get returns chunk i, from the read-ahead when it fetched it, and starts
// fetching chunk i+1.
func (br *BlobReader) get(i int) ([]byte, error) {
	var f fetched
	if br.ahead != nil {
		f = <-br.ahead
		br.ahead = nil
	}
	if f.idx != i || f.chunk == nil && f.err == nil {
		f = fetched{idx: i}
		f.chunk, f.err = br.fetch(i)
	}
	if f.err == nil && i+1 < br.b.Chunks {
		ch := make(chan fetched, 1)
		br.ahead = ch
		go func() {
			c, err := br.fetch(i + 1)
			ch <- fetched{i + 1, c, err}
		}()
	}
	return f.chunk, f.err
}

// fetch reads and opens chunk i, checking its length.
func (br *BlobReader) fetch(i int) ([]byte, error) {
	last := i == br.b.Chunks-1
	name := chunkName(br.b.Stream, i, last)
	ct, err := br.bs.GetChunk(br.ctx, br.b.Stream, i)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("sealed: chunk %d of a blob is missing: %w", i, &keys.IntegrityError{Name: name})
	}
	if err != nil {
		return nil, err
	}
	pt, err := br.s.keys.OpenInPlace(br.ctx, name, ct)
	if errors.Is(err, keys.ErrErased) {
		return nil, store.ErrErased
	}
	if err != nil {
		return nil, err
	}
	want := int64(br.b.ChunkSize)
	if last {
		want = br.b.Size - int64(i)*int64(br.b.ChunkSize)
	}
	if int64(len(pt)) != want {
		return nil, &keys.IntegrityError{Name: name}
	}
	return pt, nil
}

// Close waits for a read-ahead in flight.
func (br *BlobReader) Close() error {
	if br.ahead != nil {
		<-br.ahead
		br.ahead = nil
	}
	return nil
}
