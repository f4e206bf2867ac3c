package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/ethclient"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
	"github.com/fhirgate/fhirgate/anchor/evm"
	"github.com/fhirgate/fhirgate/internal/auth"
)

// mainEnv makes the test binary run main with the arguments it holds
// (space-separated): the crash test's gateway process.
const mainEnv = "FHIRGATE_TEST_MAIN_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(mainEnv); args != "" {
		os.Args = append([]string{"fhirgate"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
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

// gatewayProc is `fhirgate serve` in a child process.
type gatewayProc struct {
	cmd  *exec.Cmd
	base string
	out  *bytes.Buffer
}

func startGateway(t *testing.T, args ...string) *gatewayProc {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mainEnv+"=serve --addr "+addr+" "+strings.Join(args, " "))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &gatewayProc{cmd: cmd, base: "http://" + addr, out: &out}
	t.Cleanup(func() { g.kill() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get(g.base + "/healthz"); err == nil {
			resp.Body.Close()
			return g
		}
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("gateway did not start: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *gatewayProc) kill() {
	if g.cmd.ProcessState == nil {
		g.cmd.Process.Kill()
		g.cmd.Wait()
	}
}

func request(ctx context.Context, method, url, token, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// TestCrashAnchoring kills the gateway (and its embedded chain) with
// SIGKILL at random moments under a write load, while anchors are sent
// every 50 ms, and restarts it: afterwards every acknowledged version gets
// a receipt that verifies against the chain, and every tree size was
// anchored once.
func TestCrashAnchoring(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gateway processes")
	}
	dir := t.TempDir()
	chainAddr := freeAddr(t)
	args := []string{"--data-dir", dir, "--chain-listen", chainAddr, "--anchor-interval", "50ms", "--log-level", "warn"}
	key, err := auth.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	token, err := key.Sign(auth.Claims{Subject: "crash", Scope: "system/*.cruds"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	type ack struct{ id, body string }
	var mu sync.Mutex
	var acked []ack
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := range 3 {
		g := startGateway(t, args...)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					body := fmt.Sprintf(`{"resourceType":"Patient","name":[{"family":"Crash%d-%d-%d"}]}`, round, w, i)
					status, b, err := request(ctx, http.MethodPost, g.base+"/fhir/Patient", token, body)
					if err != nil || status != http.StatusCreated {
						continue // not acknowledged
					}
					var res struct{ ID string }
					json.Unmarshal(b, &res)
					mu.Lock()
					acked = append(acked, ack{res.ID, string(b)})
					mu.Unlock()
				}
			})
		}
		time.Sleep(time.Duration(300+rnd.IntN(700)) * time.Millisecond)
		g.kill()
		cancel()
		wg.Wait()
	}
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	g := startGateway(t, args...)
	client, err := ethclient.DialContext(t.Context(), "http://"+chainAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	addr, err := os.ReadFile(dir + "/chain/anchor-contract")
	if err != nil {
		t.Fatal(err)
	}
	chain, err := evm.New(t.Context(), evm.Config{Client: client, Contract: common.HexToAddress(strings.TrimSpace(string(addr)))})
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for _, a := range acked {
		var rc anchor.Receipt
		deadline := time.Now().Add(30 * time.Second)
		for {
			status, b, err := request(t.Context(), http.MethodGet, g.base+"/fhir/Patient/"+a.id+"/_history/1/$receipt", token, "")
			if err != nil {
				t.Fatal(err)
			}
			if status == http.StatusOK {
				if err := json.Unmarshal(b, &rc); err != nil {
					t.Fatal(err)
				}
				last = b
				break
			}
			if status != http.StatusAccepted || time.Now().After(deadline) {
				t.Fatalf("receipt of acknowledged Patient/%s: %d %s\n%s", a.id, status, b, g.out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := anchor.Verify(t.Context(), &rc, []byte(a.body), chain); err != nil {
			t.Fatalf("Patient/%s: %v", a.id, err)
		}
	}
	sizes := anchortest.Sizes(t, chain)
	t.Logf("%d acknowledged versions verified; %d anchors", len(acked), len(sizes))

	// The CLIs a compliance team runs: verify the last receipt with and
	// without its resource, then a changed resource; audit every anchor.
	rf, vf, bad := dir+"/receipt.json", dir+"/version.json", dir+"/changed.json"
	os.WriteFile(rf, last, 0o600)
	os.WriteFile(vf, []byte(acked[len(acked)-1].body), 0o600)
	os.WriteFile(bad, []byte(strings.Replace(acked[len(acked)-1].body, "Crash", "Crush", 1)), 0o600)
	rpc := "http://" + chainAddr
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--receipt", rf, "--resource", vf, "--rpc", rpc}, "PASS: the resource version is leaf"},
		{[]string{"--receipt", rf, "--rpc", rpc}, "PASS: the leaf is leaf"},
		{[]string{"--receipt", rf, "--resource", bad, "--rpc", rpc}, "FAIL: digest:"},
	} {
		var out bytes.Buffer
		err := verifyCmd(t.Context(), c.args, &out)
		if !strings.HasPrefix(out.String(), c.want) || (err == nil) != strings.HasPrefix(c.want, "PASS") {
			t.Errorf("verify %v: %v\n%s", c.args, err, out.String())
		}
	}
	var out bytes.Buffer
	// (Receipt requests are audited, so anchors go on meanwhile.)
	if err := auditCmd(t.Context(), []string{"--rpc", rpc, "--gateway", g.base}, &out); err != nil || !strings.Contains(out.String(), "consecutive pairs is consistent") {
		t.Errorf("audit: %v\n%s", err, out.String())
	}
}
