// Package anchortest runs the anchoring contract on go-ethereum's
// simulated backend for tests.
package anchortest

import (
	"crypto/ecdsa"
	"math/big"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient/simulated"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/evm"
)

// Sim is a simulated chain, mined every 5 ms, with the Anchor contract
// deployed by Key at Contract.
type Sim struct {
	Backend  *simulated.Backend
	Key      *ecdsa.PrivateKey
	Contract common.Address
}

// Simulated starts a chain where key (nil: a new one) is funded and
// deploys the contract with it; deploying with the same key on two chains
// gives the same address.
func Simulated(t testing.TB, key *ecdsa.PrivateKey) *Sim {
	t.Helper()
	if key == nil {
		var err error
		if key, err = crypto.GenerateKey(); err != nil {
			t.Fatal(err)
		}
	}
	funds := new(big.Int).Mul(big.NewInt(1000), big.NewInt(1e18))
	sim := simulated.NewBackend(types.GenesisAlloc{crypto.PubkeyToAddress(key.PublicKey): {Balance: funds}})
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				sim.Commit()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; sim.Close() })
	addr, _, err := evm.Deploy(t.Context(), sim.Client(), key, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &Sim{Backend: sim, Key: key, Contract: addr}
}

// Chain returns a Chain on the contract that signs with key (nil:
// read-only).
func (s *Sim) Chain(t testing.TB, key *ecdsa.PrivateKey) *evm.Chain {
	t.Helper()
	ch, err := evm.New(t.Context(), evm.Config{Client: s.Backend.Client(), Key: key, Contract: s.Contract, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// Sizes returns the tree sizes of every Anchored event on chain, in chain
// order, and fails t unless each is larger than the one before (every
// size anchored once).
func Sizes(t testing.TB, chain anchor.Chain) []uint64 {
	t.Helper()
	var sizes []uint64
	if err := chain.Anchored(t.Context(), func(a anchor.Anchor) error {
		sizes = append(sizes, a.TreeSize)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i] <= sizes[i-1] {
			t.Fatalf("anchored tree sizes %v: not each once, growing", sizes)
		}
	}
	return sizes
}
