package evm_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/eth/ethconfig"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
	"github.com/ethereum/go-ethereum/node"
	"github.com/ethereum/go-ethereum/params"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
)

// newSimulated returns an in-process chain and a key funded on it. The
// chain follows config, or the rules of geth --dev when config is nil.
func newSimulated(t testing.TB, config *params.ChainConfig) (*simulated.Backend, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	funds := new(big.Int).Mul(big.NewInt(1000), big.NewInt(1e18))
	sim := simulated.NewBackend(types.GenesisAlloc{crypto.PubkeyToAddress(key.PublicKey): {Balance: funds}},
		func(_ *node.Config, eth *ethconfig.Config) {
			if config != nil {
				eth.Genesis.Config = config
			}
		})
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Errorf("closing simulated backend: %v", err)
		}
	})
	return sim, key
}

// osaka returns the dev chain rules without the forks after Osaka, the
// mainnet fork: Bogota's state-gas metering (EIP-8037, enabled by geth
// --dev and the simulated backend) makes a fresh storage slot far dearer.
func osaka() *params.ChainConfig {
	c := *params.AllDevChainProtocolChanges
	c.AmsterdamTime, c.BogotaTime = nil, nil
	return &c
}

func TestSimulated(t *testing.T) {
	sim, key := newSimulated(t, nil)
	runChainSuite(t, sim.Client(), key, func() { sim.Commit() })
}

// maxAnchorGas is the gas budget of one anchor transaction under the
// rules of Osaka, the current mainnet fork.
const maxAnchorGas = 60_000

// TestAnchorGas measures the gas of anchor transactions. It bounds it
// under Osaka rules and only logs it under those of geth --dev, whose
// Bogota fork meters state growth (EIP-8037).
func TestAnchorGas(t *testing.T) {
	for _, test := range []struct {
		name   string
		config *params.ChainConfig
		max    uint64
	}{
		{"osaka", osaka(), maxAnchorGas},
		{"dev", nil, 0},
	} {
		t.Run(test.name, func(t *testing.T) {
			sim, key := newSimulated(t, test.config)
			mine(t, func() { sim.Commit() })
			addr, _, err := evm.Deploy(t.Context(), sim.Client(), key, 0)
			if err != nil {
				t.Fatalf("Deploy: %v", err)
			}
			chain := newChain(t, evm.Config{Client: sim.Client(), Key: key, Contract: addr})
			for size := uint64(1); size <= 3; size++ {
				a, err := chain.Anchor(t.Context(), size, rootFor(size))
				if err != nil {
					t.Fatalf("Anchor(%d): %v", size, err)
				}
				t.Logf("%s: Anchor(%d) used %d gas", test.name, size, a.GasUsed)
				if test.max > 0 && a.GasUsed > test.max {
					t.Errorf("Anchor(%d) used %d gas, want at most %d", size, a.GasUsed, test.max)
				}
			}
		})
	}
}

// TestReorg mines the anchor transaction, forks it away before it has its
// confirmations and checks that Anchor follows it into the new chain.
func TestReorg(t *testing.T) {
	sim, key := newSimulated(t, nil)
	client := sim.Client()
	ctx := t.Context()

	stop := mine(t, func() { sim.Commit() })
	addr, _, err := evm.Deploy(ctx, client, key, 0)
	stop() // from here on the test alone mines
	if err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	var logs bytes.Buffer // written by Anchor before it returns on done
	chain := newChain(t, evm.Config{Client: client, Key: key, Contract: addr, Confirmations: 2,
		PollInterval: 2 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	type result struct {
		a   anchor.Anchor
		err error
	}
	done := make(chan result, 1)
	nonce := pendingNonce(t, client, key)
	go func() {
		a, err := chain.Anchor(ctx, 7, rootFor(7))
		done <- result{a, err}
	}()
	for pendingNonce(t, client, key) == nonce { // until the transaction is in the pool
		select {
		case r := <-done:
			t.Fatalf("Anchor returned before sending: %+v, %v", r.a, r.err)
		case <-time.After(time.Millisecond):
		}
	}
	parent, err := client.HeaderByNumber(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	orphan := sim.Commit()
	// Let Anchor see its receipt in the block about to be orphaned (it
	// polls every 2 ms) before the fork, so that it must notice it.
	time.Sleep(100 * time.Millisecond)
	sim.Commit()
	if err := sim.Fork(parent.Hash()); err != nil {
		t.Fatalf("Fork: %v", err)
	}

	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			sim.Commit()
			continue
		case r := <-done:
			if r.err != nil {
				t.Fatalf("Anchor: %v", r.err)
			}
			if !strings.Contains(logs.String(), "reorganised") {
				t.Errorf("Anchor did not notice the reorganisation; logs:\n%s", &logs)
			}
			if r.a.BlockHash == orphan {
				t.Errorf("Anchor returned the orphaned block %s", orphan)
			}
			h, err := client.HeaderByNumber(ctx, new(big.Int).SetUint64(r.a.BlockNumber))
			if err != nil || h.Hash() != r.a.BlockHash {
				t.Errorf("Anchor returned block %s, not canonical (err %v)", r.a.BlockHash, err)
			}
			if root, err := chain.RootAt(ctx, 7); err != nil || root != rootFor(7) {
				t.Errorf("RootAt(7) = %s, %v", root, err)
			}
		}
		return
	}
}

// BenchmarkAnchor anchors growing tree sizes on the simulated backend and
// reports the gas each anchor transaction used.
func BenchmarkAnchor(b *testing.B) {
	sim, key := newSimulated(b, osaka())
	mine(b, func() { sim.Commit() })
	addr, _, err := evm.Deploy(b.Context(), sim.Client(), key, 0)
	if err != nil {
		b.Fatalf("Deploy: %v", err)
	}
	chain := newChain(b, evm.Config{Client: sim.Client(), Key: key, Contract: addr, PollInterval: time.Millisecond})
	var size, gas uint64
	for b.Loop() {
		size++
		a, err := chain.Anchor(b.Context(), size, rootFor(size))
		if err != nil {
			b.Fatalf("Anchor(%d): %v", size, err)
		}
		gas += a.GasUsed
	}
	b.ReportMetric(float64(gas)/float64(size), "gas/op")
	if gas/size > maxAnchorGas {
		b.Errorf("%d gas per anchor, want at most %d", gas/size, maxAnchorGas)
	}
}

// TestAnchorResentWhenDropped: the node forgets the anchor transaction
// before mining it (simulated.Backend.Rollback drops pending transactions,
// as a restarted node or a full pool would). Anchor notices that the node
// no longer knows it, sends it again, and completes once blocks resume.
func TestAnchorResentWhenDropped(t *testing.T) {
	sim, key := newSimulated(t, nil)
	ctx := t.Context()
	stop := mine(t, func() { sim.Commit() })
	addr, _, err := evm.Deploy(ctx, sim.Client(), key, 0)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	chain := newChain(t, evm.Config{Client: sim.Client(), Key: key, Contract: addr, PollInterval: 2 * time.Millisecond})
	type result struct {
		a   anchor.Anchor
		err error
	}
	done := make(chan result, 1)
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		a, err := chain.Anchor(actx, 5, common.Hash{5})
		done <- result{a, err}
	}()
	// Wait until the anchor transaction is pending, then drop it.
	from := crypto.PubkeyToAddress(key.PublicKey)
	for {
		n, err := sim.Client().PendingNonceAt(ctx, from)
		if err != nil {
			t.Fatal(err)
		}
		mined, err := sim.Client().NonceAt(ctx, from, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n > mined {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	sim.Rollback()
	time.Sleep(100 * time.Millisecond) // Anchor polls, finds no receipt
	mine(t, func() { sim.Commit() })
	r := <-done
	if r.err != nil {
		t.Fatalf("Anchor after the node dropped its transaction: %v", r.err)
	}
	if size, root, err := chain.Latest(ctx); err != nil || size != 5 || root != (common.Hash{5}) {
		t.Errorf("Latest() = %d, %s, %v; want 5", size, root, err)
	}
}

// laggingHead is a real node seen through an RPC endpoint whose head
// trails the receipts it serves, as a node does for a moment between
// indexing a block's transactions and making the block its head (and as
// load-balanced endpoints do for longer): after each receipt it reports
// the block before the receipt's as the head, and answers calls at
// "latest" there, for the next lagPolls head polls.
type laggingHead struct {
	evm.Backend
	mu       sync.Mutex
	lagPolls int
	left     int
	behind   uint64 // the head it reports while left > 0
}

func (l *laggingHead) TransactionReceipt(ctx context.Context, hash common.Hash) (*types.Receipt, error) {
	r, err := l.Backend.TransactionReceipt(ctx, hash)
	if err == nil {
		l.mu.Lock()
		l.left, l.behind = l.lagPolls, r.BlockNumber.Uint64()-1
		l.mu.Unlock()
	}
	return r, err
}

func (l *laggingHead) head() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.behind, l.left > 0
}

func (l *laggingHead) BlockNumber(ctx context.Context) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.left > 0 {
		l.left--
		return l.behind, nil
	}
	return l.Backend.BlockNumber(ctx)
}

func (l *laggingHead) CallContract(ctx context.Context, call ethereum.CallMsg, number *big.Int) ([]byte, error) {
	if h, lagging := l.head(); number == nil && lagging {
		number = new(big.Int).SetUint64(h)
	}
	return l.Backend.CallContract(ctx, call, number)
}

// TestAnchorSeenAtLatest: once Anchor returns, Latest sees the anchor,
// even from a node whose head trails its receipts.
func TestAnchorSeenAtLatest(t *testing.T) {
	sim, key := newSimulated(t, nil)
	ctx := t.Context()
	mine(t, func() { sim.Commit() })
	client := &laggingHead{Backend: sim.Client(), lagPolls: 3}
	addr, _, err := evm.Deploy(ctx, client, key, 0)
	if err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	chain := newChain(t, evm.Config{Client: client, Key: key, Contract: addr, PollInterval: time.Millisecond})
	for size := uint64(1); size <= 3; size++ {
		if _, err := chain.Anchor(ctx, size, rootFor(size)); err != nil {
			t.Fatalf("Anchor(%d): %v", size, err)
		}
		if got, root, err := chain.Latest(ctx); err != nil || got != size || root != rootFor(size) {
			t.Errorf("Latest() after Anchor(%d) = %d, %s, %v", size, got, root, err)
		}
	}
}
