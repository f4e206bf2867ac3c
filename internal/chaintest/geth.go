// Package chaintest runs a real `geth --dev` for tests that need an
// Ethereum node other than the embedded dev chain (anchor/devchain).
package chaintest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/crypto"
	"github.com/ethereum/go-ethereum/ethclient"
)

// DeveloperKey is the hex private key of the account geth --dev funds and
// unlocks when its data directory has no keystore yet. Copied from
// go-ethereum v1.17.8 cmd/utils/flags.go, DeveloperKey.
const DeveloperKey = "b71c71a67e1177ad4e901695e1b4b9ee17ae16c6668d313eac2f96dbcda3f291"

// GethChainID is the chain ID of geth --dev.
const GethChainID = 1337

// startTimeout bounds the wait for geth to answer eth_chainId.
const startTimeout = 60 * time.Second

// Geth starts `geth --dev --dev.period 0` (a block per transaction) serving
// JSON-RPC (eth, net, web3) on a free loopback port, with its data in a
// test temporary directory, and stops it when the test ends. It returns
// the http:// endpoint and the developer key, which geth funds in its
// genesis block.
//
// The geth binary is $GETH, else bin/geth at the repository root, else
// geth on PATH. When none exists the test is skipped, or fails when the
// CI environment variable is "true". Install it with `make geth`.
func Geth(t testing.TB) (url string, key *ecdsa.PrivateKey) {
	t.Helper()
	bin, err := FindGeth()
	if err != nil {
		msg := fmt.Sprintf("geth not available (%v): run `make geth` to install it into bin/geth, or set GETH to a geth binary", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	key, err = crypto.HexToECDSA(DeveloperKey)
	if err != nil {
		t.Fatalf("chaintest: developer key: %v", err)
	}
	// A free port can be taken between picking and binding it: retry.
	for attempt := 1; ; attempt++ {
		url, err = startGeth(t, bin)
		if err == nil {
			return url, key
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			t.Fatalf("chaintest: %v", err)
		}
	}
}

var errPortTaken = errors.New("port taken")

func startGeth(t testing.TB, bin string) (string, error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	dir := t.TempDir()
	args := []string{
		"--dev", "--dev.period", "0",
		"--http", "--http.addr", "127.0.0.1", "--http.port", strconv.Itoa(port),
		"--http.api", "eth,net,web3",
		"--datadir", dir,
		"--nodiscover", "--maxpeers", "0", "--ipcdisable",
	}
	cmd := exec.Command(bin, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := waitReady(url, exited); err != nil {
		stop()
		if strings.Contains(out.String(), "address already in use") {
			return "", fmt.Errorf("%w: %d", errPortTaken, port)
		}
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w (%v)", err, waitErr)
		}
		return "", fmt.Errorf("geth %s: %w; output:\n%s", strings.Join(args, " "), err, tail(out.String(), 40))
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("geth output:\n%s", tail(out.String(), 40))
		}
	})
	return url, nil
}

var errExited = errors.New("exited before answering")

// waitReady polls eth_chainId until it answers GethChainID.
func waitReady(url string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := ethclient.DialContext(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close()
	var lastErr error
	for {
		id, err := c.ChainID(ctx)
		if err == nil {
			if id.Uint64() != GethChainID {
				return fmt.Errorf("chain ID %v, want %d", id, GethChainID)
			}
			return nil
		}
		lastErr = err
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("no answer to eth_chainId in %v: %w", startTimeout, lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FindGeth returns $GETH, else bin/geth at the repository root (the first
// directory above the working directory that holds go.mod), else geth on
// PATH (`make geth` installs bin/geth).
func FindGeth() (string, error) {
	if p := os.Getenv("GETH"); p != "" {
		if err := executable(p); err != nil {
			return "", fmt.Errorf("GETH=%s: %w", p, err)
		}
		return p, nil
	}
	if root, err := RepoRoot(); err == nil {
		p := filepath.Join(root, "bin", "geth")
		if executable(p) == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("geth")
	if err != nil {
		return "", errors.New("no $GETH, no bin/geth and no geth on PATH")
	}
	return p, nil
}

// RepoRoot is the first directory above the working directory (a
// package's, under go test) holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found")
		}
		dir = parent
	}
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// syncBuffer is a bytes.Buffer safe for the writes of a child's output
// and concurrent reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
