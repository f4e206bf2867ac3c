package anchor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/tlog"
)

// Storage is what the log keeps in the store that commits the versions:
// the leaves (appended by the store's own version commits), the stored
// tree hashes, the anchors recorded, and a lease naming the one process
// that integrates and anchors. Store backends implement it.
type Storage interface {
	// LogSize returns how many leaves were committed.
	LogSize(ctx context.Context) (int64, error)
	// Leaves returns the data of leaves [from, to), to <= LogSize.
	Leaves(ctx context.Context, from, to int64) ([][]byte, error)

	// HashedSize returns the tree size up to which hashes are stored.
	HashedSize(ctx context.Context) (int64, error)
	// ReadHashes returns the stored hashes at the given indexes (tlog's
	// stored-hash indexes).
	ReadHashes(ctx context.Context, indexes []int64) ([][32]byte, error)
	// WriteHashes stores hashes at indexes start, start+1, … and then
	// raises HashedSize to size (never lowers it). Writing the same
	// hashes twice is harmless: they are a function of the leaves.
	WriteHashes(ctx context.Context, start int64, hashes [][32]byte, size int64) error

	// PutAnchor records the anchor of treeSize (val is opaque).
	PutAnchor(ctx context.Context, treeSize int64, val []byte) error
	// AnchorAfter returns the smallest recorded anchor with a tree size
	// larger than n, or ErrNoAnchor.
	AnchorAfter(ctx context.Context, n int64) (treeSize int64, val []byte, err error)
	// LatestAnchor returns the recorded anchor with the largest tree
	// size, or ErrNoAnchor.
	LatestAnchor(ctx context.Context) (treeSize int64, val []byte, err error)

	// Lease acquires or renews the lease name for holder for ttl, and
	// reports whether holder has it.
	Lease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error)
}

// ErrNoAnchor: no anchor is recorded (after the given size).
var ErrNoAnchor = errors.New("anchor: no anchor")

// integrateChunk bounds the leaves read per round of integration.
const integrateChunk = 4096

// Log is the Merkle log over a Storage: it integrates committed leaves
// into stored hashes and proves inclusion and consistency from them.
type Log struct {
	st Storage
	mu sync.Mutex // one integration at a time in this process
}

// NewLog returns the log kept in st.
func NewLog(st Storage) *Log { return &Log{st: st} }

// Storage returns the log's storage.
func (l *Log) Storage() Storage { return l.st }

func (l *Log) reader(ctx context.Context) tlog.HashReader {
	return tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		hs, err := l.st.ReadHashes(ctx, idx)
		if err != nil {
			return nil, err
		}
		out := make([]tlog.Hash, len(hs))
		for i, h := range hs {
			out[i] = h
		}
		return out, nil
	})
}

// Integrate stores the tree hashes of every committed leaf not yet hashed
// and returns the hashed tree size. Several processes may integrate at
// once: they write the same hashes.
func (l *Log) Integrate(ctx context.Context) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.st.LogSize(ctx)
	if err != nil {
		return 0, err
	}
	m, err := l.st.HashedSize(ctx)
	if err != nil {
		return 0, err
	}
	stored := l.reader(ctx)
	for m < n {
		to := min(n, m+integrateChunk)
		leaves, err := l.st.Leaves(ctx, m, to)
		if err != nil {
			return m, err
		}
		if int64(len(leaves)) != to-m {
			return m, fmt.Errorf("anchor: %d leaves read for [%d, %d)", len(leaves), m, to)
		}
		start := tlog.StoredHashIndex(0, m)
		var fresh []tlog.Hash
		// Hashes of this round are read from fresh, older ones from
		// storage.
		r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(idx))
			var old []int64
			for i, x := range idx {
				if x >= start {
					out[i] = fresh[x-start]
				} else {
					old = append(old, x)
				}
			}
			if len(old) > 0 {
				hs, err := stored.ReadHashes(old)
				if err != nil {
					return nil, err
				}
				j := 0
				for i, x := range idx {
					if x < start {
						out[i] = hs[j]
						j++
					}
				}
			}
			return out, nil
		})
		for i, data := range leaves {
			hs, err := tlog.StoredHashes(m+int64(i), data, r)
			if err != nil {
				return m, err
			}
			fresh = append(fresh, hs...)
		}
		out := make([][32]byte, len(fresh))
		for i, h := range fresh {
			out[i] = h
		}
		if err := l.st.WriteHashes(ctx, start, out, to); err != nil {
			return m, err
		}
		m = to
	}
	return m, nil
}

// Root returns the root hash of the tree of the first size leaves
// (size <= the hashed size).
func (l *Log) Root(ctx context.Context, size int64) (tlog.Hash, error) {
	return tlog.TreeHash(size, l.reader(ctx))
}

// InclusionProof proves leaf index is in the tree of size leaves.
func (l *Log) InclusionProof(ctx context.Context, index, size int64) (tlog.RecordProof, error) {
	return tlog.ProveRecord(size, index, l.reader(ctx))
}

// ConsistencyProof proves the tree of size first is a prefix of the tree
// of size second.
func (l *Log) ConsistencyProof(ctx context.Context, first, second int64) (tlog.TreeProof, error) {
	return tlog.ProveTree(second, first, l.reader(ctx))
}
