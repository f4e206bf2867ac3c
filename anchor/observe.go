package anchor

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// The calls ObserveChain reports: the Chain methods that reach the chain.
const (
	CallLatest   = "latest"
	CallRootAt   = "root_at"
	CallAnchor   = "anchor"
	CallFind     = "find"
	CallAnchored = "anchored"
)

// ObserveChain returns c reporting every call that reaches the chain to
// observe: the call's name (one of the Call constants), how long it took
// and its error. ChainID and Contract answer locally and are not
// reported. Nothing about the tree (sizes, roots) is reported.
func ObserveChain(c Chain, observe func(call string, took time.Duration, err error)) Chain {
	return &observedChain{c: c, observe: observe}
}

type observedChain struct {
	c       Chain
	observe func(call string, took time.Duration, err error)
}

var _ Chain = (*observedChain)(nil)

func (o *observedChain) done(call string, start time.Time, err error) {
	o.observe(call, time.Since(start), err)
}

func (o *observedChain) ChainID() uint64          { return o.c.ChainID() }
func (o *observedChain) Contract() common.Address { return o.c.Contract() }

func (o *observedChain) Latest(ctx context.Context) (uint64, common.Hash, error) {
	start := time.Now()
	n, root, err := o.c.Latest(ctx)
	o.done(CallLatest, start, err)
	return n, root, err
}

func (o *observedChain) RootAt(ctx context.Context, treeSize uint64) (common.Hash, error) {
	start := time.Now()
	root, err := o.c.RootAt(ctx, treeSize)
	o.done(CallRootAt, start, err)
	return root, err
}

func (o *observedChain) Anchor(ctx context.Context, treeSize uint64, root common.Hash) (Anchor, error) {
	start := time.Now()
	a, err := o.c.Anchor(ctx, treeSize, root)
	o.done(CallAnchor, start, err)
	return a, err
}

func (o *observedChain) Find(ctx context.Context, treeSize uint64) (Anchor, bool, error) {
	start := time.Now()
	a, ok, err := o.c.Find(ctx, treeSize)
	o.done(CallFind, start, err)
	return a, ok, err
}

// Anchored's duration includes fn's.
func (o *observedChain) Anchored(ctx context.Context, fn func(Anchor) error) error {
	start := time.Now()
	err := o.c.Anchored(ctx, fn)
	o.done(CallAnchored, start, err)
	return err
}

// Lag is how far the log is ahead of its latest recorded anchor, as its
// Storage holds it: the same for every process that shares the store,
// whichever holds the anchoring lease.
type Lag struct {
	Size         int64 // leaves committed
	AnchoredSize int64 // the latest recorded anchor's tree size; 0: none
	// LastAnchor is when the latest anchor was recorded; zero when none
	// is, or it was recorded before records kept their time.
	LastAnchor time.Time
	// Oldest is the lastUpdated of the first leaf not anchored (the one
	// that has waited longest); zero when every leaf is anchored.
	Oldest time.Time
}

// Unanchored returns how many committed leaves no recorded anchor covers.
func (g Lag) Unanchored() int64 { return max(g.Size-g.AnchoredSize, 0) }

// Lag reads the log's lag: three small reads (the latest anchor, the log
// size, the first unanchored leaf).
func (l *Log) Lag(ctx context.Context) (Lag, error) {
	var g Lag
	// The anchor first: the size read after it is at least its tree size.
	size, val, err := l.st.LatestAnchor(ctx)
	switch {
	case errors.Is(err, ErrNoAnchor):
	case err != nil:
		return g, err
	default:
		g.AnchoredSize = size
		var rec Recorded
		if json.Unmarshal(val, &rec) == nil {
			g.LastAnchor = rec.RecordedAt
		}
	}
	if g.Size, err = l.st.LogSize(ctx); err != nil {
		return g, err
	}
	if g.Size <= g.AnchoredSize {
		return g, nil
	}
	leaves, err := l.st.Leaves(ctx, g.AnchoredSize, g.AnchoredSize+1)
	if err != nil {
		return g, err
	}
	if len(leaves) == 1 {
		if lf, err := ParseLeaf(leaves[0]); err == nil {
			g.Oldest, _ = time.Parse(time.RFC3339Nano, lf.LastUpdated)
		}
	}
	return g, nil
}
