package store

import (
	"context"
	"time"
)

// The operations Observe reports: the Store methods, in snake case.
const (
	OpPut        = "put"
	OpCommit     = "commit"
	OpGetCell    = "get_cell"
	OpGet        = "get"
	OpGetVersion = "get_version"
	OpHistory    = "history"
	OpSearch     = "search"
	OpErase      = "erase"
	OpGetKey     = "get_key"
	OpPutKey     = "put_key"
	OpScanKeys   = "scan_keys"
	OpPing       = "ping"
)

// Observed is a Store that reports every call to a func: the operation
// (one of the Op constants), how long it took and its error. Nothing of
// what the call read or wrote is reported. Close is not reported.
type Observed struct {
	st      Store
	observe func(op string, took time.Duration, err error)
}

var _ Store = (*Observed)(nil)

// Observe returns st reporting its calls to observe.
func Observe(st Store, observe func(op string, took time.Duration, err error)) *Observed {
	return &Observed{st: st, observe: observe}
}

// Unwrap returns the observed store.
func (o *Observed) Unwrap() Store { return o.st }

func (o *Observed) done(op string, start time.Time, err error) {
	o.observe(op, time.Since(start), err)
}

// Put implements Store.
func (o *Observed) Put(ctx context.Context, r Record, opts PutOptions) error {
	start := time.Now()
	err := o.st.Put(ctx, r, opts)
	o.done(OpPut, start, err)
	return err
}

// Commit implements Store.
func (o *Observed) Commit(ctx context.Context, c Commit) error {
	start := time.Now()
	err := o.st.Commit(ctx, c)
	o.done(OpCommit, start, err)
	return err
}

// GetCell implements Store.
func (o *Observed) GetCell(ctx context.Context, id string) (Cell, error) {
	start := time.Now()
	c, err := o.st.GetCell(ctx, id)
	o.done(OpGetCell, start, err)
	return c, err
}

// Get implements Store.
func (o *Observed) Get(ctx context.Context, k Key) (Record, error) {
	start := time.Now()
	r, err := o.st.Get(ctx, k)
	o.done(OpGet, start, err)
	return r, err
}

// GetVersion implements Store.
func (o *Observed) GetVersion(ctx context.Context, k Key, v int64) (Record, error) {
	start := time.Now()
	r, err := o.st.GetVersion(ctx, k, v)
	o.done(OpGetVersion, start, err)
	return r, err
}

// History implements Store.
func (o *Observed) History(ctx context.Context, q HistoryQuery) ([]Record, int, error) {
	start := time.Now()
	rs, n, err := o.st.History(ctx, q)
	o.done(OpHistory, start, err)
	return rs, n, err
}

// Search implements Store.
func (o *Observed) Search(ctx context.Context, q Query) ([]string, error) {
	start := time.Now()
	ids, err := o.st.Search(ctx, q)
	o.done(OpSearch, start, err)
	return ids, err
}

// Erase implements Store.
func (o *Observed) Erase(ctx context.Context, k Key) error {
	start := time.Now()
	err := o.st.Erase(ctx, k)
	o.done(OpErase, start, err)
	return err
}

// GetKey implements Store.
func (o *Observed) GetKey(ctx context.Context, id string) ([]byte, error) {
	start := time.Now()
	v, err := o.st.GetKey(ctx, id)
	o.done(OpGetKey, start, err)
	return v, err
}

// PutKey implements Store.
func (o *Observed) PutKey(ctx context.Context, id string, old, val []byte) error {
	start := time.Now()
	err := o.st.PutKey(ctx, id, old, val)
	o.done(OpPutKey, start, err)
	return err
}

// ScanKeys implements Store; the duration includes fn's.
func (o *Observed) ScanKeys(ctx context.Context, fn func(id string, val []byte) error) error {
	start := time.Now()
	err := o.st.ScanKeys(ctx, fn)
	o.done(OpScanKeys, start, err)
	return err
}

// Ping implements Store.
func (o *Observed) Ping(ctx context.Context) error {
	start := time.Now()
	err := o.st.Ping(ctx)
	o.done(OpPing, start, err)
	return err
}

// Close implements Store.
func (o *Observed) Close() error { return o.st.Close() }
