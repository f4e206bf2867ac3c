package chaintest_test

import (
	"context"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient"

	"github.com/fhirgate/fhirgate/internal/chaintest"
)

func TestGethMinesATransaction(t *testing.T) {
	url, key := chaintest.Geth(t)
	ctx := t.Context()
	c, err := ethclient.DialContext(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	chainID, err := c.ChainID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if chainID.Uint64() != chaintest.GethChainID {
		t.Errorf("chain ID = %v, want %d", chainID, chaintest.GethChainID)
	}
	from := crypto.PubkeyToAddress(key.PublicKey)
	if bal, err := c.BalanceAt(ctx, from, nil); err != nil || bal.Sign() == 0 {
		t.Fatalf("developer account %v balance = %v, %v; want funded", from, bal, err)
	}

	to := common.HexToAddress("0x00000000000000000000000000000000000000dd")
	nonce, err := c.PendingNonceAt(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	head, err := c.HeaderByNumber(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tip := big.NewInt(1_000_000_000)
	tx, err := types.SignNewTx(key, types.LatestSignerForChainID(chainID), &types.DynamicFeeTx{
		ChainID:   chainID,
		Nonce:     nonce,
		GasTipCap: tip,
		GasFeeCap: new(big.Int).Add(tip, new(big.Int).Mul(head.BaseFee, big.NewInt(2))),
		Gas:       21_000,
		To:        &to,
		Value:     big.NewInt(777),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendTransaction(ctx, tx); err != nil {
		t.Fatalf("send: %v", err)
	}
	r := waitReceipt(t, c, tx.Hash())
	if r.Status != types.ReceiptStatusSuccessful {
		t.Fatalf("receipt status = %d, want success", r.Status)
	}
	if r.BlockNumber.Uint64() != head.Number.Uint64()+1 {
		t.Errorf("mined in block %v, want %d (a block per transaction)", r.BlockNumber, head.Number.Uint64()+1)
	}
	bal, err := c.BalanceAt(ctx, to, nil)
	if err != nil || bal.Int64() != 777 {
		t.Errorf("recipient balance = %v, %v; want 777", bal, err)
	}
}

func waitReceipt(t *testing.T, c *ethclient.Client, hash common.Hash) *types.Receipt {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		r, err := c.TransactionReceipt(ctx, hash)
		if err == nil {
			return r
		}
		// geth answers "transaction indexing is in progress" for unknown
		// transactions until its indexer has caught up.
		if !errors.Is(err, ethereum.NotFound) && !strings.Contains(err.Error(), "indexing is in progress") {
			t.Fatalf("receipt: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("receipt: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestGethSkipsWithoutBinary(t *testing.T) {
	// A GETH that does not exist skips the test outside CI (t.Run reports
	// a skipped subtest as passed).
	t.Setenv("GETH", "/nonexistent/geth")
	t.Setenv("CI", "")
	ran := t.Run("missing", func(t *testing.T) {
		chaintest.Geth(t)
		t.Error("Geth returned with a missing binary, want skip")
	})
	if !ran {
		t.Error("subtest failed, want skipped")
	}
}
