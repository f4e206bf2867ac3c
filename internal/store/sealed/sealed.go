// Package sealed wraps a store.Store so that the backend holds no
// plaintext: every version body is sealed (keys.Manager.Seal) under its
// owner's data key and bound to "{type}/{id}/_history/{vid}", and every
// index term and query match is replaced by its blind token. A version's
// leaf salt is sealed with its body (plaintext salt ‖ body); a delete's,
// which commits to no content, is stored as given.
//
// A cell's id is replaced by its blind token and its value is sealed under
// the tenant key, bound to "cell/{token}"; its version passes through.
package sealed

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
)

// Store is a store.Store that seals what it writes to its backend.
type Store struct {
	store.Store
	keys *keys.Manager
}

var _ store.Store = (*Store)(nil)

// New wraps backend, sealing with m.
func New(backend store.Store, m *keys.Manager) *Store {
	return &Store{Store: backend, keys: m}
}

// Backend returns the store s seals for.
func (s *Store) Backend() store.Store { return s.Store }

// Keys returns the key manager.
func (s *Store) Keys() *keys.Manager { return s.keys }

func name(t, id string, v int64) string {
	return t + "/" + id + "/_history/" + strconv.FormatInt(v, 10)
}

// Put implements store.Store: a Commit of one write. A write into an
// erased patient's compartment fails with store.ErrErased.
func (s *Store) Put(ctx context.Context, r store.Record, opts store.PutOptions) error {
	return store.PutByCommit(ctx, s.Commit, r, opts)
}

// Commit implements store.Store: it seals every write as Put does and
// every cell as GetCell opens it. A write into an erased patient's
// compartment fails with a *store.WriteError of store.ErrErased.
func (s *Store) Commit(ctx context.Context, c store.Commit) error {
	if err := store.CheckCommit(c); err != nil {
		return err
	}
	out := store.Commit{Writes: make([]store.Write, len(c.Writes)), Cells: make([]store.SetCell, len(c.Cells)), Keep: c.Keep}
	// Writes are sealed in parallel: a large commit (a transaction of
	// many new patients) creates a data key per patient, each a store
	// round trip, which the backends batch when they arrive together.
	errs := make([]error, len(c.Writes))
	sealOne := func(i int) { out.Writes[i], errs[i] = s.sealWrite(ctx, c.Writes[i]) }
	if n := min(len(c.Writes), sealWorkers); n <= 1 {
		for i := range c.Writes {
			sealOne(i)
		}
	} else {
		next := make(chan int)
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				for i := range next {
					sealOne(i)
				}
			})
		}
		for i := range c.Writes {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	for i, err := range errs {
		if errors.Is(err, store.ErrErased) {
			return &store.WriteError{Index: i, Err: err}
		} else if err != nil {
			return err
		}
	}
	for i, sc := range c.Cells {
		id := s.cellID(sc.ID)
		b, err := s.keys.Seal(ctx, "", cellName(id), sc.Value)
		if err != nil {
			return err
		}
		out.Cells[i] = store.SetCell{ID: id, Version: sc.Version, Value: b}
	}
	return s.Store.Commit(ctx, out)
}

// sealWorkers bounds the writes of one commit sealed at once.
const sealWorkers = 8

// sealWrite seals w's body (with its leaf salt) and blinds its terms and
// its IfNoneMatch query.
func (s *Store) sealWrite(ctx context.Context, w store.Write) (store.Write, error) {
	if !w.Deleted {
		pt := w.Body
		if w.Leaf != nil {
			if len(w.Salt) != anchor.SaltSize {
				return w, errors.New("sealed: a leaf's salt must be 32 bytes")
			}
			pt = append(append(make([]byte, 0, len(w.Salt)+len(w.Body)), w.Salt...), w.Body...)
			w.Salt = nil
		}
		b, err := s.keys.Seal(ctx, w.Owner, name(w.Type, w.ID, w.Version), pt)
		if errors.Is(err, keys.ErrErased) {
			return w, store.ErrErased
		}
		if err != nil {
			return w, err
		}
		w.Body = b
	}
	w.Terms = s.blindTerms(w.Terms)
	if g := w.IfNoneMatch; g != nil {
		w.IfNoneMatch = s.blindQuery(*g)
	}
	return w, nil
}

// cellParam is the blinding param of cell ids: no search parameter is
// named so, so a cell id's token never equals an index term's.
const cellParam = "#cell"

// cellID is the backend id of cell id: its blind token.
func (s *Store) cellID(id string) string { return s.keys.Blind(cellParam, id) }

// cellName binds a sealed cell value to its backend id, so values cannot
// be swapped between cells.
func cellName(blindID string) string { return "cell/" + blindID }

// GetCell implements store.Store. A cell's value is sealed under the
// tenant key.
func (s *Store) GetCell(ctx context.Context, id string) (store.Cell, error) {
	c, err := s.Store.GetCell(ctx, s.cellID(id))
	if err != nil || c.Version == 0 {
		return store.Cell{ID: id, Version: c.Version}, err
	}
	b, err := s.keys.Open(ctx, cellName(c.ID), c.Value)
	if err != nil {
		return store.Cell{ID: id}, err
	}
	return store.Cell{ID: id, Version: c.Version, Value: b}, nil
}

func (s *Store) blindTerms(ts []store.Term) []store.Term {
	if len(ts) == 0 {
		return nil
	}
	out := make([]store.Term, len(ts))
	for i, t := range ts {
		out[i] = store.Term{Param: t.Param, Value: s.keys.Blind(t.Param, t.Value)}
	}
	return out
}

func (s *Store) blindQuery(q store.Query) *store.Query {
	out := &store.Query{Type: q.Type, All: make([][]store.Match, len(q.All))}
	for i, or := range q.All {
		out.All[i] = make([]store.Match, len(or))
		for j, m := range or {
			out.All[i][j] = store.Match{Param: m.Param, Value: s.keys.Blind(m.Param, m.Value)}
		}
	}
	return out
}

// open decrypts a record's body in place. Terms read back are blind and
// are dropped. A body whose data key was erased reads as store.ErrErased.
func (s *Store) open(ctx context.Context, r *store.Record) error {
	r.Terms = nil
	if r.Deleted {
		return nil
	}
	b, err := s.keys.Open(ctx, name(r.Type, r.ID, r.Version), r.Body)
	if errors.Is(err, keys.ErrErased) {
		return store.ErrErased
	}
	if err != nil {
		return err
	}
	r.Body = b
	if r.Leaf != nil {
		if len(b) < anchor.SaltSize {
			return errors.New("sealed: body shorter than its salt")
		}
		r.Salt, r.Body = b[:anchor.SaltSize:anchor.SaltSize], b[anchor.SaltSize:]
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, k store.Key) (store.Record, error) {
	r, err := s.Store.Get(ctx, k)
	if err != nil {
		return r, err
	}
	return r, s.open(ctx, &r)
}

// GetVersion implements store.Store.
func (s *Store) GetVersion(ctx context.Context, k store.Key, v int64) (store.Record, error) {
	r, err := s.Store.GetVersion(ctx, k, v)
	if err != nil {
		return r, err
	}
	return r, s.open(ctx, &r)
}

// History implements store.Store. Versions sealed under an erased data key
// are left out (they belong to an erased patient; a resource moved out of
// its compartment keeps its later versions).
func (s *Store) History(ctx context.Context, q store.HistoryQuery) ([]store.Record, int, error) {
	rs, total, err := s.Store.History(ctx, q)
	if err != nil {
		return nil, 0, err
	}
	out := rs[:0]
	for i := range rs {
		err := s.open(ctx, &rs[i])
		if errors.Is(err, store.ErrErased) {
			total--
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		out = append(out, rs[i])
	}
	return out, total, nil
}

// Search implements store.Store.
func (s *Store) Search(ctx context.Context, q store.Query) ([]string, error) {
	return s.Store.Search(ctx, *s.blindQuery(q))
}

// Owned returns the ids of the resources of type t whose latest body (for
// a deleted resource, its last body before the delete) is sealed under
// owner's data key. It reads the envelope headers of every stored version
// of t, without decrypting: O(versions of t).
func (s *Store) Owned(ctx context.Context, t, owner string) ([]string, error) {
	want := s.keys.DataKeyID(owner)
	decided := map[string]bool{}
	var out []string
	const page = 1000
	for off := 0; ; off += page {
		// Newest first: versions written meanwhile shift pages forward,
		// so a version may be seen twice but none is skipped.
		rs, _, err := s.Store.History(ctx, store.HistoryQuery{Type: t, Offset: off, Count: page})
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			if decided[r.ID] || r.Deleted {
				continue
			}
			decided[r.ID] = true
			if id, ok := keys.EnvelopeKeyID(r.Body); ok && id == want {
				out = append(out, r.ID)
			}
		}
		if len(rs) < page {
			return out, nil
		}
	}
}
