// Package boltstore is the embedded store.Store and store.Blobs, on
// go.etcd.io/bbolt. Every Put, Commit, Erase, PutKey, PutChunk and
// DropStream is one bbolt transaction, fsynced before it returns.
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fhirgate/fhirgate/internal/store"
	bolt "go.etcd.io/bbolt"
)

// Config configures a Store.
type Config struct {
	// Dir is the data directory: the database is Dir/fhirgate.db, Binary
	// contents are files under Dir/blobs.
	Dir string
	// Timeout bounds waiting for the file lock held by another process.
	Timeout time.Duration
}

// Store is a store.Store in a bbolt file.
type Store struct {
	db  *bolt.DB
	dir string // Config.Dir; blob streams are files under it (blobs.go)

	mu     sync.Mutex
	staged map[string]bool // streams this process staged and has not kept or dropped
}

var _ store.Store = (*Store)(nil)

// Buckets. Keys use 0x00 as a separator; terms containing 0x00 are not
// indexed (they cannot come from normalised FHIR values).
var (
	bCurrent = []byte("current") // type\0id -> cur version (8) + terms
	bVersion = []byte("version") // type\0id\0ver(8) -> version record
	bHistory = []byte("history") // type\0updated(8)\0id\0ver(8) -> nil
	bIndex   = []byte("index")   // type\0param\0value\0id -> nil
	bLive    = []byte("live")    // type\0id -> nil
	bErased  = []byte("erased")  // type\0id -> nil: erased, no versions left
	bKeys    = []byte("keys")    // key-material id -> value
	bLog     = []byte("log")     // "n" -> leaves committed, "h" -> hashed size (8 each)
	bLeaves  = []byte("leaves")  // leaf index(8) -> leaf data
	bHashes  = []byte("hashes")  // stored-hash index(8) -> hash (32)
	bAnchors = []byte("anchors") // tree size(8) -> anchor
	bCells   = []byte("cells")   // cell id -> version(8) + value
	bStaged  = []byte("staged")  // stream -> staged since, unix ns(8)
)

// New opens (creating if needed) the database under cfg.Dir, and drops
// every blob stream left staged when it was last closed (or its process
// crashed).
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	t := cfg.Timeout
	if t == 0 {
		t = 5 * time.Second
	}
	db, err := bolt.Open(filepath.Join(cfg.Dir, "fhirgate.db"), 0o600, &bolt.Options{
		Timeout: t,
		// Avoid remapping the file (which blocks every transaction) while it
		// grows, and keep the freelist out of each commit's fsync.
		InitialMmapSize: 256 << 20,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	db.MaxBatchDelay = 2 * time.Millisecond
	s := &Store{db: db, dir: cfg.Dir, staged: map[string]bool{}}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, blobsDir), 0o700); err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bCurrent, bVersion, bHistory, bIndex, bLive, bErased, bKeys, bLog, bLeaves, bHashes, bAnchors, bCells, bStaged} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return s.sweepStaged(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: init: %w", err)
	}
	return s, nil
}

func key(parts ...string) []byte {
	return []byte(strings.Join(parts, "\x00"))
}

func u64(v uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return string(b[:])
}

func verKey(t, id string, v int64) []byte { return key(t, id, u64(uint64(v))) }

func histKey(t string, updated time.Time, id string, v int64) []byte {
	return key(t, u64(uint64(updated.UnixNano())), id, u64(uint64(v)))
}

func termKey(t string, term store.Term, id string) ([]byte, bool) {
	if strings.ContainsRune(term.Param, 0) || strings.ContainsRune(term.Value, 0) {
		return nil, false
	}
	return key(t, term.Param, term.Value, id), true
}

// lookup returns k's value in b and whether b holds k (Bucket.Get cannot
// tell a nil or empty value from a missing key).
func lookup(b *bolt.Bucket, k []byte) ([]byte, bool) {
	got, v := b.Cursor().Seek(k)
	if !bytes.Equal(got, k) {
		return nil, false
	}
	return v, true
}

// has reports whether b holds k.
func has(b *bolt.Bucket, k []byte) bool {
	_, ok := lookup(b, k)
	return ok
}

// missing is the error for a resource with no current version: ErrErased
// if it was erased, else ErrNotFound.
func missing(tx *bolt.Tx, k store.Key) error {
	if has(tx.Bucket(bErased), key(k.Type, k.ID)) {
		return store.ErrErased
	}
	return store.ErrNotFound
}

// Put implements store.Store: a Commit of one write.
func (s *Store) Put(ctx context.Context, r store.Record, opts store.PutOptions) error {
	return store.PutByCommit(ctx, s.Commit, r, opts)
}

// Commit implements store.Store, in one transaction: every condition is
// checked before anything is written, the staged marker of every stream
// of c.Keep last (store.ErrNotFound if one has none); the markers are
// deleted with the writes.
func (s *Store) Commit(ctx context.Context, c store.Commit) error {
	if err := store.CheckCommit(c); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.syncStreams(c.Keep); err != nil {
		return err
	}
	// db.Batch coalesces concurrent writers into one transaction and one
	// fsync; a function that fails is re-run alone, so each Commit still
	// commits or fails on its own.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		old := make([][]store.Term, len(c.Writes))
		for i, w := range c.Writes {
			var err error
			if old[i], err = checkWrite(tx, w); err != nil {
				if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrErased) {
					err = &store.WriteError{Index: i, Err: err}
				}
				return err
			}
		}
		cells := tx.Bucket(bCells)
		for _, sc := range c.Cells {
			if cellVersion(cells.Get([]byte(sc.ID))) != sc.Version {
				return store.ErrCellChanged
			}
		}
		if err := checkKeep(tx, c.Keep); err != nil {
			return err
		}
		for i, w := range c.Writes {
			if err := putVersion(tx, w.Record, old[i]); err != nil {
				return err
			}
		}
		for _, sc := range c.Cells {
			v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(sc.Value)), uint64(sc.Version+1))
			if err := cells.Put([]byte(sc.ID), append(v, sc.Value...)); err != nil {
				return err
			}
		}
		return keepStreams(tx, c.Keep)
	})
	if err == nil {
		s.kept(c.Keep)
	}
	return err
}

// checkWrite checks w's conditions in tx and returns the terms of the
// resource's current version.
func checkWrite(tx *bolt.Tx, w store.Write) ([]store.Term, error) {
	ck := key(w.Type, w.ID)
	var curVer int64
	var terms []store.Term
	if v := tx.Bucket(bCurrent).Get(ck); v != nil {
		curVer = int64(binary.BigEndian.Uint64(v))
		var err error
		if terms, err = store.DecodeTerms(v[8:]); err != nil {
			return nil, err
		}
	} else if has(tx.Bucket(bErased), ck) {
		return nil, store.ErrErased
	}
	if curVer != w.Version-1 {
		return nil, store.ErrConflict
	}
	if w.IfNoneMatch != nil {
		ids, err := search(tx, *w.IfNoneMatch)
		if err != nil {
			return nil, err
		}
		if len(ids) > 0 {
			return nil, store.ErrExists
		}
	}
	return terms, nil
}

// putVersion writes r over the current version, whose terms are oldTerms,
// and appends r's leaf.
func putVersion(tx *bolt.Tx, r store.Record, oldTerms []store.Term) error {
	ck := key(r.Type, r.ID)
	idx := tx.Bucket(bIndex)
	for _, t := range oldTerms {
		if k, ok := termKey(r.Type, t, r.ID); ok {
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
	}
	terms := r.Terms
	if r.Deleted {
		terms = nil
	}
	for _, t := range terms {
		if k, ok := termKey(r.Type, t, r.ID); ok {
			if err := idx.Put(k, nil); err != nil {
				return err
			}
		}
	}
	cv := make([]byte, 8, 8+64)
	binary.BigEndian.PutUint64(cv, uint64(r.Version))
	cv = append(cv, store.EncodeTerms(terms)...)
	if err := tx.Bucket(bCurrent).Put(ck, cv); err != nil {
		return err
	}
	var leafIdx int64
	if r.Leaf != nil {
		var err error
		if leafIdx, err = appendLeaf(tx, r.Leaf); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bVersion).Put(verKey(r.Type, r.ID, r.Version), store.EncodeVersion(r, leafIdx)); err != nil {
		return err
	}
	if err := tx.Bucket(bHistory).Put(histKey(r.Type, r.Updated, r.ID, r.Version), nil); err != nil {
		return err
	}
	live := tx.Bucket(bLive)
	if r.Deleted {
		return live.Delete(ck)
	}
	return live.Put(ck, nil)
}

// cellVersion returns the version of a stored cell value (0: none).
func cellVersion(v []byte) int64 {
	if len(v) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// GetCell implements store.Store.
func (s *Store) GetCell(ctx context.Context, id string) (store.Cell, error) {
	c := store.Cell{ID: id}
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bCells).Get([]byte(id)); v != nil {
			c.Version, c.Value = cellVersion(v), bytes.Clone(v[8:])
		}
		return nil
	})
	return c, err
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, k store.Key) (store.Record, error) {
	var rec store.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bCurrent).Get(key(k.Type, k.ID))
		if v == nil {
			return missing(tx, k)
		}
		var err error
		rec, err = getVersion(tx, k, int64(binary.BigEndian.Uint64(v)))
		if err != nil {
			return err
		}
		rec.Terms, err = store.DecodeTerms(v[8:])
		return err
	})
	return rec, err
}

func getVersion(tx *bolt.Tx, k store.Key, v int64) (store.Record, error) {
	rec := store.Record{Type: k.Type, ID: k.ID, Version: v}
	b := tx.Bucket(bVersion).Get(verKey(k.Type, k.ID, v))
	if b == nil {
		return rec, store.ErrNotFound
	}
	return rec, store.DecodeVersion(b, &rec)
}

// GetVersion implements store.Store.
func (s *Store) GetVersion(ctx context.Context, k store.Key, v int64) (store.Record, error) {
	var rec store.Record
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if rec, err = getVersion(tx, k, v); errors.Is(err, store.ErrNotFound) {
			err = missing(tx, k)
		}
		return err
	})
	return rec, err
}

// History implements store.Store.
func (s *Store) History(ctx context.Context, q store.HistoryQuery) ([]store.Record, int, error) {
	var out []store.Record
	total := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		if q.ID != "" {
			v := tx.Bucket(bCurrent).Get(key(q.Type, q.ID))
			if v == nil {
				return missing(tx, store.Key{Type: q.Type, ID: q.ID})
			}
			for ver := int64(binary.BigEndian.Uint64(v)); ver >= 1; ver-- {
				rec, err := getVersion(tx, store.Key{Type: q.Type, ID: q.ID}, ver)
				if err != nil {
					return err
				}
				if rec.Updated.Before(q.Since) {
					break
				}
				total++
				if total > q.Offset && (q.Count == 0 || len(out) < q.Count) {
					out = append(out, rec)
				}
			}
			return nil
		}
		prefix := key(q.Type, "")
		c := tx.Bucket(bHistory).Cursor()
		// Seek past the last key with this prefix, then walk backwards.
		end := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
		k, _ := c.Seek(end)
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Prev() {
			// updated(8) \0 id \0 ver(8)
			b := k[len(prefix):]
			if len(b) < 8+1+1+8 {
				return errors.New("boltstore: corrupt history key")
			}
			updated := time.Unix(0, int64(binary.BigEndian.Uint64(b[:8])))
			if updated.Before(q.Since) {
				break
			}
			total++
			if total <= q.Offset || (q.Count > 0 && len(out) >= q.Count) {
				continue
			}
			rest := b[9:]
			id := string(rest[:len(rest)-9])
			ver := int64(binary.BigEndian.Uint64(rest[len(rest)-8:]))
			rec, err := getVersion(tx, store.Key{Type: q.Type, ID: id}, ver)
			if err != nil {
				return err
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, total, err
}

// Search implements store.Store.
func (s *Store) Search(ctx context.Context, q store.Query) ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		ids, err = search(tx, q)
		return err
	})
	return ids, err
}

func search(tx *bolt.Tx, q store.Query) ([]string, error) {
	var out []string
	if len(q.All) == 0 {
		prefix := key(q.Type, "")
		c := tx.Bucket(bLive).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			out = append(out, string(k[len(prefix):]))
		}
		return out, nil
	}
	var sets []map[string]bool
	c := tx.Bucket(bIndex).Cursor()
	for _, clause := range q.All {
		set := map[string]bool{}
		for _, m := range clause {
			prefix := key(q.Type, m.Param, m.Value, "")
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				i := bytes.LastIndexByte(k, 0)
				set[string(k[i+1:])] = true
			}
		}
		sets = append(sets, set)
	}
	out = store.Intersect(sets)
	sort.Strings(out)
	return out, nil
}

// Erase implements store.Store, in one transaction.
func (s *Store) Erase(ctx context.Context, k store.Key) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		ck := key(k.Type, k.ID)
		if v := tx.Bucket(bCurrent).Get(ck); v != nil {
			curVer := int64(binary.BigEndian.Uint64(v))
			terms, err := store.DecodeTerms(v[8:])
			if err != nil {
				return err
			}
			idx := tx.Bucket(bIndex)
			for _, t := range terms {
				if tk, ok := termKey(k.Type, t, k.ID); ok {
					if err := idx.Delete(tk); err != nil {
						return err
					}
				}
			}
			// Versions run 1..current; each names its history entry.
			vb, hb := tx.Bucket(bVersion), tx.Bucket(bHistory)
			for n := int64(1); n <= curVer; n++ {
				rec, err := getVersion(tx, k, n)
				if err != nil {
					return err
				}
				if err := hb.Delete(histKey(k.Type, rec.Updated, k.ID, n)); err != nil {
					return err
				}
				if err := vb.Delete(verKey(k.Type, k.ID, n)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bCurrent).Delete(ck); err != nil {
				return err
			}
			if err := tx.Bucket(bLive).Delete(ck); err != nil {
				return err
			}
		}
		return tx.Bucket(bErased).Put(ck, nil)
	})
}

// keyVal returns id's key-material value and whether it exists.
func keyVal(tx *bolt.Tx, id string) ([]byte, bool) { return lookup(tx.Bucket(bKeys), []byte(id)) }

// GetKey implements store.Store.
func (s *Store) GetKey(ctx context.Context, id string) ([]byte, error) {
	var val []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := keyVal(tx, id)
		if !ok {
			return store.ErrNotFound
		}
		val = append([]byte{}, v...)
		return nil
	})
	return val, err
}

// PutKey implements store.Store: compare and set in one transaction.
func (s *Store) PutKey(ctx context.Context, id string, old, val []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Batched like Put: a new patient's data key is written just before
	// its first resource, and sharing commits keeps that from doubling
	// the fsyncs per create.
	return s.db.Batch(func(tx *bolt.Tx) error {
		cur, ok := keyVal(tx, id)
		if ok != (old != nil) || !bytes.Equal(cur, old) {
			return store.ErrConflict
		}
		return tx.Bucket(bKeys).Put([]byte(id), val)
	})
}

// scanPage is how many key-material entries ScanKeys reads per transaction.
const scanPage = 256

// ScanKeys implements store.Store. It reads a page of entries at a time and
// calls fn outside any transaction, so fn may itself write keys.
func (s *Store) ScanKeys(ctx context.Context, fn func(id string, val []byte) error) error {
	from := []byte{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var ids []string
		var vals [][]byte
		err := s.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bKeys).Cursor()
			for k, v := c.Seek(from); k != nil && len(ids) < scanPage; k, v = c.Next() {
				ids = append(ids, string(k))
				vals = append(vals, append([]byte{}, v...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, id := range ids {
			if err := fn(id, vals[i]); err != nil {
				return err
			}
		}
		if len(ids) < scanPage {
			return nil
		}
		// The least id after the last one read.
		from = append([]byte(ids[len(ids)-1]), 0)
	}
}

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.View(func(tx *bolt.Tx) error { return nil })
}

// Close implements store.Store.
func (s *Store) Close() error { return s.db.Close() }
