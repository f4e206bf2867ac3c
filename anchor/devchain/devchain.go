// Package devchain runs the embedded default chain: an in-process go-ethereum
// node in developer mode (the chain `geth --dev --dev.period 0` runs) whose
// state persists in a directory, so anchors survive restarts and crashes.
//
// The node produces a block as soon as a transaction enters its pool, serves
// JSON-RPC (eth, net, web3) over HTTP on a loopback address only, and has no
// peer-to-peer networking. A developer key, generated once and kept in the
// directory, is funded in the genesis block.
//
// State is stored with the hash scheme in archive mode: every block's state
// trie is written to the database when the block is inserted, and the
// database log is synced after each new head. The default path scheme keeps
// the last 128 blocks' state in memory only, so after a kill -9 go-ethereum
// rewinds the chain to the last state on disk (the genesis block for a young
// dev chain) and the anchors written since would be lost.
package devchain

import (
	"context"
	"crypto/ecdsa"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core"
	"github.com/ethereum/go-ethereum/core/rawdb"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/eth"
	"github.com/ethereum/go-ethereum/eth/catalyst"
	"github.com/ethereum/go-ethereum/eth/ethconfig"
	"github.com/ethereum/go-ethereum/eth/filters"
	"github.com/ethereum/go-ethereum/ethclient"
	gethlog "github.com/ethereum/go-ethereum/log"
	"github.com/ethereum/go-ethereum/node"
	"github.com/ethereum/go-ethereum/p2p"
	"github.com/ethereum/go-ethereum/rpc"
)

// DefaultListen is the JSON-RPC address used when Config.Listen is empty.
const DefaultListen = "127.0.0.1:8545"

// ChainID is the chain ID of every dev chain (go-ethereum's developer chain
// configuration, params.AllDevChainProtocolChanges).
const ChainID uint64 = 1337

// GasLimit is the genesis block gas limit, geth's --dev.gaslimit default.
const GasLimit = 11_500_000

// File and directory names inside Config.Dir.
const (
	keyFile = "dev.key" // hex-encoded secp256k1 private key, mode 0600
	nodeDir = "node"    // go-ethereum data directory
	// nodeName names the node instance directory: Dir/node/geth/chaindata.
	nodeName = "geth"
)

// Config configures a dev chain.
type Config struct {
	// Dir holds the chain database and the developer key. It is created
	// when missing. Required.
	Dir string
	// Listen is the host:port of the JSON-RPC HTTP server; the host must be
	// a loopback address or "localhost", or empty for 127.0.0.1. Port 0
	// picks a free port. Default DefaultListen.
	Listen string
	// Logger receives the node's own log lines. go-ethereum's chain and
	// state code logs to its global root logger (go-ethereum/log), which
	// discards unless the program sets it. Default slog.Default().
	Logger *slog.Logger
}

// Chain is a running dev chain.
type Chain struct {
	stack  *node.Node
	eth    *eth.Ethereum
	client *ethclient.Client
	key    *ecdsa.PrivateKey
	url    string
	log    *slog.Logger

	stopSync chan struct{}
	synced   sync.WaitGroup

	stopSeal chan struct{}
	sealing  sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start opens or creates the chain in cfg.Dir and starts serving JSON-RPC.
// Only one Chain may use a directory at a time.
func Start(ctx context.Context, cfg Config) (*Chain, error) {
	if cfg.Dir == "" {
		return nil, errors.New("devchain: Config.Dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	host, port, err := loopbackAddr(cfg.Listen)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The node opens its HTTP server only after the database and the
	// Ethereum service are set up, and cannot fully undo them when the
	// port is taken, so check the port first (node.Start still reports
	// the error if another process takes the port in between).
	if port != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return nil, fmt.Errorf("devchain: listen on %s: %w", cfg.Listen, err)
		}
		ln.Close()
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("devchain: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devchain: create dir: %w", err)
	}
	key, err := loadOrCreateKey(filepath.Join(dir, keyFile), cfg.Logger)
	if err != nil {
		return nil, err
	}
	addr := crypto.PubkeyToAddress(key.PublicKey)

	nodeCfg := node.DefaultConfig
	nodeCfg.Name = nodeName
	nodeCfg.DataDir = filepath.Join(dir, nodeDir)
	nodeCfg.IPCPath = ""
	nodeCfg.HTTPHost = host
	nodeCfg.HTTPPort = port
	nodeCfg.HTTPModules = []string{"eth", "net", "web3"}
	nodeCfg.HTTPVirtualHosts = []string{"localhost"}
	nodeCfg.UseLightweightKDF = true
	nodeCfg.P2P = p2p.Config{MaxPeers: 0, NoDiscovery: true, NoDial: true, ListenAddr: ""}
	nodeCfg.Logger = gethlog.NewLogger(cfg.Logger.Handler()).With("component", "devchain")

	stack, err := node.New(&nodeCfg)
	if err != nil {
		// node.New fails when another process holds the directory lock.
		return nil, fmt.Errorf("devchain: open node in %s: %w", nodeCfg.DataDir, err)
	}
	c, err := start(stack, key, addr, cfg.Logger)
	if err != nil {
		if cerr := stack.Close(); cerr != nil && !errors.Is(cerr, node.ErrNodeStopped) {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

func start(stack *node.Node, key *ecdsa.PrivateKey, addr common.Address, logger *slog.Logger) (*Chain, error) {
	genesis, err := genesisFor(stack, addr)
	if err != nil {
		return nil, err
	}
	ethCfg := ethconfig.Defaults
	ethCfg.Genesis = genesis // nil: reuse the chain in the database
	ethCfg.NetworkId = ChainID
	ethCfg.SyncMode = ethconfig.FullSync
	ethCfg.StateScheme = rawdb.HashScheme
	ethCfg.NoPruning = true // archive: commit each block's state trie at once
	ethCfg.SnapshotCache = 0
	// No log index: eth_getLogs scans block blooms instead, which is cheap
	// on a dev chain, while the index costs seconds at each start (tens of
	// seconds under the race detector, where pebble checks invariants).
	ethCfg.LogNoHistory = true
	ethCfg.Miner.GasPrice = big.NewInt(1) // as geth --dev
	ethCfg.Miner.PendingFeeRecipient = addr

	backend, err := eth.New(stack, &ethCfg)
	if err != nil {
		return nil, fmt.Errorf("devchain: start ethereum service: %w", err)
	}
	filterSystem := filters.NewFilterSystem(backend.APIBackend, filters.Config{
		LogCacheSize:  ethCfg.FilterLogCacheSize,
		LogQueryLimit: ethCfg.LogQueryLimit,
		RangeLimit:    ethCfg.RangeLimit,
	})
	stack.RegisterAPIs([]rpc.API{{Namespace: "eth", Service: filters.NewFilterAPI(filterSystem)}})

	// As cmd/geth does for --dev, period 0: a block is sealed whenever the
	// pool holds executable transactions. The sealing loop is ours, not the
	// one catalyst.RegisterSimulatedBeaconAPIs starts: that one is not
	// stopped before the node closes its database, and a block sealed while
	// the node shuts down dereferences a nil block and crashes the process.
	beacon, err := catalyst.NewSimulatedBeacon(0, addr, backend)
	if err != nil {
		return nil, fmt.Errorf("devchain: start simulated beacon: %w", err)
	}
	stack.RegisterLifecycle(beacon)

	c := &Chain{
		stack:    stack,
		eth:      backend,
		key:      key,
		log:      logger,
		stopSync: make(chan struct{}),
		stopSeal: make(chan struct{}),
	}
	// Sync the database log after each new head so a block, once reported,
	// also survives a power loss, not only a killed process.
	heads := make(chan core.ChainHeadEvent, 16)
	sub := backend.BlockChain().SubscribeChainHeadEvent(heads)
	c.synced.Add(1)
	go c.syncLoop(heads, sub)

	if err := stack.Start(); err != nil {
		c.stopSyncLoop()
		return nil, fmt.Errorf("devchain: start node (http %s:%d): %w", stack.Config().HTTPHost, stack.Config().HTTPPort, err)
	}
	txs := make(chan core.NewTxsEvent, 16)
	txSub := backend.TxPool().SubscribeTransactions(txs, true)
	c.sealing.Add(1)
	go c.sealLoop(beacon, txs, txSub)
	c.url = stack.HTTPEndpoint()
	c.client = ethclient.NewClient(stack.Attach())
	head := backend.BlockChain().CurrentBlock()
	logger.Info("dev chain started",
		slog.String("url", c.url),
		slog.Uint64("chain_id", ChainID),
		slog.Uint64("block", head.Number.Uint64()),
		slog.String("address", addr.Hex()))
	return c, nil
}

// genesisFor returns the developer genesis funding addr for a new database,
// or nil for an existing one (the stored genesis is used then, as geth --dev
// does with a datadir, so a go-ethereum upgrade that changes the developer
// genesis does not orphan the chain). An existing chain must fund addr.
func genesisFor(stack *node.Node, addr common.Address) (*core.Genesis, error) {
	if rawdb.PreexistingDatabase(stack.ResolvePath("chaindata")) == "" {
		return core.DeveloperGenesisBlock(GasLimit, &addr), nil
	}
	db, err := stack.OpenDatabaseWithOptions("chaindata", node.DatabaseOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("devchain: open chain database: %w", err)
	}
	defer db.Close()
	if rawdb.ReadCanonicalHash(db, 0) == (common.Hash{}) {
		return core.DeveloperGenesisBlock(GasLimit, &addr), nil
	}
	stored, err := core.ReadGenesis(db)
	if err != nil {
		return nil, fmt.Errorf("devchain: read stored genesis: %w", err)
	}
	if id := stored.Config.ChainID; id == nil || id.Uint64() != ChainID {
		return nil, fmt.Errorf("devchain: stored chain has chain ID %v, want %d", id, ChainID)
	}
	if _, ok := stored.Alloc[addr]; !ok {
		return nil, fmt.Errorf("devchain: stored chain does not fund the key in %s (address %s): the key file was replaced", keyFile, addr)
	}
	return nil, nil
}

func (c *Chain) syncLoop(heads <-chan core.ChainHeadEvent, sub interface {
	Unsubscribe()
	Err() <-chan error
}) {
	defer c.synced.Done()
	defer sub.Unsubscribe()
	for {
		select {
		case <-heads:
			if err := c.eth.ChainDb().SyncKeyValue(); err != nil {
				c.log.Error("dev chain: sync database", slog.Any("error", err))
			}
		case <-sub.Err():
			return
		case <-c.stopSync:
			return
		}
	}
}

// sealLoop seals blocks while the pool holds executable transactions. Close
// stops it, waiting for a block being sealed, before the node stops.
func (c *Chain) sealLoop(beacon *catalyst.SimulatedBeacon, txs <-chan core.NewTxsEvent, sub interface {
	Unsubscribe()
	Err() <-chan error
}) {
	defer c.sealing.Done()
	defer sub.Unsubscribe()
	for {
		select {
		case <-txs:
		case <-sub.Err():
			return
		case <-c.stopSeal:
			return
		}
		for {
			// Wait for the pool's reset after the last block, so Stats
			// counts what is left to seal.
			if err := c.eth.TxPool().Sync(); err != nil {
				return
			}
			if executable, _ := c.eth.TxPool().Stats(); executable == 0 {
				break
			}
			select {
			case <-c.stopSeal:
				return
			default:
			}
			beacon.Commit()
		}
	}
}

func (c *Chain) stopSyncLoop() {
	close(c.stopSync)
	c.synced.Wait()
}

// URL returns the http:// JSON-RPC endpoint the chain listens on.
func (c *Chain) URL() string { return c.url }

// Key returns the developer key, funded in the genesis block.
func (c *Chain) Key() *ecdsa.PrivateKey { return c.key }

// Address returns the developer key's address.
func (c *Chain) Address() common.Address { return crypto.PubkeyToAddress(c.key.PublicKey) }

// ChainID returns the chain ID, always ChainID.
func (c *Chain) ChainID() uint64 { return ChainID }

// Client returns a client connected to the node in process (not over HTTP;
// all namespaces are available). It is closed by Close.
func (c *Chain) Client() *ethclient.Client { return c.client }

// Close stops the node and closes the database. It is safe to call more
// than once.
func (c *Chain) Close() error {
	c.closeOnce.Do(func() {
		c.client.Close()
		close(c.stopSeal)
		c.sealing.Wait()
		c.stopSyncLoop()
		if err := c.stack.Close(); err != nil {
			c.closeErr = fmt.Errorf("devchain: close: %w", err)
		}
		c.log.Info("dev chain stopped", slog.String("url", c.url))
	})
	return c.closeErr
}

// loopbackAddr parses listen and rejects non-loopback hosts.
func loopbackAddr(listen string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("devchain: listen address %q: %w", listen, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("devchain: listen address %q: bad port", listen)
	}
	switch host {
	case "", "localhost":
		host = "127.0.0.1"
	default:
		ip := net.ParseIP(host)
		if ip == nil || !ip.IsLoopback() {
			return "", 0, fmt.Errorf("devchain: listen address %q: host must be a loopback address", listen)
		}
	}
	return host, int(port), nil
}

// loadOrCreateKey reads the key in path, or generates and stores one. A new
// key is written to a temporary file and linked into place, so concurrent
// starts agree on a single key and a crash never leaves a partial key.
func loadOrCreateKey(path string, logger *slog.Logger) (*ecdsa.PrivateKey, error) {
	key, err := readKey(path, logger)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	key, err = crypto.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("devchain: generate key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), keyFile+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	if _, err := tmp.WriteString(hex.EncodeToString(crypto.FromECDSA(key)) + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return readKey(path, logger) // another process won
		}
		return nil, fmt.Errorf("devchain: write key: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	logger.Info("dev chain: generated developer key", slog.String("file", path),
		slog.String("address", crypto.PubkeyToAddress(key.PublicKey).Hex()))
	return key, nil
}

func readKey(path string, logger *slog.Logger) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("devchain: read key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		logger.Warn("dev chain: key file is readable by others", slog.String("file", path),
			slog.String("mode", fi.Mode().Perm().String()))
	}
	key, err := crypto.HexToECDSA(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("devchain: key file %s: %w", path, err)
	}
	return key, nil
}
