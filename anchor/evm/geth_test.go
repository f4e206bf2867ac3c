package evm_test

import (
	"testing"

	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor/devchain"
	"github.com/fhirgate/fhirgate/internal/chaintest"
)

// TestGeth runs the chain suite against a real `geth --dev` over HTTP
// JSON-RPC (bin/geth, from `make geth`).
func TestGeth(t *testing.T) {
	url, key := chaintest.Geth(t)
	client, err := ethclient.DialContext(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	runChainSuite(t, client, key, nil)
}

// TestDevchain runs the chain suite against the embedded dev chain over
// its JSON-RPC, as `fhirgate serve` uses it by default.
func TestDevchain(t *testing.T) {
	dc, err := devchain.Start(t.Context(), devchain.Config{Dir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	client, err := ethclient.DialContext(t.Context(), dc.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	runChainSuite(t, client, dc.Key(), nil)
}
