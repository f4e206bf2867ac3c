package evm_test

import (
	"context"
	"fmt"
	"log"
	"math/big"
	"time"

	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient/simulated"

	"github.com/fhirgate/fhirgate/anchor/evm"
)

func Example() {
	ctx := context.Background()
	key, _ := crypto.GenerateKey()
	sim := simulated.NewBackend(types.GenesisAlloc{
		crypto.PubkeyToAddress(key.PublicKey): {Balance: big.NewInt(1e18)},
	})
	defer sim.Close()
	stop := make(chan struct{})
	mined := make(chan struct{})
	defer func() { close(stop); <-mined }()
	go func() { // the simulated chain mines on demand
		defer close(mined)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				sim.Commit()
			}
		}
	}()

	// With a real node: client, err := ethclient.DialContext(ctx, url).
	addr, _, err := evm.Deploy(ctx, sim.Client(), key, 0)
	if err != nil {
		log.Fatal(err)
	}
	chain, err := evm.New(ctx, evm.Config{Client: sim.Client(), Key: key, Contract: addr, Confirmations: 1})
	if err != nil {
		log.Fatal(err)
	}
	a, err := chain.Anchor(ctx, 42, crypto.Keccak256Hash([]byte("root")))
	if err != nil {
		log.Fatal(err)
	}
	size, root, _ := chain.Latest(ctx)
	fmt.Println(a.TreeSize, size, root == a.Root)
	// Output: 42 42 true
}
