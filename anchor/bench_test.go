package anchor_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/internal/store/boltstore"
	"golang.org/x/mod/sumdb/tlog"
)

// appendVersions commits n versions with leaves through st from 16
// writers and returns the rate.
func appendVersions(tb testing.TB, st store.Store, prefix string, n int) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	body := []byte(`{"resourceType":"Basic","code":{"text":"x"}}`)
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				id := prefix + strconv.FormatInt(i, 10)
				leaf, salt, err := anchor.NewLeaf("Basic", id, "1", "2026-01-01T00:00:00.000Z", body)
				if err != nil {
					tb.Error(err)
					return
				}
				r := store.Record{Type: "Basic", ID: id, Version: 1, Updated: time.Now(), Body: body, Leaf: leaf.Encode(), Salt: salt}
				if err := st.Put(context.Background(), r, store.PutOptions{}); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkLeafAppend: versions committed with their leaves per second on
// the embedded store (16 writers; each Put is one fsynced bbolt batch).
func BenchmarkLeafAppend(b *testing.B) {
	st, err := boltstore.New(b.Context(), boltstore.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	b.ResetTimer()
	rate := appendVersions(b, st, fmt.Sprintf("b%d-", b.N), b.N)
	b.ReportMetric(rate, "leaves/s")
}

// BenchmarkIntegrate: tree hashes computed and stored per leaf.
func BenchmarkIntegrate(b *testing.B) {
	st, err := boltstore.New(b.Context(), boltstore.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	appendVersions(b, st, "i", b.N)
	b.ResetTimer()
	if _, err := anchor.NewLog(st).Integrate(b.Context()); err != nil {
		b.Fatal(err)
	}
}

var (
	millionOnce sync.Once
	million     *boltstore.Store
)

// BenchmarkProofAt1M: an inclusion proof, a consistency proof and a root
// in a log of 1,000,000 leaves on the embedded store (built once, in
// FHIRGATE_BENCH_DIR if set so later runs reuse it).
func BenchmarkProofAt1M(b *testing.B) {
	const n = 1_000_000
	millionOnce.Do(func() {
		dir := os.Getenv("FHIRGATE_BENCH_DIR")
		if dir == "" {
			dir, _ = os.MkdirTemp("", "fhirgate-1m")
		}
		st, err := boltstore.New(context.Background(), boltstore.Config{Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		if size, _ := st.LogSize(context.Background()); size < n {
			rate := appendVersions(b, st, "m", n-int(size))
			b.Logf("appended %d versions with leaves at %.0f/s", n-size, rate)
		}
		start := time.Now()
		if _, err := anchor.NewLog(st).Integrate(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Logf("integrated in %v", time.Since(start))
		million = st
	})
	log := anchor.NewLog(million)
	ctx := b.Context()
	root, err := log.Root(ctx, n)
	if err != nil {
		b.Fatal(err)
	}
	leaves, err := million.Leaves(ctx, 0, n)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("inclusion", func(b *testing.B) {
		for i := range b.N {
			idx := int64(i*7919) % n
			p, err := log.InclusionProof(ctx, idx, n)
			if err != nil {
				b.Fatal(err)
			}
			if err := tlog.CheckRecord(p, n, root, idx, tlog.RecordHash(leaves[idx])); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("consistency", func(b *testing.B) {
		for i := range b.N {
			if _, err := log.ConsistencyProof(ctx, int64(1+i*7919%(n-1)), n); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("root", func(b *testing.B) {
		for i := range b.N {
			if _, err := log.Root(ctx, int64(n-i%1000)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
