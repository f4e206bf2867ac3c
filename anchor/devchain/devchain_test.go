package devchain_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/core/types"
	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient"

	"github.com/fhirgate/fhirgate/anchor/devchain"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func start(t testing.TB, dir string) *devchain.Chain {
	t.Helper()
	c, err := devchain.Start(t.Context(), devchain.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// storeCode is init code that stores v in slot 0, logs it (LOG0 with v as
// data) and deploys a contract whose every call returns slot 0.
func storeCode(v byte) []byte {
	runtime := common.FromHex("60005460005260206000f3") // SLOAD(0) → MSTORE → RETURN 32
	init := []byte{
		0x60, v, 0x60, 0x00, 0x55, // SSTORE(0, v)
		0x60, v, 0x60, 0x00, 0x52, 0x60, 0x20, 0x60, 0x00, 0xa0, // MSTORE(0, v); LOG0(0, 32)
		0x60, byte(len(runtime)), 0x60, 0 /* offset, set below */, 0x60, 0x00, 0x39, // CODECOPY(0, offset, len)
		0x60, byte(len(runtime)), 0x60, 0x00, 0xf3, // RETURN(0, len)
	}
	init[18] = byte(len(init))
	return append(init, runtime...)
}

// send signs and sends a transaction and waits for its receipt.
func send(ctx context.Context, c *ethclient.Client, key *ecdsa.PrivateKey, to *common.Address, value *big.Int, data []byte) (*types.Receipt, error) {
	from := crypto.PubkeyToAddress(key.PublicKey)
	chainID, err := c.ChainID(ctx)
	if err != nil {
		return nil, fmt.Errorf("chain id: %w", err)
	}
	nonce, err := c.PendingNonceAt(ctx, from)
	if err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	head, err := c.HeaderByNumber(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("head: %w", err)
	}
	gas, err := c.EstimateGas(ctx, ethereum.CallMsg{From: from, To: to, Value: value, Data: data})
	if err != nil {
		return nil, fmt.Errorf("estimate gas: %w", err)
	}
	tip := big.NewInt(1_000_000_000)
	tx, err := types.SignNewTx(key, types.LatestSignerForChainID(chainID), &types.DynamicFeeTx{
		ChainID:   chainID,
		Nonce:     nonce,
		GasTipCap: tip,
		GasFeeCap: new(big.Int).Add(tip, new(big.Int).Mul(head.BaseFee, big.NewInt(2))),
		Gas:       gas,
		To:        to,
		Value:     value,
		Data:      data,
	})
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if err := c.SendTransaction(ctx, tx); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		r, err := c.TransactionReceipt(ctx, tx.Hash())
		if err == nil {
			if r.Status != types.ReceiptStatusSuccessful {
				return r, errors.New("transaction failed")
			}
			return r, nil
		}
		// Until the transaction indexer has caught up, go-ethereum answers
		// "transaction indexing is in progress" for unknown transactions
		// (geth --dev does too): retry like ethereum.NotFound.
		if !errors.Is(err, ethereum.NotFound) && !strings.Contains(err.Error(), "indexing is in progress") {
			return nil, fmt.Errorf("receipt: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("receipt: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestStartServesHTTP(t *testing.T) {
	c := start(t, t.TempDir())
	if !strings.HasPrefix(c.URL(), "http://127.0.0.1:") || strings.HasSuffix(c.URL(), ":0") {
		t.Fatalf("URL() = %q, want http://127.0.0.1:<port>", c.URL())
	}
	hc, err := ethclient.Dial(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	id, err := hc.ChainID(t.Context())
	if err != nil {
		t.Fatalf("eth_chainId over HTTP: %v", err)
	}
	if got, want := id.Uint64(), c.ChainID(); got != want || want != 1337 {
		t.Errorf("chain ID = %d, ChainID() = %d, want 1337", got, want)
	}
	bal, err := hc.BalanceAt(t.Context(), c.Address(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if bal.Cmp(new(big.Int).Exp(big.NewInt(10), big.NewInt(30), nil)) < 0 {
		t.Errorf("developer balance = %v, want a large prefunded balance", bal)
	}
	// A value transfer over HTTP is mined at once (a block per transaction).
	to := common.HexToAddress("0x00000000000000000000000000000000000000aa")
	r, err := send(t.Context(), hc, c.Key(), &to, big.NewInt(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.BlockNumber.Uint64() != 1 {
		t.Errorf("first transaction in block %v, want 1", r.BlockNumber)
	}
	// Only eth, net and web3 are served over HTTP.
	var out any
	if err := hc.Client().CallContext(t.Context(), &out, "admin_nodeInfo"); err == nil {
		t.Error("admin_nodeInfo answered over HTTP, want method not found")
	}
	var version string
	if err := hc.Client().CallContext(t.Context(), &version, "net_version"); err != nil || version != "1337" {
		t.Errorf("net_version = %q, %v; want 1337", version, err)
	}
}

func TestRestartKeepsStateAndKey(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	c := start(t, dir)
	key := crypto.FromECDSA(c.Key())

	fi, err := os.Stat(filepath.Join(dir, "dev.key"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %v, want 0600", got)
	}

	to := common.HexToAddress("0x00000000000000000000000000000000000000bb")
	if _, err := send(ctx, c.Client(), c.Key(), &to, big.NewInt(12345), nil); err != nil {
		t.Fatal(err)
	}
	r, err := send(ctx, c.Client(), c.Key(), nil, nil, storeCode(42))
	if err != nil {
		t.Fatal(err)
	}
	contract := r.ContractAddress
	want, err := c.Client().BlockNumber(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want < 2 {
		t.Fatalf("block number = %d after two transactions, want ≥ 2", want)
	}
	wantHead, err := c.Client().HeaderByNumber(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	c = start(t, dir)
	if got := crypto.FromECDSA(c.Key()); string(got) != string(key) {
		t.Error("key changed across restart")
	}
	checkState(t, c, wantHead.Hash(), want, contract, 42)
	bal, err := c.Client().BalanceAt(ctx, to, nil)
	if err != nil || bal.Int64() != 12345 {
		t.Errorf("recipient balance = %v, %v; want 12345", bal, err)
	}
	// The restarted chain keeps producing blocks.
	r, err = send(ctx, c.Client(), c.Key(), nil, nil, storeCode(7))
	if err != nil {
		t.Fatalf("transaction after restart: %v", err)
	}
	if got := r.BlockNumber.Uint64(); got != want+1 {
		t.Errorf("transaction after restart in block %d, want %d", got, want+1)
	}
}

// checkState checks the head block and the contract's slot 0.
func checkState(t *testing.T, c *devchain.Chain, wantHash common.Hash, wantNumber uint64, contract common.Address, wantValue byte) {
	t.Helper()
	ctx := t.Context()
	n, err := c.Client().BlockNumber(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != wantNumber {
		t.Fatalf("block number = %d after restart, want %d", n, wantNumber)
	}
	h, err := c.Client().HeaderByNumber(ctx, new(big.Int).SetUint64(wantNumber))
	if err != nil {
		t.Fatal(err)
	}
	if h.Hash() != wantHash {
		t.Errorf("block %d hash = %v, want %v", wantNumber, h.Hash(), wantHash)
	}
	slot, err := c.Client().StorageAt(ctx, contract, common.Hash{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := new(big.Int).SetBytes(slot); got.Int64() != int64(wantValue) {
		t.Errorf("contract slot 0 = %v, want %d", got, wantValue)
	}
	out, err := c.Client().CallContract(ctx, ethereum.CallMsg{To: &contract}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := new(big.Int).SetBytes(out); got.Int64() != int64(wantValue) {
		t.Errorf("contract call = %v, want %d", got, wantValue)
	}
	logs, err := c.Client().FilterLogs(ctx, ethereum.FilterQuery{
		FromBlock: big.NewInt(0), Addresses: []common.Address{contract}})
	if err != nil {
		t.Fatalf("eth_getLogs: %v", err)
	}
	if len(logs) != 1 || new(big.Int).SetBytes(logs[0].Data).Int64() != int64(wantValue) {
		t.Errorf("contract logs = %+v, want one log with data %d", logs, wantValue)
	}
}

const crashEnv = "DEVCHAIN_CRASH_CHILD_DIR"

// TestCrashKeepsState runs the chain in a child process (this test binary,
// re-executed), kills it with SIGKILL after a block was produced and
// restarts the chain in process on the same directory.
func TestCrashKeepsState(t *testing.T) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	if testing.Short() {
		t.Skip("starts a child process")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestCrashKeepsState$", "-test.v")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()

	var number uint64
	var hash common.Hash
	var contract common.Address
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			cmd.Wait()
			t.Fatalf("child exited before producing a block; stderr:\n%s", stderr.String())
		}
		var h, a string
		if _, err := fmt.Sscanf(line, "READY %d %s %s", &number, &h, &a); err != nil {
			t.Fatalf("child line %q: %v", line, err)
		}
		hash, contract = common.HexToHash(h), common.HexToAddress(a)
	case <-time.After(2 * time.Minute):
		t.Fatalf("child did not produce a block in time; stderr:\n%s", stderr.String())
	}

	if err := cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	killed = true
	if err := cmd.Wait(); err == nil {
		t.Fatal("child exited cleanly, want killed")
	}

	c := start(t, dir)
	checkState(t, c, hash, number, contract, 99)
}

func crashChild(t *testing.T, dir string) {
	ctx := context.Background()
	c, err := devchain.Start(ctx, devchain.Config{Dir: dir, Listen: "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		t.Fatalf("child Start: %v", err)
	}
	to := common.HexToAddress("0x00000000000000000000000000000000000000cc")
	if _, err := send(ctx, c.Client(), c.Key(), &to, big.NewInt(1), nil); err != nil {
		t.Fatalf("child transfer: %v", err)
	}
	r, err := send(ctx, c.Client(), c.Key(), nil, nil, storeCode(99))
	if err != nil {
		t.Fatalf("child deploy: %v", err)
	}
	fmt.Printf("READY %d %s %s\n", r.BlockNumber.Uint64(), r.BlockHash.Hex(), r.ContractAddress.Hex())
	os.Stdout.Sync()
	time.Sleep(5 * time.Minute) // wait to be killed
	t.Fatal("child was not killed")
}

func TestListenErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().String()

	tests := []struct {
		name, listen, want string
	}{
		{"port in use", busy, "address already in use"},
		{"not loopback", "0.0.0.0:0", "loopback"},
		{"public ip", "8.8.8.8:8545", "loopback"},
		{"no port", "127.0.0.1", "missing port"},
		{"bad port", "127.0.0.1:99999", "bad port"},
	}
	for _, test := range tests {
		t.Run(test.name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := devchain.Start(t.Context(), devchain.Config{Dir: dir, Listen: test.listen, Logger: testLogger(t)})
			if err == nil {
				c.Close()
				t.Fatalf("Start(Listen %q) succeeded, want error", test.listen)
			}
			if !strings.Contains(err.Error(), test.want) {
				t.Errorf("Start(Listen %q) error = %v, want it to mention %q", test.listen, err, test.want)
			}
		})
	}
}

func TestDirInUse(t *testing.T) {
	dir := t.TempDir()
	start(t, dir)
	c, err := devchain.Start(t.Context(), devchain.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)})
	if err == nil {
		c.Close()
		t.Fatal("second Start on the same Dir succeeded, want error")
	}
	t.Logf("second Start: %v", err)
}

func TestReplacedKeyRejected(t *testing.T) {
	dir := t.TempDir()
	c := start(t, dir)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	other, _ := crypto.GenerateKey()
	if err := crypto.SaveECDSA(filepath.Join(dir, "dev.key"), other); err != nil {
		t.Fatal(err)
	}
	c, err := devchain.Start(t.Context(), devchain.Config{Dir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)})
	if err == nil {
		c.Close()
		t.Fatal("Start with a replaced key succeeded, want error")
	}
	if !strings.Contains(err.Error(), "key") {
		t.Errorf("error = %v, want it to name the key", err)
	}
}
