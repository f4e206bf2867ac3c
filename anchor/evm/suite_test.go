package evm_test

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/google/go-cmp/cmp"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
)

// runChainSuite runs the anchor.Chain contract tests against the node
// behind client (it logs but does not bound the gas per anchor, which
// depends on the chain's fork; TestAnchorGas does): it deploys a fresh Anchor contract owned by key, which
// MUST be funded. commit mines one block on nodes that only mine on
// demand (the simulated backend); the suite then calls it every few
// milliseconds. Pass nil for nodes that mine on their own, such as geth
// --dev: for the Confirmations test the suite then keeps blocks coming
// with transactions from a second key it funds from key.
func runChainSuite(t *testing.T, client evm.Backend, key *ecdsa.PrivateKey, commit func()) {
	t.Helper()
	mine(t, commit)
	ctx := t.Context()

	addr, deployTx, err := evm.Deploy(ctx, client, key, 0)
	if err != nil {
		t.Fatalf("Deploy: %v", err)
	}
	if deployTx == (common.Hash{}) {
		t.Errorf("Deploy returned a zero transaction hash")
	}
	chain := newChain(t, evm.Config{Client: client, Key: key, Contract: addr})

	t.Run("Empty", func(t *testing.T) {
		size, root, err := chain.Latest(ctx)
		if err != nil || size != 0 || root != (common.Hash{}) {
			t.Errorf("Latest() = %d, %s, %v; want 0, zero hash, nil", size, root, err)
		}
		if _, found, err := chain.Find(ctx, 1); err != nil || found {
			t.Errorf("Find(1) found = %v, err = %v; want false, nil", found, err)
		}
	})

	sizes := []uint64{1, 5, 9}
	var anchored []anchor.Anchor
	t.Run("AnchorGrows", func(t *testing.T) {
		for _, size := range sizes {
			root := rootFor(size)
			a, err := chain.Anchor(ctx, size, root)
			if err != nil {
				t.Fatalf("Anchor(%d): %v", size, err)
			}
			anchored = append(anchored, a)
			t.Logf("Anchor(%d): gas used %d", size, a.GasUsed)
			if a.GasUsed == 0 {
				t.Errorf("Anchor(%d) reported no gas used", size)
			}
			if a.TreeSize != size || a.Root != root || a.Contract != addr || a.ChainID != chain.ChainID() ||
				a.TxHash == (common.Hash{}) || a.BlockHash == (common.Hash{}) || a.BlockNumber == 0 {
				t.Errorf("Anchor(%d) = %+v", size, a)
			}
			gotSize, gotRoot, err := chain.Latest(ctx)
			if err != nil || gotSize != size || gotRoot != root {
				t.Errorf("Latest() = %d, %s, %v; want %d, %s", gotSize, gotRoot, err, size, root)
			}
			if got, err := chain.RootAt(ctx, size); err != nil || got != root {
				t.Errorf("RootAt(%d) = %s, %v; want %s", size, got, err, root)
			}
		}
		if got, err := chain.RootAt(ctx, 2); err != nil || got != (common.Hash{}) {
			t.Errorf("RootAt(2) = %s, %v; want the zero hash", got, err)
		}
	})

	t.Run("NotGrowing", func(t *testing.T) {
		for _, size := range []uint64{0, 1, 9} {
			nonce := pendingNonce(t, client, key)
			_, err := chain.Anchor(ctx, size, rootFor(size))
			if !errors.Is(err, anchor.ErrNotGrowing) {
				t.Errorf("Anchor(%d) error = %v, want ErrNotGrowing", size, err)
			}
			if got := pendingNonce(t, client, key); got != nonce {
				t.Errorf("Anchor(%d) sent a transaction: nonce %d -> %d", size, nonce, got)
			}
		}
	})

	t.Run("NotOwner", func(t *testing.T) {
		other, err := crypto.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		c := newChain(t, evm.Config{Client: client, Key: other, Contract: addr})
		if _, err := c.Anchor(ctx, 100, rootFor(100)); !errors.Is(err, evm.ErrNotOwner) {
			t.Errorf("Anchor with another key: error = %v, want ErrNotOwner", err)
		}
		if got := pendingNonce(t, client, other); got != 0 {
			t.Errorf("Anchor with another key sent %d transactions", got)
		}
	})

	t.Run("ReadOnly", func(t *testing.T) {
		c := newChain(t, evm.Config{Client: client, Contract: addr})
		if _, err := c.Anchor(ctx, 100, rootFor(100)); !errors.Is(err, evm.ErrReadOnly) {
			t.Errorf("Anchor without key: error = %v, want ErrReadOnly", err)
		}
		if size, _, err := c.Latest(ctx); err != nil || size != 9 {
			t.Errorf("Latest() = %d, %v; want 9", size, err)
		}
	})

	t.Run("Find", func(t *testing.T) {
		for _, want := range anchored {
			got, found, err := chain.Find(ctx, want.TreeSize)
			if err != nil || !found {
				t.Fatalf("Find(%d) found = %v, err = %v", want.TreeSize, found, err)
			}
			want.GasUsed = 0 // not recorded in events
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Find(%d) mismatch (-want +got):\n%s", want.TreeSize, diff)
			}
		}
		if _, found, err := chain.Find(ctx, 2); err != nil || found {
			t.Errorf("Find(2) found = %v, err = %v; want false, nil", found, err)
		}
	})

	t.Run("Anchored", func(t *testing.T) {
		var got []uint64
		err := chain.Anchored(ctx, func(a anchor.Anchor) error {
			got = append(got, a.TreeSize)
			return nil
		})
		if err != nil {
			t.Fatalf("Anchored: %v", err)
		}
		if diff := cmp.Diff(sizes, got); diff != "" {
			t.Errorf("Anchored tree sizes mismatch (-want +got):\n%s", diff)
		}
		stop := errors.New("stop")
		calls := 0
		err = chain.Anchored(ctx, func(anchor.Anchor) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Errorf("Anchored with failing fn: %d calls, error %v; want 1, %v", calls, err, stop)
		}
	})

	t.Run("Confirmations", func(t *testing.T) {
		const confirmations = 2
		if commit == nil {
			defer nudge(t, client, key)()
		}
		c := newChain(t, evm.Config{Client: client, Key: key, Contract: addr, Confirmations: confirmations})
		a, err := c.Anchor(ctx, 20, rootFor(20))
		if err != nil {
			t.Fatalf("Anchor: %v", err)
		}
		head, err := client.BlockNumber(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if head < a.BlockNumber+confirmations {
			t.Errorf("Anchor returned at head %d, before block %d had %d confirmations", head, a.BlockNumber, confirmations)
		}
	})
}

func newChain(t testing.TB, cfg evm.Config) *evm.Chain {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Millisecond
	}
	c, err := evm.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("evm.New: %v", err)
	}
	return c
}

// mine calls commit every few milliseconds until stop is called or the
// test ends; stop returns once commit is no longer running.
func mine(t testing.TB, commit func()) (stop func()) {
	if commit == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				commit()
			}
		}
	})
	stop = sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(stop)
	return stop
}

// nudge makes a node that mines only when a transaction arrives (geth
// --dev --dev.period 0) keep producing blocks: it funds a second key from
// key, then sends a transaction from it every 20ms until stop is called.
func nudge(t *testing.T, client evm.Backend, key *ecdsa.PrivateKey) (stop func()) {
	t.Helper()
	ctx := t.Context()
	filler, err := crypto.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	to := crypto.PubkeyToAddress(filler.PublicKey)
	fund, err := transfer(ctx, client, key, pendingNonce(t, client, key), to, big.NewInt(1e17))
	if err != nil {
		t.Fatalf("funding the filler key: %v", err)
	}
	for {
		if _, err := client.TransactionReceipt(ctx, fund.Hash()); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for nonce := uint64(0); ; nonce++ {
			// The node's transaction pool may not have seen the funding
			// block yet ("insufficient funds"): retry for a while.
			var err error
			for range 200 {
				if _, err = transfer(ctx, client, filler, nonce, to, big.NewInt(0)); err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("filler transaction: %v", err)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// transfer sends value from key to to with the given nonce.
func transfer(ctx context.Context, client evm.Backend, key *ecdsa.PrivateKey, nonce uint64, to common.Address, value *big.Int) (*types.Transaction, error) {
	id, err := client.ChainID(ctx)
	if err != nil {
		return nil, err
	}
	head, err := client.HeaderByNumber(ctx, nil)
	if err != nil {
		return nil, err
	}
	tip, err := client.SuggestGasTipCap(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := types.SignNewTx(key, types.LatestSignerForChainID(id), &types.DynamicFeeTx{
		ChainID: id, Nonce: nonce, GasTipCap: tip, Gas: 21_000, To: &to, Value: value,
		GasFeeCap: new(big.Int).Add(tip, new(big.Int).Mul(head.BaseFee, big.NewInt(2))),
	})
	if err != nil {
		return nil, err
	}
	return tx, client.SendTransaction(ctx, tx)
}

func pendingNonce(t testing.TB, client evm.Backend, key *ecdsa.PrivateKey) uint64 {
	t.Helper()
	n, err := client.PendingNonceAt(context.WithoutCancel(t.Context()), crypto.PubkeyToAddress(key.PublicKey))
	if err != nil {
		t.Fatalf("PendingNonceAt: %v", err)
	}
	return n
}

func rootFor(size uint64) common.Hash {
	return crypto.Keccak256Hash([]byte{byte(size >> 8), byte(size)})
}
