package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	bolt "go.etcd.io/bbolt"
)

// The transparency log (anchor.Storage): leaves are appended by Put in the
// version's own transaction.

var _ anchor.Storage = (*Store)(nil)

var (
	logSizeKey    = []byte("n")
	hashedSizeKey = []byte("h")
)

func be(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }

func counter(b *bolt.Bucket, k []byte) int64 {
	if v := b.Get(k); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

// appendLeaf appends leaf to the log in tx and returns its index.
func appendLeaf(tx *bolt.Tx, leaf []byte) (int64, error) {
	lb := tx.Bucket(bLog)
	n := counter(lb, logSizeKey)
	if err := tx.Bucket(bLeaves).Put(be(n), leaf); err != nil {
		return 0, err
	}
	return n, lb.Put(logSizeKey, be(n+1))
}

// LogSize implements anchor.Storage.
func (s *Store) LogSize(ctx context.Context) (n int64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = counter(tx.Bucket(bLog), logSizeKey)
		return nil
	})
	return n, err
}

// Leaves implements anchor.Storage.
func (s *Store) Leaves(ctx context.Context, from, to int64) ([][]byte, error) {
	out := make([][]byte, 0, max(0, to-from))
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bLeaves).Cursor()
		i := from
		for k, v := c.Seek(be(from)); k != nil && i < to; k, v = c.Next() {
			if !bytes.Equal(k, be(i)) {
				return fmt.Errorf("boltstore: leaf %d missing", i)
			}
			out = append(out, bytes.Clone(v))
			i++
		}
		if i < to {
			return fmt.Errorf("boltstore: leaf %d missing", i)
		}
		return nil
	})
	return out, err
}

// HashedSize implements anchor.Storage.
func (s *Store) HashedSize(ctx context.Context) (n int64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = counter(tx.Bucket(bLog), hashedSizeKey)
		return nil
	})
	return n, err
}

// ReadHashes implements anchor.Storage.
func (s *Store) ReadHashes(ctx context.Context, indexes []int64) ([][32]byte, error) {
	out := make([][32]byte, len(indexes))
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bHashes)
		for i, x := range indexes {
			v := b.Get(be(x))
			if len(v) != 32 {
				return fmt.Errorf("boltstore: stored hash %d missing", x)
			}
			copy(out[i][:], v)
		}
		return nil
	})
	return out, err
}

// WriteHashes implements anchor.Storage, in one transaction.
func (s *Store) WriteHashes(ctx context.Context, start int64, hashes [][32]byte, size int64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bHashes)
		for i := range hashes {
			if err := b.Put(be(start+int64(i)), hashes[i][:]); err != nil {
				return err
			}
		}
		lb := tx.Bucket(bLog)
		if size > counter(lb, hashedSizeKey) {
			return lb.Put(hashedSizeKey, be(size))
		}
		return nil
	})
}

// PutAnchor implements anchor.Storage.
func (s *Store) PutAnchor(ctx context.Context, treeSize int64, val []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bAnchors).Put(be(treeSize), val)
	})
}

// AnchorAfter implements anchor.Storage.
func (s *Store) AnchorAfter(ctx context.Context, n int64) (size int64, val []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bAnchors).Cursor().Seek(be(n + 1))
		if k == nil {
			return anchor.ErrNoAnchor
		}
		size, val = int64(binary.BigEndian.Uint64(k)), bytes.Clone(v)
		return nil
	})
	return size, val, err
}

// LatestAnchor implements anchor.Storage.
func (s *Store) LatestAnchor(ctx context.Context) (size int64, val []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bAnchors).Cursor().Last()
		if k == nil {
			return anchor.ErrNoAnchor
		}
		size, val = int64(binary.BigEndian.Uint64(k)), bytes.Clone(v)
		return nil
	})
	return size, val, err
}

// Lease implements anchor.Storage. The database file is locked by one
// process, so that process always holds every lease.
func (s *Store) Lease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	return true, nil
}
