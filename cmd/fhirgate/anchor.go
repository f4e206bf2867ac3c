package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ethereum/go-ethereum/accounts/keystore"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor/devchain"
	"github.com/fhirgate/fhirgate/anchor/evm"
)

// chainFlags say where roots are anchored: the embedded dev chain (the
// default) or an external EVM node.
type chainFlags struct {
	RPC, KeyFile, KeyPasswordFile, Contract string
	ChainID                                 uint64
	Listen                                  string
	Confirmations                           uint64
}

func (c *chainFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.RPC, "chain-rpc", "", "JSON-RPC URL of an EVM node to anchor on (default: the embedded dev chain in DATA-DIR/chain)")
	fs.StringVar(&c.KeyFile, "chain-key-file", "", "the anchoring account's key: a go-ethereum keystore JSON file (password from --chain-key-password-file) or a file holding the hex private key")
	fs.StringVar(&c.KeyPasswordFile, "chain-key-password-file", "", "file holding the keystore's password")
	fs.Uint64Var(&c.ChainID, "chain-id", 0, "EIP-155 chain ID of --chain-rpc (0: ask the node)")
	fs.StringVar(&c.Contract, "anchor-contract", "", "address of the Anchor contract on --chain-rpc (deploy one with `fhirgate anchor deploy`)")
	fs.Uint64Var(&c.Confirmations, "anchor-confirmations", 0, "blocks that must follow an anchoring transaction before it is recorded")
}

// anchorFlags configure anchoring in serve.
type anchorFlags struct {
	chainFlags
	Enabled  bool
	Interval time.Duration
	Batch    int64
}

func (c *anchorFlags) register(fs *flag.FlagSet) {
	c.chainFlags.register(fs)
	fs.StringVar(&c.Listen, "chain-listen", devchain.DefaultListen, "loopback host:port where the embedded dev chain serves Ethereum JSON-RPC")
	fs.BoolVar(&c.Enabled, "anchor", true, "anchor the transparency log's roots on chain (false: leaves are still logged, nothing is anchored)")
	fs.DurationVar(&c.Interval, "anchor-interval", 5*time.Second, "anchor the root at least this often while the log grows")
	fs.Int64Var(&c.Batch, "anchor-batch", 10000, "anchor as soon as this many leaves wait")
}

// readKey reads an anchoring key: a keystore JSON file or a hex key.
func readKey(file, passwordFile string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if s := strings.TrimSpace(string(b)); !strings.HasPrefix(s, "{") {
		k, err := crypto.HexToECDSA(strings.TrimPrefix(s, "0x"))
		if err != nil {
			return nil, fmt.Errorf("%s: not a keystore file nor a hex private key", file)
		}
		return k, nil
	}
	var pw []byte
	if passwordFile != "" {
		if pw, err = os.ReadFile(passwordFile); err != nil {
			return nil, err
		}
	} else if env, ok := os.LookupEnv("FHIRGATE_CHAIN_KEY_PASSWORD"); ok {
		pw = []byte(env)
	}
	k, err := keystore.DecryptKey(b, strings.TrimRight(string(pw), "\r\n"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return k.PrivateKey, nil
}

// openChain returns the chain to anchor on and a func closing it: an
// external node (--chain-rpc), or the embedded dev chain in
// DATA-DIR/chain, where the Anchor contract is deployed on first start
// and its address kept in DATA-DIR/chain/anchor-contract.
func openChain(ctx context.Context, c chainFlags, dataDir string, log *slog.Logger) (*evm.Chain, func(), error) {
	cfg := evm.Config{ChainID: c.ChainID, Confirmations: c.Confirmations, Logger: log}
	if c.RPC != "" {
		if c.KeyFile == "" || c.Contract == "" {
			return nil, nil, errors.New("--chain-rpc needs --chain-key-file and --anchor-contract")
		}
		if !common.IsHexAddress(c.Contract) {
			return nil, nil, fmt.Errorf("--anchor-contract %q is not an address", c.Contract)
		}
		key, err := readKey(c.KeyFile, c.KeyPasswordFile)
		if err != nil {
			return nil, nil, err
		}
		client, err := ethclient.DialContext(ctx, c.RPC)
		if err != nil {
			return nil, nil, err
		}
		cfg.Client, cfg.Key, cfg.Contract = client, key, common.HexToAddress(c.Contract)
		ch, err := evm.New(ctx, cfg)
		if err != nil {
			client.Close()
			return nil, nil, err
		}
		log.Info("anchoring on chain", slog.Uint64("chain_id", ch.ChainID()), slog.String("contract", ch.Contract().Hex()),
			slog.String("account", crypto.PubkeyToAddress(key.PublicKey).Hex()))
		return ch, client.Close, nil
	}
	dir := filepath.Join(dataDir, "chain")
	dc, err := devchain.Start(ctx, devchain.Config{Dir: dir, Listen: c.Listen, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	closeDev := func() {
		if err := dc.Close(); err != nil {
			log.Warn("dev chain close", slog.Any("error", err))
		}
	}
	addrFile := filepath.Join(dir, "anchor-contract")
	var addr common.Address
	if b, err := os.ReadFile(addrFile); err == nil && common.IsHexAddress(strings.TrimSpace(string(b))) {
		addr = common.HexToAddress(strings.TrimSpace(string(b)))
	} else {
		if addr, _, err = evm.Deploy(ctx, dc.Client(), dc.Key(), dc.ChainID()); err != nil {
			closeDev()
			return nil, nil, err
		}
		if err := os.WriteFile(addrFile, []byte(addr.Hex()+"\n"), 0o600); err != nil {
			closeDev()
			return nil, nil, err
		}
	}
	cfg.Client, cfg.Key, cfg.Contract, cfg.ChainID = dc.Client(), dc.Key(), addr, dc.ChainID()
	ch, err := evm.New(ctx, cfg)
	if err != nil {
		closeDev()
		return nil, nil, err
	}
	log.Warn("DEV CHAIN: anchoring on the embedded go-ethereum dev chain (use --chain-rpc for a real network)",
		slog.String("rpc", dc.URL()), slog.Uint64("chain_id", ch.ChainID()), slog.String("contract", addr.Hex()))
	return ch, closeDev, nil
}

// holderID names this process in the anchoring lease.
func holderID() string {
	h, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", h, os.Getpid(), hex.EncodeToString(b))
}

// anchorCmd runs `fhirgate anchor deploy`.
func anchorCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "deploy" {
		return errors.New("usage: fhirgate anchor deploy --chain-rpc URL --chain-key-file FILE [--chain-id N]")
	}
	var c chainFlags
	fs := flag.NewFlagSet("anchor deploy", flag.ContinueOnError)
	c.register(fs)
	if err := envFlags(fs); err != nil {
		return err
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if c.RPC == "" || c.KeyFile == "" {
		return errors.New("anchor deploy needs --chain-rpc and --chain-key-file")
	}
	key, err := readKey(c.KeyFile, c.KeyPasswordFile)
	if err != nil {
		return err
	}
	client, err := ethclient.DialContext(ctx, c.RPC)
	if err != nil {
		return err
	}
	defer client.Close()
	addr, tx, err := evm.Deploy(ctx, client, key, c.ChainID)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", addr.Hex())
	fmt.Fprintf(os.Stderr, "deployed the Anchor contract in transaction %s; owner %s\n", tx.Hex(), crypto.PubkeyToAddress(key.PublicKey).Hex())
	return nil
}
