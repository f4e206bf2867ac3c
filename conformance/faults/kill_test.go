//go:build faults

package faults

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
)

const (
	killRounds  = 10
	killWorkers = 4
)

// TestKillUnderLoad kills the gateway with SIGKILL at random moments under
// a mixed write load (creates, updates, deletes, transactions, reads), 10
// rounds, and restarts it each time on the same store: on the embedded
// bbolt store and on Redis (appendonly yes). After each restart every
// write acknowledged so far in the round is read back (at its version, or
// the next for a write in flight at the kill; deletes stay deleted) and
// searches by the identifiers written return exactly the live resources.
// At the end every resource is checked again, every acknowledged version's
// receipt verifies against the chain's root, no leaf is shared, and the
// stopped store is opened to check its index, live set and log.
func TestKillUnderLoad(t *testing.T) {
	t.Parallel() // two at a time (-parallel defaults to GOMAXPROCS)
	t.Run("bolt", func(t *testing.T) {
		dir := t.TempDir()
		chainAddr := freeAddr(t)
		g := newGateway(t, "gateway", "--data-dir", dir, "--chain-listen", chainAddr, "--anchor-interval", "200ms")
		killUnderLoad(t, g, dir, chainAddr, func() { checkBoltStore(t, dir) })
	})
	t.Run("redis", func(t *testing.T) {
		srv, err := redistest.StartServer(t.TempDir())
		need(t, "redis-server", err)
		t.Cleanup(srv.Stop)
		dir := t.TempDir()
		chainAddr := freeAddr(t)
		g := newGateway(t, "gateway", "--redis-url", srv.URL(), "--kek-file", keysInit(t), "--data-dir", dir,
			"--chain-listen", chainAddr, "--anchor-interval", "200ms")
		killUnderLoad(t, g, dir, chainAddr, func() { checkRedisStore(t, srv.URL()) })
	})
}

func killUnderLoad(t *testing.T, g *gateway, dir, chainAddr string, checkStore func()) {
	started := time.Now()
	c := newClient(g.base()+"/fhir", devToken(t, dir), 60*time.Second)
	l := newLedger(t)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var killedAfter []time.Duration
	for round := range killRounds {
		g.start()
		if round > 0 {
			l.check(t.Context(), c, false)
			if t.Failed() {
				t.Fatalf("round %d: acknowledged writes lost or the index is wrong after the restart", round)
			}
		}
		l.mu.Lock()
		before := len(l.acked)
		l.mu.Unlock()
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for n := range killWorkers {
			w := l.worker(c, n, round)
			wg.Go(func() { w.run(ctx) })
		}
		// Kill at a random moment once the round has had writes through.
		roundStart := time.Now()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			l.mu.Lock()
			n := len(l.acked)
			l.mu.Unlock()
			if n > before {
				break
			}
		}
		time.Sleep(time.Duration(200+rnd.IntN(1300)) * time.Millisecond)
		// SIGKILL, and the workers stop at once: no request is sent to
		// the dead gateway after the ones in flight.
		g.p.cmd.Process.Kill()
		killedAfter = append(killedAfter, time.Since(roundStart).Round(10*time.Millisecond))
		cancel()
		wg.Wait()
		g.kill() // waits for the exit
		l.endRound()
	}
	g.start()
	finalStart := time.Now()
	l.check(t.Context(), c, true)
	t.Logf("final check took %v", time.Since(finalStart).Round(time.Millisecond))
	l.mu.Lock()
	versions := append([]version(nil), l.acked...)
	resources := len(l.res)
	l.mu.Unlock()
	if len(versions) == 0 {
		t.Fatal("no write was acknowledged")
	}
	contract, err := os.ReadFile(filepath.Join(dir, "chain", "anchor-contract"))
	if err != nil {
		t.Fatal(err)
	}
	chain := openChain(t, "http://"+chainAddr, string(contract))
	verifyStart := time.Now()
	verified := verifyReceipts(t, c, chain, versions, 90*time.Second)
	verifyTook := time.Since(verifyStart)
	g.kill()
	checkStart := time.Now()
	checkStore()
	t.Logf("white-box check took %v", time.Since(checkStart).Round(time.Millisecond))
	t.Logf("%d rounds, killed after %v; %d acknowledged versions of %d resources (%d transactions); %s",
		killRounds, killedAfter, len(versions), resources, l.txs, l.stats.String())
	t.Logf("%d receipts verified against the chain's roots in %v; %v in all", verified, verifyTook.Round(time.Millisecond), time.Since(started).Round(time.Second))
}
