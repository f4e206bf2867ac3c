package anchor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ethereum/go-ethereum/common"
)

// AnchorerConfig configures an Anchorer.
type AnchorerConfig struct {
	Log   *Log
	Chain Chain
	// Interval: the root is anchored at least this often while the tree
	// grows (default 5s).
	Interval time.Duration
	// Batch: the root is anchored as soon as this many leaves wait
	// (default 10000).
	Batch int64
	// Holder names this process in the anchoring lease, which it renews
	// every LeaseTTL/3 (default 15s): of several processes on one store,
	// only the holder integrates and anchors.
	Holder   string
	LeaseTTL time.Duration
	// Poll is how often the log size is read (default 200ms).
	Poll   time.Duration
	Logger *slog.Logger
}

// Anchorer anchors the log's root on its Chain every interval or batch of
// leaves, whichever comes first, and only when the tree grew. Each anchor
// is recorded in the store once the chain confirmed it; an anchor sent
// before a crash and not recorded is found on chain (Chain.Latest) before
// anything is sent again, so no tree size is anchored twice.
type Anchorer struct {
	cfg    AnchorerConfig
	log    *slog.Logger
	leader atomic.Bool

	mu     sync.Mutex
	status Status
}

// Status is what the Anchorer last saw.
type Status struct {
	Leader       bool
	LogSize      int64 // leaves committed
	AnchoredSize int64 // the latest recorded anchor's tree size
	LastAnchor   time.Time
	LastError    error
}

// NewAnchorer returns an Anchorer; Run starts it.
func NewAnchorer(cfg AnchorerConfig) *Anchorer {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 10000
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 200 * time.Millisecond
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Anchorer{cfg: cfg, log: l}
}

// Status returns what the Anchorer last saw.
func (a *Anchorer) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.Leader = a.leader.Load()
	return s
}

// Run anchors until ctx ends. Errors are logged and retried with backoff.
func (a *Anchorer) Run(ctx context.Context) {
	// Run returns only once the lease goroutine has stopped and Status no
	// longer reports this process as the leader.
	var lease sync.WaitGroup
	defer lease.Wait()
	lease.Go(func() { a.holdLease(ctx) })
	last := time.Now()
	backoff := a.cfg.Poll
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if !a.leader.Load() {
			continue
		}
		anchored, err := a.step(ctx, time.Since(last) >= a.cfg.Interval)
		a.mu.Lock()
		a.status.LastError = err
		a.mu.Unlock()
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.ErrorContext(ctx, "anchoring failed; retrying", "err", logSafe(err))
			backoff = min(2*backoff, 30*time.Second)
			continue
		case anchored:
			last = time.Now()
		}
		backoff = a.cfg.Poll
	}
}

func (a *Anchorer) holdLease(ctx context.Context) {
	t := time.NewTicker(a.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		ok, err := a.cfg.Log.st.Lease(ctx, "anchor", a.cfg.Holder, a.cfg.LeaseTTL)
		if err != nil && ctx.Err() == nil {
			a.log.WarnContext(ctx, "anchoring lease", "err", err)
		}
		if was := a.leader.Swap(ok && err == nil); was != a.leader.Load() {
			a.log.InfoContext(ctx, "anchoring lease", "held", !was)
		}
		select {
		case <-ctx.Done():
			a.leader.Store(false)
			return
		case <-t.C:
		}
	}
}

// Step integrates the log and anchors its root if the tree grew; the
// lease is not checked (Run does). It reports whether it anchored.
func (a *Anchorer) Step(ctx context.Context) (bool, error) { return a.step(ctx, true) }

func (a *Anchorer) step(ctx context.Context, timeUp bool) (bool, error) {
	st := a.cfg.Log.st
	size, err := a.cfg.Log.Integrate(ctx)
	if err != nil {
		return false, err
	}
	recorded, err := latestRecorded(ctx, st)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	a.status.LogSize, a.status.AnchoredSize = size, recorded
	a.mu.Unlock()
	if size <= recorded || (!timeUp && size-recorded < a.cfg.Batch) {
		return false, nil
	}
	// An anchor sent before a crash (or by the previous lease holder) and
	// not recorded: record it instead of sending again.
	onChain, root, err := a.cfg.Chain.Latest(ctx)
	if err != nil {
		return false, err
	}
	if int64(onChain) > recorded {
		if err := a.recover(ctx, int64(onChain), root, size); err != nil {
			return false, err
		}
		if int64(onChain) >= size {
			return false, nil
		}
	}
	newRoot, err := a.cfg.Log.Root(ctx, size)
	if err != nil {
		return false, err
	}
	anc, err := a.cfg.Chain.Anchor(ctx, uint64(size), common.Hash(newRoot))
	if errors.Is(err, ErrNotGrowing) {
		return false, nil // another anchor landed meanwhile: recorded next step
	}
	if err != nil {
		return false, err
	}
	if err := a.record(ctx, anc); err != nil {
		return false, err
	}
	a.log.InfoContext(ctx, "anchored", "treeSize", anc.TreeSize, "block", anc.BlockNumber, "gas", anc.GasUsed)
	return true, nil
}

// recover records the chain's latest anchor after checking its root is
// this log's root at that size.
func (a *Anchorer) recover(ctx context.Context, treeSize int64, root [32]byte, size int64) error {
	if treeSize > size {
		return fmt.Errorf("anchor: the contract holds tree size %d, larger than the log (%d): wrong contract or lost log", treeSize, size)
	}
	ours, err := a.cfg.Log.Root(ctx, treeSize)
	if err != nil {
		return err
	}
	if ours != root {
		return fmt.Errorf("anchor: the contract's root for tree size %d is not this log's: wrong contract or rewritten log", treeSize)
	}
	anc, ok, err := a.cfg.Chain.Find(ctx, uint64(treeSize))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("anchor: no Anchored event for tree size %d", treeSize)
	}
	a.log.InfoContext(ctx, "recorded an anchor found on chain", "treeSize", treeSize)
	return a.record(ctx, anc)
}

// Recorded is an anchor as it is recorded in Storage: the Anchor, and
// when it was recorded (zero in records written before the time was
// kept). It decodes as an Anchor too: the time is one more member.
type Recorded struct {
	Anchor
	RecordedAt time.Time `json:"recordedAt,omitzero"`
}

func (a *Anchorer) record(ctx context.Context, anc Anchor) error {
	b, err := json.Marshal(Recorded{Anchor: anc, RecordedAt: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := a.cfg.Log.st.PutAnchor(ctx, int64(anc.TreeSize), b); err != nil {
		return err
	}
	a.mu.Lock()
	a.status.AnchoredSize, a.status.LastAnchor = int64(anc.TreeSize), time.Now()
	a.mu.Unlock()
	return nil
}

func latestRecorded(ctx context.Context, st Storage) (int64, error) {
	n, _, err := st.LatestAnchor(ctx)
	if errors.Is(err, ErrNoAnchor) {
		return 0, nil
	}
	return n, err
}

// logSafe returns err's text with the URLs of the HTTP calls in it cut
// down to scheme and host: a node's URL often carries an API key in its
// path or query (https://mainnet.example/v3/KEY), or a password.
func logSafe(err error) string {
	msg := err.Error()
	for e := err; e != nil; {
		var ue *url.Error
		if !errors.As(e, &ue) {
			break
		}
		if u, perr := url.Parse(ue.URL); perr == nil && ue.URL != "" {
			msg = strings.ReplaceAll(msg, ue.URL, u.Scheme+"://"+u.Host+"/…")
		}
		e = ue.Err
	}
	return msg
}
