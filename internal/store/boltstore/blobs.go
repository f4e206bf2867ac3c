package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	bolt "go.etcd.io/bbolt"
)

// Blob streams (store.Blobs) are files beside the database, not values in
// it: chunk i of a stream is the file blobs/{stream}/{i}. (bbolt keeps
// values in its memory map and rewrites a leaf's values on every commit,
// so megabyte chunks would cost the gateway's memory the size of the file
// and several times the content in writes.) A staged stream has its
// marker in bStaged; a Commit that keeps it syncs its files first, then
// deletes the marker in the transaction of its writes. Since only one
// process opens the database, a marker found when the store is opened was
// left by a writer that crashed or never kept its stream: New removes the
// stream.

var _ store.Blobs = (*Store)(nil)

// blobsDir is the directory of the streams, under Config.Dir.
const blobsDir = "blobs"

// streamIDRE is what a stream id may be: a file name on any system.
var streamIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// checkChunk rejects a stream id that is not a plain file name and an
// index outside 0..MaxUint32.
func checkChunk(op, stream string, i int) error {
	switch {
	case !streamIDRE.MatchString(stream):
		return fmt.Errorf("boltstore: %s: invalid stream id", op)
	case i < 0 || uint64(i) > math.MaxUint32:
		return fmt.Errorf("boltstore: %s: chunk index out of range", op)
	}
	return nil
}

func (s *Store) streamDir(stream string) string { return filepath.Join(s.dir, blobsDir, stream) }

func (s *Store) chunkPath(stream string, i int) string {
	return filepath.Join(s.streamDir(stream), strconv.Itoa(i))
}

// errKept is PutChunk's error for a stream a Commit kept: its chunks are
// permanent, and writing one would stage it again (and so remove it at the
// next open).
var errKept = fmt.Errorf("boltstore: put chunk: stream already kept: %w", store.ErrConflict)

// PutChunk implements store.Blobs: it stages stream if it is new (one
// transaction per stream), and fails with an error matching
// store.ErrConflict if a Commit kept it. The chunk's file is synced when
// a Commit keeps the stream.
func (s *Store) PutChunk(ctx context.Context, stream string, i int, chunk []byte) error {
	if err := checkChunk("put chunk", stream, i); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.stage(stream); err != nil {
		return err
	}
	if err := os.MkdirAll(s.streamDir(stream), 0o700); err != nil {
		return fmt.Errorf("boltstore: put chunk: %w", err)
	}
	if err := os.WriteFile(s.chunkPath(stream, i), chunk, 0o600); err != nil {
		return fmt.Errorf("boltstore: put chunk: %w", err)
	}
	return nil
}

// stage marks stream staged, unless this process did so already.
func (s *Store) stage(stream string) error {
	s.mu.Lock()
	done := s.staged[stream]
	s.mu.Unlock()
	if done {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		staged := tx.Bucket(bStaged)
		if has(staged, []byte(stream)) {
			return nil
		}
		if _, err := os.Stat(s.streamDir(stream)); err == nil {
			return errKept
		}
		created := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
		return staged.Put([]byte(stream), created)
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.staged[stream] = true
	s.mu.Unlock()
	return nil
}

// GetChunk implements store.Blobs.
func (s *Store) GetChunk(ctx context.Context, stream string, i int) ([]byte, error) {
	if err := checkChunk("get chunk", stream, i); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.chunkPath(stream, i))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: get chunk: %w", err)
	}
	return b, nil
}

// DropStream implements store.Blobs.
func (s *Store) DropStream(ctx context.Context, stream string) error {
	if err := checkChunk("drop stream", stream, 0); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.RemoveAll(s.streamDir(stream)); err != nil {
		return fmt.Errorf("boltstore: drop stream: %w", err)
	}
	s.mu.Lock()
	delete(s.staged, stream)
	s.mu.Unlock()
	return s.db.Update(func(tx *bolt.Tx) error {
		if staged := tx.Bucket(bStaged); has(staged, []byte(stream)) {
			return staged.Delete([]byte(stream))
		}
		return nil
	})
}

// syncStreams makes the files of the streams a Commit keeps durable
// before the commit names them.
func (s *Store) syncStreams(keep []string) error {
	if len(keep) == 0 {
		return nil
	}
	for _, stream := range keep {
		if !streamIDRE.MatchString(stream) {
			return errNotStaged
		}
		dir := s.streamDir(stream)
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue // checkKeep decides: a stream with no chunk yet
		}
		if err != nil {
			return fmt.Errorf("boltstore: commit: keep: %w", err)
		}
		for _, e := range entries {
			if err := syncFile(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
		if err := syncFile(dir); err != nil {
			return err
		}
	}
	return syncFile(filepath.Join(s.dir, blobsDir))
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("boltstore: commit: keep: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("boltstore: commit: keep: %w", err)
	}
	return nil
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

// kept forgets that this process staged the streams a Commit kept.
func (s *Store) kept(keep []string) {
	s.mu.Lock()
	for _, stream := range keep {
		delete(s.staged, stream)
	}
	s.mu.Unlock()
}

// sweepStaged removes every staged stream; New calls it, when no writer
// can still be writing one.
func (s *Store) sweepStaged(tx *bolt.Tx) error {
	var streams []string
	c := tx.Bucket(bStaged).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		streams = append(streams, string(k))
	}
	for _, stream := range streams {
		if streamIDRE.MatchString(stream) {
			if err := os.RemoveAll(s.streamDir(stream)); err != nil {
				return fmt.Errorf("sweep staged streams: %w", err)
			}
		}
		if err := tx.Bucket(bStaged).Delete([]byte(stream)); err != nil {
			return fmt.Errorf("sweep staged streams: %w", err)
		}
	}
	return nil
}
