//go:build faults

package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/auth"
	"github.com/fhirgate/fhirgate/internal/chaintest"
)

// fhirgateBin is a copy of $FHIRGATE_BIN (default bin/fhirgate), made
// at start: others may rebuild bin/fhirgate while the tests run.
var fhirgateBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	src := os.Getenv("FHIRGATE_BIN")
	if src == "" {
		root, err := chaintest.RepoRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults:", err)
			return 1
		}
		src = filepath.Join(root, "bin", "fhirgate")
	}
	tmp, err := os.MkdirTemp("", "faults-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	fhirgateBin = filepath.Join(tmp, "fhirgate")
	if err := copyFile(src, fhirgateBin); err != nil {
		fmt.Fprintf(os.Stderr, "faults: %v (build it with `make build`, or set FHIRGATE_BIN)\n", err)
		return 1
	}
	return m.Run()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// need skips the test when a program it needs is missing, or fails it
// under CI=true (`make test-faults` installs what it needs).
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := fmt.Sprintf("%s unavailable: %v", what, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (required under CI=true)")
	}
	t.Skip(msg)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startProc(t *testing.T, name, logFile, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits for the process to end (SIGKILL after
// grace).
func (p *proc) stop(grace time.Duration) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// gateway is `fhirgate serve` on a fixed address, restartable.
type gateway struct {
	t      *testing.T
	name   string
	addr   string
	args   []string
	logDir string
	p      *proc
	starts int
}

// newGateway returns a gateway serving on a free loopback address with
// args; start starts it.
func newGateway(t *testing.T, name string, args ...string) *gateway {
	g := &gateway{t: t, name: name, addr: freeAddr(t), args: args, logDir: t.TempDir()}
	t.Cleanup(func() {
		if g.p != nil && !g.p.exited() {
			g.p.kill()
		}
		if t.Failed() && g.p != nil {
			t.Logf("%s log (last lines of start %d):\n%s", g.name, g.starts, g.p.tail(40))
		}
	})
	return g
}

// base is the gateway's root URL, http://host:port.
func (g *gateway) base() string { return "http://" + g.addr }

// start starts the gateway and waits until /healthz answers.
func (g *gateway) start() {
	g.t.Helper()
	g.starts++
	args := append([]string{"serve", "--addr", g.addr, "--log-level", "warn"}, g.args...)
	g.p = startProc(g.t, g.name, filepath.Join(g.logDir, fmt.Sprintf("%s-%d.log", g.name, g.starts)), fhirgateBin, args...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base()+"/healthz", nil)
		res, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if g.p.exited() {
			g.t.Fatalf("%s exited at start %d:\n%s", g.name, g.starts, g.p.tail(40))
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s did not answer /healthz within 60s:\n%s", g.name, g.p.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gateway) kill() { g.p.kill() }

func (g *gateway) stop() { g.p.stop(30 * time.Second) }

// devToken returns a system token (system/*.cruds) from the dev issuer
// whose key the gateway serving dataDir uses, creating that key.
func devToken(t *testing.T, dataDir string) string {
	t.Helper()
	key, err := auth.LoadOrCreateDevKey(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := key.Sign(auth.Claims{Subject: "faults", Scope: "system/*.cruds"}, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// keysInit writes a new key-encryption key file with `fhirgate keys init`.
func keysInit(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "kek.keys")
	out, err := exec.Command(fhirgateBin, "keys", "init", "--kek-file", f).CombinedOutput()
	if err != nil {
		t.Fatalf("keys init: %v: %s", err, out)
	}
	return f
}

// client sends FHIR requests with a bearer token.
type client struct {
	base  string // the FHIR base, http://host:port/fhir
	token string
	hc    *http.Client
}

func newClient(base, token string, timeout time.Duration) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &client{base: base, token: token, hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// resp is a fully read response.
type resp struct {
	status int
	header http.Header
	body   []byte
	took   time.Duration
}

func (r resp) String() string {
	b := string(r.body)
	if len(b) > 300 {
		b = b[:300] + "…"
	}
	return fmt.Sprintf("%d %s", r.status, b)
}

// do sends a request to base+"/"+path (or to path if absolute).
func (c *client) do(ctx context.Context, method, path string, body []byte) (resp, error) {
	u := path
	if !strings.HasPrefix(u, "http") {
		u = c.base + "/" + strings.TrimPrefix(path, "/")
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return resp{}, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	return c.send(req)
}

func (c *client) send(req *http.Request) (resp, error) {
	start := time.Now()
	res, err := c.hc.Do(req)
	if err != nil {
		return resp{took: time.Since(start)}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b, took: time.Since(start)}, err
}

// syncCounter counts under a mutex; for figures logged at the end.
type syncCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *syncCounter) add(k string, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k] += d
}

func (c *syncCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for _, k := range sortedKeys(c.n) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c.n[k]))
	}
	return strings.Join(parts, " ")
}
