// Package store defines the versioned resource store the gateway writes
// through, and the contract its backends (boltstore, redisstore) share.
//
// A Record is opaque to the store: Body is bytes to keep and return, and
// Terms are search-index entries it looks up by exact value. The sealed
// package wraps a Store to encrypt bodies and blind terms; the backends
// never see plaintext.
//
// A Store also keeps wrapped key material (GetKey/PutKey/ScanKeys): small
// values under opaque ids, changed only by compare-and-set.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound: no such resource or version.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the resource's current version is not the one the write
	// expected (another writer won).
	ErrConflict = errors.New("version conflict")
	// ErrExists: a conditional create found a matching resource.
	ErrExists = fmt.Errorf("condition matched: %w", ErrConflict)
	// ErrErased: the resource was erased (crypto-shredded); none of its
	// versions can be read or written again.
	ErrErased = errors.New("erased")
	// ErrUnavailable: the backend could not be reached or cannot serve
	// now (connection refused or broken, timed out, still loading its
	// data). The operation may or may not have taken effect; it is worth
	// retrying later.
	ErrUnavailable = errors.New("store unavailable")
)

// Key names a resource.
type Key struct{ Type, ID string }

func (k Key) String() string { return k.Type + "/" + k.ID }

// Term is one search-index entry of a resource version, looked up exactly.
type Term struct {
	Param string
	Value string
}

// Record is one stored version of a resource.
type Record struct {
	Type, ID string
	Version  int64
	Updated  time.Time
	Deleted  bool   // a delete tombstone; Body is nil
	Body     []byte // the resource as served
	// Terms index the version while it is current; a tombstone has none.
	Terms []Term
	// Leaf, if set, is the version's log leaf data: Put appends it to the
	// log, assigning its index in the same commit as the version. Reads
	// return it with its LeafIndex.
	Leaf      []byte
	LeafIndex int64
	// Salt is the salt of the leaf's digest. The sealed wrapper keeps it
	// inside the sealed body; backends store what they are given.
	Salt []byte
	// Owner names the patient compartment ("Patient/<id>") whose data key
	// seals the version, "" for the tenant key. Only the sealed wrapper
	// reads it; backends neither store nor return it.
	Owner string
}

// Key returns the record's key.
func (r Record) Key() Key { return Key{r.Type, r.ID} }

// Match is one exact index lookup.
type Match struct {
	Param, Value string
}

// Query finds live (not deleted) resources of Type whose current version
// has, for every clause of All, at least one of the clause's terms. An
// empty All matches every live resource of the type.
type Query struct {
	Type string
	All  [][]Match
}

// PutOptions are conditions checked atomically with a write.
type PutOptions struct {
	// IfNoneMatch, if set, makes Put fail with ErrExists when any live
	// resource matches it.
	IfNoneMatch *Query
}

// HistoryQuery selects versions newest first: of one resource when ID is
// set, else of every resource of Type.
type HistoryQuery struct {
	Type, ID string
	Since    time.Time // only versions updated at or after Since
	Offset   int
	Count    int // at most this many; 0 means no limit
}

// Write is one version a Commit stores, with its condition.
type Write struct {
	Record
	// IfNoneMatch, if set, fails the commit with ErrExists when any live
	// resource matches it (before the commit).
	IfNoneMatch *Query
}

// Cell is a small opaque value the store keeps beside the resources under
// an id (a practitioner's booking calendar, a Subscription's owner). A
// cell changes only in a Commit, by compare-and-set on its Version, and is
// never removed: Version 0 is a cell never written.
type Cell struct {
	ID      string
	Version int64
	Value   []byte
}

// SetCell sets cell ID to Value in a Commit if its current version is
// Version (0: never written); the cell's new version is Version+1.
type SetCell struct {
	ID      string
	Version int64
	Value   []byte
}

// Commit is what Store.Commit writes in one atomic step.
type Commit struct {
	Writes []Write
	Cells  []SetCell
	// Keep lists staged blob streams (see Blobs) the commit keeps: their
	// chunks stay once it succeeds. A stream that is not staged (never
	// written, dropped, or expired) fails the commit with ErrNotFound
	// before anything is written.
	Keep []string
}

// ErrCellChanged: a cell of a Commit was not at the version it expected.
var ErrCellChanged = fmt.Errorf("cell changed: %w", ErrConflict)

// WriteError says which write of a Commit failed its condition; Err is
// ErrConflict, ErrExists or ErrErased.
type WriteError struct {
	Index int
	Err   error
}

func (e *WriteError) Error() string { return fmt.Sprintf("write %d: %v", e.Index, e.Err) }
func (e *WriteError) Unwrap() error { return e.Err }

// Store is a versioned resource store. Implementations MUST commit a
// version, its history entry and its index entries atomically, and MUST be
// durable when Put returns.
type Store interface {
	// Put stores r as version r.Version of r.Key(). It fails with
	// ErrConflict unless the current version is r.Version-1 (0: the
	// resource does not exist).
	Put(ctx context.Context, r Record, opts PutOptions) error
	// Commit stores every write and sets every cell in one atomic,
	// durable step, or none of them. Every condition is checked against
	// the state before the commit: each write's version as Put does and
	// its IfNoneMatch (failing with a *WriteError), each cell's version
	// (failing with ErrCellChanged). Two writes of one resource, or two
	// settings of one cell, fail with an error before anything is read.
	// Leaves are appended in the order of Writes.
	Commit(ctx context.Context, c Commit) error
	// GetCell returns a cell; one never written has Version 0 and no
	// Value.
	GetCell(ctx context.Context, id string) (Cell, error)
	// Get returns the current version, which may be a tombstone.
	Get(ctx context.Context, k Key) (Record, error)
	// GetVersion returns version v.
	GetVersion(ctx context.Context, k Key, v int64) (Record, error)
	// History returns versions newest first, and how many match in total.
	History(ctx context.Context, q HistoryQuery) ([]Record, int, error)
	// Search returns the sorted ids of the live resources matching q.
	Search(ctx context.Context, q Query) ([]string, error)
	// Erase atomically removes every version of k, its history entries and
	// its index entries, leaving a marker: afterwards Get, GetVersion,
	// History of k and Put of k fail with ErrErased, type History and
	// Search no longer return it. Erasing an erased or absent resource
	// is not an error (absent: it is marked erased all the same).
	Erase(ctx context.Context, k Key) error

	// GetKey returns the key-material value stored under id, or
	// ErrNotFound.
	GetKey(ctx context.Context, id string) ([]byte, error)
	// PutKey sets id to val if its current value is old (nil old: id must
	// not exist), else fails with ErrConflict. Key values are never
	// deleted.
	PutKey(ctx context.Context, id string, old, val []byte) error
	// ScanKeys calls fn for every key-material entry, in no set order;
	// entries written during the scan may or may not be seen.
	ScanKeys(ctx context.Context, fn func(id string, val []byte) error) error

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}

// CheckCommit returns an error when c writes one resource, or sets one
// cell, twice. Backends call it before anything else.
func CheckCommit(c Commit) error {
	seen := make(map[Key]bool, len(c.Writes))
	for _, w := range c.Writes {
		if seen[w.Key()] {
			return fmt.Errorf("store: commit writes %s twice", w.Key())
		}
		seen[w.Key()] = true
	}
	cells := make(map[string]bool, len(c.Cells))
	for _, sc := range c.Cells {
		if cells[sc.ID] {
			return fmt.Errorf("store: commit sets a cell twice")
		}
		cells[sc.ID] = true
	}
	return nil
}

// PutByCommit is Store.Put for a backend whose Put is a Commit of one
// write: it returns the write's error unwrapped from its *WriteError.
func PutByCommit(ctx context.Context, commit func(context.Context, Commit) error, r Record, opts PutOptions) error {
	err := commit(ctx, Commit{Writes: []Write{{Record: r, IfNoneMatch: opts.IfNoneMatch}}})
	if we := (*WriteError)(nil); errors.As(err, &we) {
		return we.Err
	}
	return err
}

// Blobs keeps the contents of large files (Binary resources) beside the
// resources, as numbered chunks of a stream. A stream id is random and
// opaque (it names nothing about its content or owner); chunks are opaque
// bytes (sealed by the caller) of up to MaxChunk bytes.
//
// A stream is staged while it is written: PutChunk writes to a staged
// stream only. A Commit that lists it in Keep makes it permanent, in the
// same atomic step as the commit's writes. A staged stream that is never
// kept leaves nothing behind: DropStream removes it at once, and a backend
// removes one left by a crashed writer by itself (redisstore: it expires
// StagedTTL after its last chunk was written; boltstore: when the store is
// next opened, since only one process writes a bbolt file).
type Blobs interface {
	// PutChunk stores chunk i (from 0) of staged stream, replacing one
	// written before under i.
	PutChunk(ctx context.Context, stream string, i int, chunk []byte) error
	// GetChunk returns chunk i of stream, staged or kept, or ErrNotFound.
	GetChunk(ctx context.Context, stream string, i int) ([]byte, error)
	// DropStream removes stream and all its chunks, staged or kept.
	// Dropping a stream that does not exist is not an error.
	DropStream(ctx context.Context, stream string) error
}

// MaxChunk bounds the size of one chunk a Blobs backend must accept.
const MaxChunk = 4 << 20

// StagedTTL is how long a backend that can expire keys keeps a staged
// stream after its last chunk was written.
const StagedTTL = time.Hour

// Bus carries small messages between the gateway processes that share a
// store. Messages are best effort: a process that is not subscribed when
// one is published never sees it.
type Bus interface {
	// Publish sends msg to every subscriber of topic, in every process.
	Publish(ctx context.Context, topic string, msg []byte) error
	// Subscribe calls fn for every message published on topic until ctx
	// is done; it returns once the subscription is in place.
	Subscribe(ctx context.Context, topic string, fn func(msg []byte)) error
}
