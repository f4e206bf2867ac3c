package evm

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/rpc"
)

// nonceAttempts bounds how often send re-reads the nonce after the node
// refused a transaction for its nonce.
const nonceAttempts = 5

// sender signs, sends and follows the transactions of one key. Its
// callers MUST NOT send from the same key concurrently.
type sender struct {
	client  Backend
	key     *ecdsa.PrivateKey
	chainID uint64
	poll    time.Duration
	log     *slog.Logger
}

// send estimates the gas of a call of data to to (nil: a contract
// creation), then signs and sends it as an EIP-1559 transaction with the
// pending nonce and the node's fee suggestion. When the node refuses the
// nonce it re-reads it and sends again, unless a transaction sent earlier
// by this call was mined meanwhile: then that one is returned.
func (s *sender) send(ctx context.Context, to *common.Address, data []byte) (*types.Transaction, error) {
	from := crypto.PubkeyToAddress(s.key.PublicKey)
	gas, err := retry(ctx, s.log, "estimate gas", func(ctx context.Context) (uint64, error) {
		return s.client.EstimateGas(ctx, ethereum.CallMsg{From: from, To: to, Data: data})
	})
	if err != nil {
		return nil, err
	}
	chainID := new(big.Int).SetUint64(s.chainID)
	signer := types.LatestSignerForChainID(chainID)
	var sent []*types.Transaction
	for attempt := 1; ; attempt++ {
		nonce, err := retry(ctx, s.log, "pending nonce", func(ctx context.Context) (uint64, error) {
			return s.client.PendingNonceAt(ctx, from)
		})
		if err != nil {
			return nil, err
		}
		tip, feeCap, err := s.fees(ctx)
		if err != nil {
			return nil, err
		}
		tx, err := types.SignNewTx(s.key, signer, &types.DynamicFeeTx{
			ChainID: chainID, Nonce: nonce, GasTipCap: tip, GasFeeCap: feeCap,
			Gas: gas, To: to, Data: data,
		})
		if err != nil {
			return nil, fmt.Errorf("evm: sign transaction: %w", err)
		}
		err = s.sendTx(ctx, tx)
		if err == nil {
			s.log.DebugContext(ctx, "evm: transaction sent",
				slog.String("tx", tx.Hash().Hex()), slog.Uint64("nonce", nonce), slog.Uint64("gas", gas))
			return tx, nil
		}
		if !nonceError(err) || attempt == nonceAttempts {
			return nil, err
		}
		sent = append(sent, tx)
		for _, prev := range sent {
			if _, err := s.client.TransactionReceipt(ctx, prev.Hash()); err == nil {
				return prev, nil
			}
		}
		s.log.WarnContext(ctx, "evm: nonce refused, re-reading it",
			slog.Uint64("nonce", nonce), slog.Any("error", err))
	}
}

// sendTx sends a signed transaction; the node already knowing it is
// success.
func (s *sender) sendTx(ctx context.Context, tx *types.Transaction) error {
	_, err := retry(ctx, s.log, "send transaction", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.client.SendTransaction(ctx, tx)
	})
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "already known") {
		return nil
	}
	return err
}

// fees returns the node's suggested tip and a fee cap of the tip plus
// twice the latest base fee, which survives six full blocks of base fee
// growth.
func (s *sender) fees(ctx context.Context) (tip, feeCap *big.Int, err error) {
	head, err := retry(ctx, s.log, "latest header", func(ctx context.Context) (*types.Header, error) {
		return s.client.HeaderByNumber(ctx, nil)
	})
	if err != nil {
		return nil, nil, err
	}
	if head.BaseFee == nil {
		return nil, nil, errors.New("evm: chain has no base fee (EIP-1559 is not active)")
	}
	tip, err = retry(ctx, s.log, "suggest gas tip", s.client.SuggestGasTipCap)
	if err != nil {
		return nil, nil, err
	}
	feeCap = new(big.Int).Add(tip, new(big.Int).Mul(head.BaseFee, big.NewInt(2)))
	return tip, feeCap, nil
}

// rebroadcastPolls is how many receipt polls without a receipt pass
// before waitMined checks that the node still holds the transaction (10 s
// at the default poll interval).
const rebroadcastPolls = 200

// waitMined polls for the receipt of tx every s.poll until there is one
// or ctx ends. Every rebroadcastPolls polls it asks the node for tx: when
// the node no longer knows it (dropped from its pool: a restart, a full
// pool, fees that rose), the same signed transaction is sent again. If its
// nonce was taken meanwhile by another transaction, waitMined fails, and
// the caller's next attempt starts afresh.
func (s *sender) waitMined(ctx context.Context, tx *types.Transaction) (*types.Receipt, error) {
	hash := tx.Hash()
	for polls := 1; ; polls++ {
		r, err := s.client.TransactionReceipt(ctx, hash)
		switch {
		case err == nil:
			return r, nil
		case errors.Is(err, ethereum.NotFound) || transient(err) ||
			strings.Contains(err.Error(), "indexing is in progress"):
		default:
			return nil, fmt.Errorf("evm: receipt of %s: %w", hash, err)
		}
		if polls%rebroadcastPolls == 0 {
			if _, _, err := s.client.TransactionByHash(ctx, hash); errors.Is(err, ethereum.NotFound) {
				s.log.WarnContext(ctx, "evm: the node dropped the transaction; sending it again", slog.String("tx", hash.Hex()))
				if err := s.sendTx(ctx, tx); err != nil {
					return nil, fmt.Errorf("evm: re-sending %s: %w", hash, err)
				}
			}
		}
		if err := sleep(ctx, s.poll); err != nil {
			return nil, fmt.Errorf("evm: waiting for %s: %w", hash, err)
		}
	}
}

// waitBlock polls the chain head every s.poll until it reaches number.
func (s *sender) waitBlock(ctx context.Context, number uint64) error {
	for {
		head, err := s.client.BlockNumber(ctx)
		switch {
		case err == nil && head >= number:
			return nil
		case err != nil && !transient(err):
			return fmt.Errorf("evm: block number: %w", err)
		}
		if err := sleep(ctx, s.poll); err != nil {
			return fmt.Errorf("evm: waiting for block %d: %w", number, err)
		}
	}
}

// canonical re-reads the receipt of r's transaction and reports whether
// it is still in the same block and that block is still canonical.
func (s *sender) canonical(ctx context.Context, r *types.Receipt) (bool, error) {
	now, err := s.client.TransactionReceipt(ctx, r.TxHash)
	if errors.Is(err, ethereum.NotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("evm: receipt of %s: %w", r.TxHash, err)
	}
	if now.BlockHash != r.BlockHash {
		return false, nil
	}
	head, err := retry(ctx, s.log, "header", func(ctx context.Context) (*types.Header, error) {
		return s.client.HeaderByNumber(ctx, r.BlockNumber)
	})
	if err != nil {
		return false, err
	}
	return head.Hash() == r.BlockHash, nil
}

// nonceError reports whether the node refused a transaction for its
// nonce, or because a pending one from the same account holds it.
func nonceError(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "nonce too low") || strings.Contains(msg, "replacement transaction underpriced") ||
		strings.Contains(msg, "nonce too high")
}

// revertData returns the revert data the node attached to err.
func revertData(err error) ([]byte, bool) {
	var de rpc.DataError
	if !errors.As(err, &de) {
		return nil, false
	}
	s, ok := de.ErrorData().(string)
	if !ok {
		return nil, false
	}
	b, err := hexutil.Decode(s)
	return b, err == nil
}
