package anchor_test

import (
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
)

// calls records what ObserveChain reports.
type calls struct {
	mu  sync.Mutex
	got []string
	err map[string]error
}

func (c *calls) observe(call string, took time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if took <= 0 {
		call += "(no duration)"
	}
	c.got = append(c.got, call)
	if err != nil {
		if c.err == nil {
			c.err = map[string]error{}
		}
		c.err[call] = err
	}
}

func (c *calls) take() ([]string, map[string]error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	got, err := c.got, c.err
	c.got, c.err = nil, nil
	return got, err
}

// TestObserveChain: every call that reaches the chain is reported once,
// by name, with its duration and error, and answers as the chain does.
func TestObserveChain(t *testing.T) {
	st, log := boltLog(t)
	sim := anchortest.Simulated(t, nil)
	inner := sim.Chain(t, sim.Key)
	var c calls
	chain := anchor.ObserveChain(inner, c.observe)
	if chain.ChainID() != inner.ChainID() || chain.Contract() != inner.Contract() {
		t.Fatalf("ChainID, Contract differ from the chain's")
	}

	writeVersions(t, st, 0, 4)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: chain})
	if ok, err := a.Step(t.Context()); !ok || err != nil {
		t.Fatalf("Step = %v, %v", ok, err)
	}
	if got, errs := c.take(); !slices.Equal(got, []string{anchor.CallLatest, anchor.CallAnchor}) || errs != nil {
		t.Fatalf("a Step reported %v, errors %v; want [latest anchor]", got, errs)
	}

	root, err := chain.RootAt(t.Context(), 4)
	if want, _ := inner.RootAt(t.Context(), 4); err != nil || root != want || root == (common.Hash{}) {
		t.Fatalf("RootAt(4) = %x, %v; want %x", root, err, want)
	}
	if anc, ok, err := chain.Find(t.Context(), 4); !ok || err != nil || anc.TreeSize != 4 {
		t.Fatalf("Find(4) = %+v, %v, %v", anc, ok, err)
	}
	if sizes := anchortest.Sizes(t, chain); !slices.Equal(sizes, []uint64{4}) {
		t.Fatalf("Anchored sizes %v", sizes)
	}
	// A tree size that does not grow: the chain's error, reported as is.
	if _, err := chain.Anchor(t.Context(), 4, root); !errors.Is(err, anchor.ErrNotGrowing) {
		t.Fatalf("Anchor(4) again = %v, want ErrNotGrowing", err)
	}
	got, errs := c.take()
	if want := []string{anchor.CallRootAt, anchor.CallFind, anchor.CallAnchored, anchor.CallAnchor}; !slices.Equal(got, want) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	if len(errs) != 1 || !errors.Is(errs[anchor.CallAnchor], anchor.ErrNotGrowing) {
		t.Fatalf("reported errors %v, want anchor: ErrNotGrowing", errs)
	}
}

// TestObserveLogLag: Log.Lag reads the log size, the latest recorded
// anchor with its recorded time, and the time of the first unanchored
// leaf; an anchor recorded without a time (before records kept it) still
// counts.
func TestObserveLogLag(t *testing.T) {
	st, log := boltLog(t)
	ctx := t.Context()
	lag := func() anchor.Lag {
		t.Helper()
		g, err := log.Lag(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	if g := lag(); g != (anchor.Lag{}) || g.Unanchored() != 0 {
		t.Fatalf("empty log: %+v", g)
	}
	// writeVersions stamps version i at 2026-01-01T00:00:i.
	writeVersions(t, st, 0, 5)
	if g := lag(); g.Size != 5 || g.AnchoredSize != 0 || g.Unanchored() != 5 || !g.LastAnchor.IsZero() ||
		!g.Oldest.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("5 leaves, none anchored: %+v", g)
	}

	sim := anchortest.Simulated(t, nil)
	a := anchor.NewAnchorer(anchor.AnchorerConfig{Log: log, Chain: sim.Chain(t, sim.Key)})
	before := time.Now()
	if ok, err := a.Step(ctx); !ok || err != nil {
		t.Fatalf("Step = %v, %v", ok, err)
	}
	g := lag()
	if g.Size != 5 || g.AnchoredSize != 5 || g.Unanchored() != 0 || !g.Oldest.IsZero() ||
		g.LastAnchor.Before(before.Add(-time.Second)) || g.LastAnchor.After(time.Now().Add(time.Second)) {
		t.Fatalf("all anchored: %+v (step at %v)", g, before)
	}
	// The record still reads as an Anchor (receipts, $log).
	_, val, err := st.LatestAnchor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var anc anchor.Anchor
	if err := json.Unmarshal(val, &anc); err != nil || anc.TreeSize != 5 || anc.TxHash == (common.Hash{}) {
		t.Fatalf("recorded anchor %s as Anchor: %+v, %v", val, anc, err)
	}

	writeVersions(t, st, 5, 3)
	if g := lag(); g.Size != 8 || g.AnchoredSize != 5 || g.Unanchored() != 3 || !g.Oldest.Equal(time.Date(2026, 1, 1, 0, 0, 5, 0, time.UTC)) {
		t.Fatalf("3 more leaves: %+v", g)
	}

	// An anchor recorded in the older form: a bare Anchor, no time.
	anc.TreeSize = 8
	old, _ := json.Marshal(anc)
	if err := st.PutAnchor(ctx, 8, old); err != nil {
		t.Fatal(err)
	}
	if g := lag(); g.AnchoredSize != 8 || g.Unanchored() != 0 || !g.LastAnchor.IsZero() {
		t.Fatalf("after an anchor recorded without time: %+v", g)
	}
}
