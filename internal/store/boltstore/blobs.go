package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	bolt "go.etcd.io/bbolt"
)

// Blob streams (store.Blobs). A stream's chunks are in bChunks; a staged
// stream also has its marker in bStaged, which a Commit that keeps it
// deletes. Since only one process opens the file, a marker found when the
// store is opened was left by a writer that crashed or never kept its
// stream: New sweeps it with its chunks.

var _ store.Blobs = (*Store)(nil)

// chunkKey returns the key of chunk i of stream: stream\0i(4).
func chunkKey(stream string, i int) []byte {
	return binary.BigEndian.AppendUint32(streamPrefix(stream), uint32(i))
}

// streamPrefix returns the prefix of the keys of stream's chunks.
func streamPrefix(stream string) []byte {
	return append([]byte(stream), 0)
}

// checkChunk rejects what chunkKey cannot encode without ambiguity: an
// empty stream id, one containing 0x00 (its prefix would cover another
// stream's chunks), an index outside 0..MaxUint32.
func checkChunk(op, stream string, i int) error {
	switch {
	case stream == "" || bytes.IndexByte([]byte(stream), 0) >= 0:
		return fmt.Errorf("boltstore: %s: invalid stream id", op)
	case i < 0 || uint64(i) > math.MaxUint32:
		return fmt.Errorf("boltstore: %s: chunk index out of range", op)
	}
	return nil
}

// errKept is PutChunk's error for a stream a Commit kept: its chunks are
// permanent, and writing one would stage it again (and so sweep it at the
// next open).
var errKept = fmt.Errorf("boltstore: put chunk: stream already kept: %w", store.ErrConflict)

// PutChunk implements store.Blobs, in one transaction: it stages stream
// if it is new, and fails with an error matching store.ErrConflict if a
// Commit kept it. Concurrent calls share a transaction (bolt's Batch), so
// a writer that keeps several chunks in flight pays one fsync for them.
func (s *Store) PutChunk(ctx context.Context, stream string, i int, chunk []byte) error {
	if err := checkChunk("put chunk", stream, i); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Batch(func(tx *bolt.Tx) error {
		staged, chunks := tx.Bucket(bStaged), tx.Bucket(bChunks)
		if !has(staged, []byte(stream)) {
			prefix := streamPrefix(stream)
			if k, _ := chunks.Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
				return errKept
			}
			created := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
			if err := staged.Put([]byte(stream), created); err != nil {
				return err
			}
		}
		return chunks.Put(chunkKey(stream, i), chunk)
	})
}

// GetChunk implements store.Blobs.
func (s *Store) GetChunk(ctx context.Context, stream string, i int) ([]byte, error) {
	if err := checkChunk("get chunk", stream, i); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := lookup(tx.Bucket(bChunks), chunkKey(stream, i))
		if !ok {
			return store.ErrNotFound
		}
		// v is only valid inside the transaction.
		out = append(make([]byte, 0, len(v)), v...)
		return nil
	})
	return out, err
}

// DropStream implements store.Blobs, in one transaction.
func (s *Store) DropStream(ctx context.Context, stream string) error {
	if err := checkChunk("drop stream", stream, 0); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return dropStream(tx, stream) })
}

// dropStream deletes stream's chunks and its staged marker.
func dropStream(tx *bolt.Tx, stream string) error {
	chunks := tx.Bucket(bChunks)
	prefix := streamPrefix(stream)
	// Collect first: deleting under a cursor can make it skip keys.
	var keys [][]byte
	c := chunks.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := chunks.Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(bStaged).Delete([]byte(stream))
}

// errNotStaged is Commit's error for a Keep stream that is not staged.
var errNotStaged = fmt.Errorf("boltstore: commit: keep: stream not staged: %w", store.ErrNotFound)

// checkKeep checks, in a Commit's transaction, that every stream of keep
// is staged. A stream listed twice is kept once.
func checkKeep(tx *bolt.Tx, keep []string) error {
	staged := tx.Bucket(bStaged)
	for _, stream := range keep {
		if !has(staged, []byte(stream)) {
			return errNotStaged
		}
	}
	return nil
}

// keepStreams deletes the staged markers of keep, in a Commit's
// transaction after checkKeep: their chunks stay.
func keepStreams(tx *bolt.Tx, keep []string) error {
	staged := tx.Bucket(bStaged)
	for _, stream := range keep {
		if err := staged.Delete([]byte(stream)); err != nil {
			return err
		}
	}
	return nil
}

// sweepStaged drops every staged stream; New calls it, when no writer
// can still be writing one.
func sweepStaged(tx *bolt.Tx) error {
	var streams []string
	c := tx.Bucket(bStaged).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		streams = append(streams, string(k))
	}
	for _, stream := range streams {
		if err := dropStream(tx, stream); err != nil {
			return fmt.Errorf("sweep staged streams: %w", err)
		}
	}
	return nil
}
