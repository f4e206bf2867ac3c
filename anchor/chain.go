package anchor

import (
	"context"
	"errors"

	"github.com/ethereum/go-ethereum/common"
)

// Anchor is one anchoring transaction as it landed on chain: the tree
// size and root it recorded and where.
type Anchor struct {
	TreeSize    uint64         `json:"treeSize"`
	Root        common.Hash    `json:"root"`
	ChainID     uint64         `json:"chainId"`
	Contract    common.Address `json:"contract"`
	TxHash      common.Hash    `json:"txHash"`
	BlockNumber uint64         `json:"blockNumber"`
	BlockHash   common.Hash    `json:"blockHash"`
	// GasUsed is the transaction's gas (0 when recovered from an event).
	GasUsed uint64 `json:"gasUsed,omitempty"`
}

// ErrNotGrowing: the contract refused a tree size not larger than the
// latest anchored one.
var ErrNotGrowing = errors.New("anchor: tree size does not grow")

// Chain is where tree roots are anchored: the anchoring contract on an EVM
// chain (package anchor/evm implements it).
type Chain interface {
	// ChainID and Contract name the chain and the anchoring contract.
	ChainID() uint64
	Contract() common.Address
	// Latest returns the largest anchored tree size and its root; size 0
	// when nothing was anchored.
	Latest(ctx context.Context) (uint64, common.Hash, error)
	// RootAt returns the root anchored for treeSize, the zero hash if none.
	RootAt(ctx context.Context, treeSize uint64) (common.Hash, error)
	// Anchor sends anchor(treeSize, root) and returns once the transaction
	// is mined with the configured confirmations and its receipt was
	// re-read after them (a reorg that dropped it is retried). It fails
	// with ErrNotGrowing if treeSize is not larger than Latest.
	Anchor(ctx context.Context, treeSize uint64, root common.Hash) (Anchor, error)
	// Find returns the Anchored event for treeSize, if the chain holds one
	// (to record an anchor sent before a crash).
	Find(ctx context.Context, treeSize uint64) (Anchor, bool, error)
	// Anchored calls fn for every Anchored event, in chain order.
	Anchored(ctx context.Context, fn func(Anchor) error) error
}
