package gateway

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/store"
)

// change is a version a request is about to store, with what its type's
// commit hook adds to the same atomic commit.
type change struct {
	rec  store.Record   // the version; a tombstone for a delete
	doc  map[string]any // its body, decoded; nil for a delete
	opts store.PutOptions

	// Set by the hook: versions of other resources (a booking's Slots)
	// and cells (a practitioner's calendar) to commit with rec.
	writes []store.Record
	cells  []store.SetCell
	keep   []string // staged blob streams (a Binary's content)
}

// A commitHook adds to c what must be committed atomically with it. It
// reads the current state to do so; when that state changes before the
// commit, commit runs it again. An error it returns is the request's.
type commitHook func(r *http.Request, c *change) error

// hookAttempts bounds how often commit re-runs a hook whose state kept
// changing under it.
const hookAttempts = 100

var errContended = &HTTPError{Status: http.StatusServiceUnavailable, Code: fhir.CodeTransient,
	Msg: "too many concurrent changes to the same records; retry", Header: http.Header{"Retry-After": {"1"}}}

// commit stores c.rec, atomically with what the hook of its type adds,
// and records the hook's versions as written by the request (the caller
// records c.rec). A conflict on c.rec itself is returned
// (store.ErrConflict, store.ErrExists); one on what the hook read runs
// the hook again.
func (s *Server) commit(r *http.Request, c *change) error {
	hook := s.hooks[c.rec.Type]
	if hook == nil {
		return s.store.Put(r.Context(), c.rec, c.opts)
	}
	for attempt := 1; ; attempt++ {
		c.writes, c.cells, c.keep = nil, nil, nil
		if err := hook(r, c); err != nil {
			return err
		}
		cm := store.Commit{Writes: []store.Write{{Record: c.rec, IfNoneMatch: c.opts.IfNoneMatch}}, Cells: c.cells, Keep: c.keep}
		for _, w := range c.writes {
			cm.Writes = append(cm.Writes, store.Write{Record: w})
		}
		err := s.store.Commit(r.Context(), cm)
		var we *store.WriteError
		switch {
		case err == nil:
			for _, w := range c.writes {
				comps, err := s.compartmentsOf(w, nil, s.base(r))
				if err != nil {
					return err
				}
				s.written(r, w, comps)
			}
			return nil
		case errors.As(err, &we) && we.Index == 0:
			return we.Err
		case !errors.Is(err, store.ErrConflict):
			return err
		case attempt == hookAttempts:
			return errContended
		}
		// Someone else changed what the hook read: step aside a little
		// (more, the more often it happened) and look again.
		time.Sleep(time.Duration(rand.Int64N(int64(attempt)*int64(time.Millisecond) + 1)))
	}
}

// pending is what a transaction has staged but not committed yet: the
// versions and cells its earlier entries change. Commit hooks read
// through it (current, cell), so that a later entry sees the earlier
// ones: two appointments of one transaction cannot double-book.
type pending struct {
	recs map[store.Key]store.Record
	// cells hold the staged value with the version read from the store,
	// which is what the commit's compare-and-set expects.
	cells map[string]store.Cell
	// blobs are the Binary contents the transaction's entries streamed to
	// the store, by cell id; what its commit does not keep is dropped.
	blobs map[string]*stagedBlob
}

type pendingKey struct{}

func pendingFrom(r *http.Request) *pending {
	p, _ := r.Context().Value(pendingKey{}).(*pending)
	return p
}

// current returns the current version of k: a transaction's staged one,
// else the stored one.
func (s *Server) current(r *http.Request, k store.Key) (store.Record, error) {
	if p := pendingFrom(r); p != nil {
		if rec, ok := p.recs[k]; ok {
			return rec, nil
		}
	}
	return s.store.Get(r.Context(), k)
}

// cell returns cell id: a transaction's staged value, else the stored one.
func (s *Server) cell(r *http.Request, id string) (store.Cell, error) {
	if p := pendingFrom(r); p != nil {
		if c, ok := p.cells[id]; ok {
			return c, nil
		}
	}
	return s.store.GetCell(r.Context(), id)
}
