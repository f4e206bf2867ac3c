package anchor_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
	"github.com/fhirgate/fhirgate/internal/store/redisstore"
	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
)

// TestOneAnchorerPerRedis runs two gateways' Anchorers on one Redis: one
// log, exactly one of them anchoring at a time, and the other taking over
// when the first stops.
func TestOneAnchorerPerRedis(t *testing.T) {
	srv := redistest.Start(t)
	c := anchortest.Simulated(t, nil)
	type proc struct {
		st     *redisstore.Store
		a      *anchor.Anchorer
		cancel context.CancelFunc
		done   sync.WaitGroup
	}
	var procs [2]*proc
	for i := range procs {
		st, err := redisstore.New(t.Context(), redisstore.Config{URL: srv.URL(), Prefix: "lease"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		p := &proc{st: st}
		p.a = anchor.NewAnchorer(anchor.AnchorerConfig{
			Log: anchor.NewLog(st), Chain: c.Chain(t, c.Key), Interval: 50 * time.Millisecond,
			Poll: 20 * time.Millisecond, LeaseTTL: 600 * time.Millisecond, Holder: string(rune('a' + i)),
		})
		ctx, cancel := context.WithCancel(t.Context())
		p.cancel = cancel
		p.done.Go(func() { p.a.Run(ctx) })
		t.Cleanup(func() { cancel(); p.done.Wait() })
		procs[i] = p
	}
	leader := func() int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			l0, l1 := procs[0].a.Status().Leader, procs[1].a.Status().Leader
			if l0 != l1 {
				if l0 {
					return 0
				}
				return 1
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("not exactly one leader")
		return -1
	}
	waitAnchored := func(p *proc, want int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p.a.Status().AnchoredSize < want {
			if time.Now().After(deadline) {
				t.Fatalf("anchored %d, want %d", p.a.Status().AnchoredSize, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Both processes write into the one log.
	writeVersions(t, procs[0].st, 0, 5)
	writeVersions(t, procs[1].st, 5, 5)
	first := leader()
	waitAnchored(procs[first], 10)
	if other := procs[1-first].a.Status(); other.Leader || other.AnchoredSize != 0 {
		t.Fatalf("the other process anchors too: %+v", other)
	}
	// The leader dies; its lease runs out and the other takes over.
	procs[first].cancel()
	procs[first].done.Wait()
	writeVersions(t, procs[1-first].st, 10, 3)
	if l := leader(); l != 1-first {
		t.Fatalf("leader %d after %d stopped", l, first)
	}
	waitAnchored(procs[1-first], 13)
	// One tree size per anchor, growing.
	sizes := anchortest.Sizes(t, c.Chain(t, nil))
	if sizes[len(sizes)-1] != 13 {
		t.Fatalf("anchored sizes %v, want the last 13", sizes)
	}
}
