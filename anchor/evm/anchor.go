package evm

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"

	"github.com/fhirgate/fhirgate/anchor"
)

// maxReorgs bounds how often Anchor follows its transaction out of the
// canonical chain before it gives up.
const maxReorgs = 8

// Anchor sends anchor(treeSize, root), waits until it is mined and
// followed by Config.Confirmations blocks, then re-reads its receipt: if a
// reorganisation moved or dropped the transaction, Anchor re-broadcasts the
// same signed transaction and waits again. Anchor calls are serialised.
//
// It fails with anchor.ErrNotGrowing, without sending, when treeSize is not
// larger than Latest, with ErrNotOwner when the key is not the contract
// owner and with ErrReadOnly without a key. When ctx ends while it waits,
// the transaction may still be mined: Find tells.
func (c *Chain) Anchor(ctx context.Context, treeSize uint64, root common.Hash) (anchor.Anchor, error) {
	if c.key == nil {
		return anchor.Anchor{}, ErrReadOnly
	}
	select {
	case c.sem <- struct{}{}:
		defer func() { <-c.sem }()
	case <-ctx.Done():
		return anchor.Anchor{}, context.Cause(ctx)
	}
	latest, _, err := c.Latest(ctx)
	if err != nil {
		return anchor.Anchor{}, err
	}
	if treeSize <= latest {
		return anchor.Anchor{}, notGrowing(treeSize, latest)
	}
	s := c.sender()
	tx, err := s.send(ctx, &c.contract, c.abi.PackAnchor(treeSize, root))
	if err != nil {
		return anchor.Anchor{}, c.revertError(err)
	}
	r, err := c.settle(ctx, s, tx)
	if err != nil {
		return anchor.Anchor{}, err
	}
	if r.Status != types.ReceiptStatusSuccessful {
		if latest, _, err := c.Latest(ctx); err == nil && treeSize <= latest {
			return anchor.Anchor{}, notGrowing(treeSize, latest)
		}
		return anchor.Anchor{}, fmt.Errorf("evm: anchor transaction %s reverted", tx.Hash())
	}
	a := anchor.Anchor{
		TreeSize:    treeSize,
		Root:        root,
		ChainID:     c.chainID,
		Contract:    c.contract,
		TxHash:      tx.Hash(),
		BlockNumber: r.BlockNumber.Uint64(),
		BlockHash:   r.BlockHash,
		GasUsed:     r.GasUsed,
	}
	c.log.InfoContext(ctx, "evm: anchored", slog.Uint64("treeSize", treeSize),
		slog.String("tx", a.TxHash.Hex()), slog.Uint64("block", a.BlockNumber), slog.Uint64("gasUsed", a.GasUsed))
	return a, nil
}

// settle waits until tx is mined with c.conf confirmations and its receipt
// is still canonical afterwards, and returns that receipt.
func (c *Chain) settle(ctx context.Context, s *sender, tx *types.Transaction) (*types.Receipt, error) {
	for reorgs := 0; ; reorgs++ {
		r, err := s.waitMined(ctx, tx)
		if err != nil {
			return nil, err
		}
		// A node indexes a block's transactions a moment before it makes
		// the block its head: wait for the head, so that Latest, called
		// at "latest", sees the anchor once Anchor returns.
		if err := s.waitBlock(ctx, r.BlockNumber.Uint64()+c.conf); err != nil {
			return nil, err
		}
		if c.conf == 0 {
			return r, nil
		}
		ok, err := s.canonical(ctx, r)
		if err != nil || ok {
			return r, err
		}
		if reorgs == maxReorgs {
			return nil, fmt.Errorf("evm: transaction %s left the chain %d times", tx.Hash(), reorgs+1)
		}
		c.log.WarnContext(ctx, "evm: anchor transaction reorganised, waiting again",
			slog.String("tx", tx.Hash().Hex()), slog.String("block", r.BlockHash.Hex()))
		if err := s.sendTx(ctx, tx); err != nil && !nonceError(err) {
			return nil, err
		}
	}
}

func (c *Chain) sender() *sender {
	return &sender{client: c.client, key: c.key, chainID: c.chainID, poll: c.poll, log: c.log}
}

// revertError maps the contract's custom errors in err's revert data to
// anchor.ErrNotGrowing and ErrNotOwner.
func (c *Chain) revertError(err error) error {
	data, ok := revertData(err)
	if !ok || len(data) < 4 {
		return err
	}
	v, uerr := c.abi.UnpackError(data)
	if uerr != nil {
		return err
	}
	switch e := v.(type) {
	case *AnchorContractNotGrowing:
		return notGrowing(e.TreeSize, e.LatestSize)
	case *AnchorContractNotOwner:
		return fmt.Errorf("%w (sender %s)", ErrNotOwner, e.Caller)
	}
	return err
}

func notGrowing(treeSize, latest uint64) error {
	return fmt.Errorf("%w: %d, latest is %d", anchor.ErrNotGrowing, treeSize, latest)
}
