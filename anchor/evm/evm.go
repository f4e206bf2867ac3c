// Package evm anchors tree roots in the Anchor contract
// (anchor/contracts/Anchor.sol) on an EVM chain, through go-ethereum.
//
// Chain implements anchor.Chain. It sends EIP-1559 transactions signed with
// a local key, polls for their receipts, waits for confirmations and
// re-checks the receipt afterwards so that a reorganisation does not go
// unnoticed. contract.go holds the abigen (v2) bindings; regenerate them
// with make contracts.
package evm

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/accounts/abi/bind/v2"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"

	"github.com/fhirgate/fhirgate/anchor"
)

// Backend is the part of an Ethereum client that Chain and Deploy use.
// *ethclient.Client and the client of go-ethereum's simulated backend
// (ethclient/simulated) satisfy it.
type Backend interface {
	bind.ContractBackend
	ethereum.TransactionReader
	ethereum.ChainIDReader
	ethereum.BlockNumberReader
}

// ErrReadOnly is returned by Anchor when the Chain has no key.
var ErrReadOnly = errors.New("evm: no key configured (read-only)")

// ErrNotOwner is returned by Anchor when the key is not the contract owner.
var ErrNotOwner = errors.New("evm: key is not the anchor contract owner")

// DefaultPollInterval is how often receipts and the head are polled when
// Config.PollInterval is zero.
const DefaultPollInterval = 50 * time.Millisecond

// Config configures a Chain.
type Config struct {
	// Client talks to the node, usually an *ethclient.Client from
	// ethclient.DialContext; the caller dials and closes it.
	Client Backend
	// Key signs anchoring transactions. Nil makes the Chain read-only:
	// Anchor fails with ErrReadOnly.
	Key *ecdsa.PrivateKey
	// ChainID is the EIP-155 chain ID; 0 asks the node.
	ChainID uint64
	// Contract is the address of the deployed Anchor contract.
	Contract common.Address
	// Confirmations is how many blocks must follow the block holding an
	// anchoring transaction before Anchor returns.
	Confirmations uint64
	// PollInterval is how often receipts and the chain head are polled;
	// 0 means DefaultPollInterval.
	PollInterval time.Duration
	// Logger receives progress and retry logs; nil discards them.
	Logger *slog.Logger
}

// Chain is an anchor.Chain backed by the Anchor contract.
type Chain struct {
	client   Backend
	key      *ecdsa.PrivateKey
	from     common.Address
	chainID  uint64
	contract common.Address
	conf     uint64
	poll     time.Duration
	log      *slog.Logger
	abi      *AnchorContract
	bound    *bind.BoundContract
	// sem serialises Anchor calls (nonces, and the growth check).
	sem chan struct{}
}

var _ anchor.Chain = (*Chain)(nil)

// New returns a Chain for the contract in cfg. It checks that the contract
// has code and, when cfg.ChainID is 0, asks the node for the chain ID.
func New(ctx context.Context, cfg Config) (*Chain, error) {
	if cfg.Client == nil {
		return nil, errors.New("evm: Config.Client is nil")
	}
	if cfg.Contract == (common.Address{}) {
		return nil, errors.New("evm: Config.Contract is the zero address")
	}
	c := &Chain{
		client:   cfg.Client,
		key:      cfg.Key,
		chainID:  cfg.ChainID,
		contract: cfg.Contract,
		conf:     cfg.Confirmations,
		poll:     cfg.PollInterval,
		log:      cfg.Logger,
		abi:      NewAnchorContract(),
		sem:      make(chan struct{}, 1),
	}
	if c.poll <= 0 {
		c.poll = DefaultPollInterval
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.key != nil {
		c.from = crypto.PubkeyToAddress(c.key.PublicKey)
	}
	if c.chainID == 0 {
		id, err := askChainID(ctx, c.client)
		if err != nil {
			return nil, err
		}
		c.chainID = id
	}
	code, err := retry(ctx, c.log, "code at", func(ctx context.Context) ([]byte, error) {
		return c.client.CodeAt(ctx, c.contract, nil)
	})
	if err != nil {
		return nil, err
	}
	if len(code) == 0 {
		return nil, fmt.Errorf("evm: no contract code at %s", c.contract)
	}
	c.bound = c.abi.Instance(c.client, c.contract)
	return c, nil
}

// ChainID returns the chain ID the Chain signs for.
func (c *Chain) ChainID() uint64 { return c.chainID }

// Contract returns the address of the Anchor contract.
func (c *Chain) Contract() common.Address { return c.contract }

// Latest returns the largest anchored tree size and its root.
func (c *Chain) Latest(ctx context.Context) (uint64, common.Hash, error) {
	out, err := retry(ctx, c.log, "latest", func(ctx context.Context) (LatestOutput, error) {
		return bind.Call(c.bound, &bind.CallOpts{Context: ctx}, c.abi.PackLatest(), c.abi.UnpackLatest)
	})
	if err != nil {
		return 0, common.Hash{}, err
	}
	return out.TreeSize, out.Root, nil
}

// RootAt returns the root anchored for treeSize, the zero hash if none.
func (c *Chain) RootAt(ctx context.Context, treeSize uint64) (common.Hash, error) {
	root, err := retry(ctx, c.log, "root at", func(ctx context.Context) ([32]byte, error) {
		return bind.Call(c.bound, &bind.CallOpts{Context: ctx}, c.abi.PackRootAt(treeSize), c.abi.UnpackRootAt)
	})
	return root, err
}

// Deploy deploys the Anchor contract with key as its owner, waits until
// the transaction is mined and checks that the contract has code. chainID
// 0 asks the node.
func Deploy(ctx context.Context, client Backend, key *ecdsa.PrivateKey, chainID uint64) (common.Address, common.Hash, error) {
	if chainID == 0 {
		id, err := askChainID(ctx, client)
		if err != nil {
			return common.Address{}, common.Hash{}, err
		}
		chainID = id
	}
	s := &sender{client: client, key: key, chainID: chainID, poll: DefaultPollInterval, log: slog.New(slog.DiscardHandler)}
	tx, err := s.send(ctx, nil, common.FromHex(AnchorContractMetaData.Bin))
	if err != nil {
		return common.Address{}, common.Hash{}, fmt.Errorf("evm: deploy: %w", err)
	}
	r, err := s.waitMined(ctx, tx)
	if err != nil {
		return common.Address{}, tx.Hash(), fmt.Errorf("evm: deploy: %w", err)
	}
	if r.Status != types.ReceiptStatusSuccessful {
		return common.Address{}, tx.Hash(), fmt.Errorf("evm: deploy: transaction %s failed", tx.Hash())
	}
	// The receipt shows a moment before the block is the head; calls at
	// "latest" (New reads the owner) must find the contract.
	if err := s.waitBlock(ctx, r.BlockNumber.Uint64()); err != nil {
		return common.Address{}, tx.Hash(), fmt.Errorf("evm: deploy: %w", err)
	}
	code, err := retry(ctx, s.log, "code at", func(ctx context.Context) ([]byte, error) {
		return client.CodeAt(ctx, r.ContractAddress, r.BlockNumber)
	})
	if err != nil {
		return common.Address{}, tx.Hash(), fmt.Errorf("evm: deploy: %w", err)
	}
	if len(code) == 0 {
		return common.Address{}, tx.Hash(), fmt.Errorf("evm: deploy: %w", bind.ErrNoCodeAfterDeploy)
	}
	return r.ContractAddress, tx.Hash(), nil
}

func askChainID(ctx context.Context, client Backend) (uint64, error) {
	id, err := retry(ctx, slog.New(slog.DiscardHandler), "chain id", func(ctx context.Context) (*big.Int, error) {
		return client.ChainID(ctx)
	})
	if err != nil {
		return 0, err
	}
	if !id.IsUint64() {
		return 0, fmt.Errorf("evm: chain id %s does not fit in 64 bits", id)
	}
	return id.Uint64(), nil
}
