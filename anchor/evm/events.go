package evm

import (
	"context"
	"fmt"
	"math/big"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/accounts/abi"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"

	"github.com/fhirgate/fhirgate/anchor"
)

// logRange is how many blocks Anchored asks for per eth_getLogs query.
const logRange = 10_000

// Find returns the Anchored event for treeSize, searching the whole chain
// with the indexed treeSize as topic filter.
func (c *Chain) Find(ctx context.Context, treeSize uint64) (anchor.Anchor, bool, error) {
	topics, err := abi.MakeTopics([]any{anchoredID(c.abi)}, []any{treeSize})
	if err != nil {
		return anchor.Anchor{}, false, fmt.Errorf("evm: topics: %w", err)
	}
	q := ethereum.FilterQuery{
		FromBlock: big.NewInt(0),
		Addresses: []common.Address{c.contract},
		Topics:    [][]common.Hash{topics[0], topics[1]},
	}
	logs, err := retry(ctx, c.log, "filter logs", func(ctx context.Context) ([]types.Log, error) {
		return c.client.FilterLogs(ctx, q)
	})
	if err != nil {
		return anchor.Anchor{}, false, err
	}
	for i := range logs {
		if logs[i].Removed {
			continue
		}
		a, err := c.fromLog(&logs[i])
		return a, err == nil, err
	}
	return anchor.Anchor{}, false, nil
}

// Anchored calls fn for every Anchored event up to the current head, in
// chain order, querying logRange blocks at a time. It stops at the first
// error fn returns and returns it.
func (c *Chain) Anchored(ctx context.Context, fn func(anchor.Anchor) error) error {
	head, err := retry(ctx, c.log, "block number", c.client.BlockNumber)
	if err != nil {
		return err
	}
	id := anchoredID(c.abi)
	for from := uint64(0); from <= head; from += logRange {
		q := ethereum.FilterQuery{
			FromBlock: new(big.Int).SetUint64(from),
			ToBlock:   new(big.Int).SetUint64(min(from+logRange-1, head)),
			Addresses: []common.Address{c.contract},
			Topics:    [][]common.Hash{{id}},
		}
		logs, err := retry(ctx, c.log, "filter logs", func(ctx context.Context) ([]types.Log, error) {
			return c.client.FilterLogs(ctx, q)
		})
		if err != nil {
			return err
		}
		for i := range logs {
			a, err := c.fromLog(&logs[i])
			if err != nil {
				return err
			}
			if err := fn(a); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Chain) fromLog(l *types.Log) (anchor.Anchor, error) {
	ev, err := c.abi.UnpackAnchoredEvent(l)
	if err != nil {
		return anchor.Anchor{}, fmt.Errorf("evm: unpack Anchored log in %s: %w", l.TxHash, err)
	}
	return anchor.Anchor{
		TreeSize:    ev.TreeSize,
		Root:        ev.Root,
		ChainID:     c.chainID,
		Contract:    c.contract,
		TxHash:      l.TxHash,
		BlockNumber: l.BlockNumber,
		BlockHash:   l.BlockHash,
	}, nil
}

// anchoredID is topic 0 of the Anchored event.
func anchoredID(a *AnchorContract) common.Hash {
	return a.GetABI().Events[AnchorContractAnchoredEventName].ID
}
