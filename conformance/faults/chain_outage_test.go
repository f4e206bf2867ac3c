//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/ethclient"

	"github.com/fhirgate/fhirgate/internal/chaintest"
)

const chainOutage = 60 * time.Second

// gethNode is `geth --dev` (a block per transaction) with its chain in a
// data directory, serving JSON-RPC on a fixed loopback address: stopped
// and started again, it keeps its chain.
type gethNode struct {
	t      *testing.T
	bin    string
	dir    string
	addr   string
	logDir string
	p      *proc
	starts int
}

func newGeth(t *testing.T) *gethNode {
	bin, err := chaintest.FindGeth()
	need(t, "geth (make geth)", err)
	n := &gethNode{t: t, bin: bin, dir: t.TempDir(), addr: freeAddr(t), logDir: t.TempDir()}
	t.Cleanup(func() {
		if n.p != nil && !n.p.exited() {
			n.p.stop(30 * time.Second)
		}
		if t.Failed() && n.p != nil {
			t.Logf("geth log (last lines):\n%s", n.p.tail(20))
		}
	})
	return n
}

func (n *gethNode) url() string { return "http://" + n.addr }

// start starts geth and waits until it answers eth_chainId.
func (n *gethNode) start() {
	n.t.Helper()
	n.starts++
	port := n.addr[strings.LastIndexByte(n.addr, ':')+1:]
	n.p = startProc(n.t, "geth", filepath.Join(n.logDir, fmt.Sprintf("geth-%d.log", n.starts)), n.bin,
		"--dev", "--dev.period", "0",
		"--http", "--http.addr", "127.0.0.1", "--http.port", port, "--http.api", "eth,net,web3",
		"--datadir", n.dir, "--nodiscover", "--maxpeers", "0", "--ipcdisable")
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(n.t.Context(), 2*time.Second)
		c, err := ethclient.DialContext(ctx, n.url())
		if err == nil {
			_, err = c.ChainID(ctx)
			c.Close()
		}
		cancel()
		if err == nil {
			return
		}
		if n.p.exited() || time.Now().After(deadline) {
			n.t.Fatalf("geth did not answer: %v\n%s", err, n.p.tail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop stops geth cleanly (SIGTERM): geth --dev writes its state to disk
// only then; after a SIGKILL it restarts with its chain gone.
func (n *gethNode) stop() { n.p.stop(30 * time.Second) }

// readiness is the /readyz answer.
type readiness struct {
	Status string `json:"status"`
	Store  struct {
		OK bool `json:"ok"`
	} `json:"store"`
	Anchoring struct {
		Enabled                bool     `json:"enabled"`
		TreeSize               int64    `json:"tree_size"`
		AnchoredSize           int64    `json:"anchored_size"`
		UnanchoredLeaves       int64    `json:"unanchored_leaves"`
		SecondsSinceLastAnchor *float64 `json:"seconds_since_last_anchor"`
		Lagging                bool     `json:"lagging"`
		LastError              string   `json:"last_error"`
	} `json:"anchoring"`
}

func readyz(ctx context.Context, base string) (int, readiness, error) {
	var rd readiness
	c := newClient(base, "", 10*time.Second)
	r, err := c.do(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return 0, rd, err
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return r.status, rd, fmt.Errorf("/readyz Content-Type %q, want application/json: %v", ct, r)
	}
	if err := json.Unmarshal(r.body, &rd); err != nil {
		return r.status, rd, fmt.Errorf("/readyz: %v: %v", err, r)
	}
	return r.status, rd, nil
}

// TestChainOutage runs the gateway against an external chain node it does
// not own, a real `geth --dev`, and stops the node (SIGTERM) for 60 s
// while writes go on, then starts it again on the same port and data
// directory: the writes keep succeeding (201), /readyz reports the lag
// (200, status degraded, lagging, unanchored leaves growing), /metrics
// has the lag gauges, and once the node is back anchoring catches up
// (unanchored_leaves reaches 0) and the receipts of the writes made during
// the outage verify against the node's chain.
func TestChainOutage(t *testing.T) {
	t.Parallel() // mostly waiting: runs beside another test
	node := newGeth(t)
	node.start()
	keyFile := filepath.Join(t.TempDir(), "chain.key")
	if err := os.WriteFile(keyFile, []byte(chaintest.DeveloperKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(fhirgateBin, "anchor", "deploy", "--chain-rpc", node.url(), "--chain-key-file", keyFile, "--chain-id", strconv.Itoa(chaintest.GethChainID)).Output()
	if err != nil {
		t.Fatalf("anchor deploy: %v", err)
	}
	contract := strings.TrimSpace(string(out))
	dir := t.TempDir()
	g := newGateway(t, "gateway", "--data-dir", dir, "--chain-rpc", node.url(), "--chain-key-file", keyFile,
		"--anchor-contract", contract, "--chain-id", strconv.Itoa(chaintest.GethChainID), "--anchor-interval", "500ms", "--anchor-max-lag", "10s")
	g.start()
	c := newClient(g.base()+"/fhir", devToken(t, dir), 30*time.Second)
	ctx := t.Context()

	type write struct {
		at   time.Time
		v    version
		took time.Duration
	}
	var (
		mu       sync.Mutex
		writes   []write
		failures int
	)
	wctx, stopWrites := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; wctx.Err() == nil; i++ {
				r, err := c.do(wctx, http.MethodPost, "Patient", []byte(patientJSON("", fmt.Sprintf("chain-%d-%d", w, i), "chain", "", "Chain")))
				if wctx.Err() != nil {
					return
				}
				mu.Lock()
				if err != nil || r.status != http.StatusCreated {
					if failures++; failures <= 5 {
						t.Errorf("write %v after the start: %v %v", time.Now().Format(time.StampMilli), r, err)
					}
				} else {
					var p struct{ ID string }
					json.Unmarshal(r.body, &p)
					writes = append(writes, write{time.Now(), version{typ: "Patient", id: p.ID, ver: 1, body: r.body}, r.took})
				}
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	type probe struct {
		at     time.Time
		status int
		rd     readiness
		err    error
	}
	var probes []probe
	pctx, stopProbes := context.WithCancel(ctx)
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		for pctx.Err() == nil {
			status, rd, err := readyz(pctx, g.base())
			if pctx.Err() != nil {
				return
			}
			mu.Lock()
			probes = append(probes, probe{time.Now(), status, rd, err})
			mu.Unlock()
			time.Sleep(500 * time.Millisecond)
		}
	}()

	time.Sleep(3 * time.Second)
	stopped := time.Now()
	node.stop()
	// Halfway through, /metrics must show the lag.
	time.Sleep(chainOutage / 2)
	metrics, err := newClient(g.base(), "", 10*time.Second).do(ctx, http.MethodGet, g.base()+"/metrics", nil)
	if err != nil {
		t.Error(err)
	}
	for _, m := range []string{"fhirgate_anchor_unanchored_leaves", "fhirgate_anchor_seconds_since_last"} {
		if !strings.Contains(string(metrics.body), "\n"+m) {
			t.Errorf("/metrics has no %s during the chain outage", m)
		}
	}
	time.Sleep(time.Until(stopped.Add(chainOutage)))
	node.start()
	restarted := time.Now()
	time.Sleep(5 * time.Second)
	stopWrites()
	wg.Wait()
	writesStopped := time.Now()

	// Anchoring catches up: every leaf anchored.
	var caughtUp time.Time
	var last readiness
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		status, rd, err := readyz(ctx, g.base())
		if err == nil && status == http.StatusOK && rd.Anchoring.UnanchoredLeaves == 0 && rd.Anchoring.TreeSize > 0 {
			caughtUp = time.Now()
			last = rd
			break
		}
		last = rd
	}
	stopProbes()
	<-probesDone
	if caughtUp.IsZero() {
		t.Fatalf("anchoring did not catch up within 2 min of the writes stopping: last /readyz %+v\n%s", last, g.p.tail(20))
	}

	// (The writers and the probes have stopped.)
	// /readyz during the outage: 200, degraded and lagging once the lag
	// passed --anchor-max-lag (10 s), the unanchored leaves growing.
	var (
		degraded, wrong    int
		maxUnanchored      int64
		maxSince           float64
		sawError, sawReady bool
	)
	for _, p := range probes {
		if p.err != nil {
			if wrong++; wrong <= 3 {
				t.Errorf("/readyz %v after the node stopped: %v", p.at.Sub(stopped).Round(time.Millisecond), p.err)
			}
			continue
		}
		if p.at.Before(stopped) && p.rd.Status == "ready" && p.rd.Anchoring.Enabled {
			sawReady = true
		}
		if !p.at.After(stopped.Add(15*time.Second)) || !p.at.Before(restarted) {
			continue
		}
		a := p.rd.Anchoring
		if p.status != http.StatusOK || p.rd.Status != "degraded" || !a.Lagging || !p.rd.Store.OK || a.UnanchoredLeaves <= 0 {
			if wrong++; wrong <= 3 {
				t.Errorf("/readyz %v into the chain outage: %d %+v; want 200, degraded, lagging, unanchored leaves", p.at.Sub(stopped).Round(time.Second), p.status, p.rd)
			}
			continue
		}
		degraded++
		maxUnanchored = max(maxUnanchored, a.UnanchoredLeaves)
		if a.SecondsSinceLastAnchor != nil {
			maxSince = max(maxSince, *a.SecondsSinceLastAnchor)
		}
		sawError = sawError || a.LastError != ""
	}
	if !sawReady {
		t.Error("/readyz never said ready (anchoring enabled) before the outage")
	}
	if degraded == 0 {
		t.Error("/readyz never reported the anchoring lag during the outage")
	}
	if !sawError {
		t.Error("/readyz never reported an anchoring error (last_error) during the outage")
	}
	// Writes went on, and their receipts verify.
	var during []version
	var worstDuring time.Duration
	for _, w := range writes {
		if w.at.After(stopped) && w.at.Before(restarted) {
			during = append(during, w.v)
			worstDuring = max(worstDuring, w.took)
		}
	}
	if len(during) == 0 {
		t.Fatal("no write was acknowledged during the chain outage")
	}
	all := make([]version, len(writes))
	for i, w := range writes {
		all[i] = w.v
	}
	chain := openChain(t, node.url(), contract)
	verified := verifyReceipts(t, c, chain, all, time.Minute)
	t.Logf("chain node stopped (SIGTERM) for %v: %d writes acknowledged during the outage (worst %v), %d failed; /readyz degraded ×%d, up to %d unanchored leaves and %.0f s since the last anchor",
		chainOutage, len(during), worstDuring.Round(time.Millisecond), failures, degraded, maxUnanchored, maxSince)
	t.Logf("anchoring caught up %v after the node restarted (%v after the writes stopped; tree size %s); %d receipts of %d writes verified, %d of them made during the outage",
		caughtUp.Sub(restarted).Round(time.Millisecond), caughtUp.Sub(writesStopped).Round(time.Millisecond),
		strconv.FormatInt(last.Anchoring.TreeSize, 10), verified, len(all), len(during))
}
