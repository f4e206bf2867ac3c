//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirgate/fhirgate/internal/store/redisstore/redistest"
)

const (
	redisOutage = 10 * time.Second
	redisHang   = 6 * time.Second
	// failFast bounds every answer while Redis is down.
	failFast = 5 * time.Second
)

// outcome is one answer during the Redis outage test.
type outcome struct {
	at     time.Time
	what   string
	status int // 0: no answer
	err    error
	took   time.Duration
	bad    string // why the answer is wrong, if it is
}

// TestRedisOutage kills redis-server (SIGKILL) under a load of creates,
// reads and searches, keeps it down for 10 s and restarts it on the same
// port and data directory (its append-only file); then stops it (SIGSTOP)
// for 6 s, hung with its connections open. While it is down or hung every
// request is answered within 5 s with 503, a Retry-After header and an
// OperationOutcome (issue code transient) — never a hang, never a 500 —
// and /readyz answers 503; afterwards the gateway recovers by itself:
// /readyz 200, writes succeed, the writes acknowledged before the outage
// are there, anchoring resumes (receipts of writes made after it verify)
// and a Subscription made before the outage notifies.
func TestRedisOutage(t *testing.T) {
	t.Parallel() // two at a time (-parallel defaults to GOMAXPROCS)
	srv, err := redistest.StartServer(t.TempDir())
	need(t, "redis-server", err)
	t.Cleanup(srv.Stop)
	dir := t.TempDir()
	chainAddr := freeAddr(t)
	g := newGateway(t, "gateway", "--redis-url", srv.URL(), "--kek-file", keysInit(t), "--data-dir", dir,
		"--chain-listen", chainAddr, "--anchor-interval", "500ms")
	g.start()
	// A client timeout well above failFast: a hang shows as no answer.
	c := newClient(g.base()+"/fhir", devToken(t, dir), 20*time.Second)
	ctx := t.Context()

	// A Subscription made before the outage, notified of Patients in
	// group "after" (written once Redis is back).
	var hooks atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hooks.Add(1) }))
	defer hook.Close()
	sub := fmt.Sprintf(`{"resourceType":"Subscription","status":"requested","reason":"faults","criteria":"Patient?identifier=%s","channel":{"type":"rest-hook","endpoint":%q}}`,
		url.QueryEscape(sysGroup+"|after"), hook.URL+"/hook")
	if r, err := c.do(ctx, http.MethodPost, "Subscription", []byte(sub)); err != nil || r.status != http.StatusCreated {
		t.Fatalf("create Subscription: %v %v", r, err)
	}

	var (
		mu       sync.Mutex
		acked    []version // creates acknowledged
		outcomes []outcome
		seq      atomic.Int64
	)
	record := func(o outcome) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	}
	// check judges one answer: 2xx, or 503 as the outage requires.
	check := func(what string, r resp, err error) outcome {
		o := outcome{at: time.Now(), what: what, status: r.status, err: err, took: r.took}
		switch {
		case err != nil:
			o.bad = "no answer: " + err.Error()
		case r.status/100 == 2:
		case r.status == http.StatusServiceUnavailable:
			var oo struct {
				ResourceType string
				Issue        []struct{ Code string }
			}
			switch {
			case r.header.Get("Retry-After") == "":
				o.bad = "503 without Retry-After"
			case json.Unmarshal(r.body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 || oo.Issue[0].Code != "transient":
				o.bad = "503 without an OperationOutcome (issue code transient): " + r.String()
			case r.took > failFast:
				o.bad = fmt.Sprintf("503 after %v", r.took)
			}
		default:
			o.bad = "answered " + r.String()
		}
		return o
	}
	load := func(ctx context.Context, group string) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					var (
						what string
						r    resp
						err  error
						v    version
					)
					switch i % 4 {
					case 0, 2:
						what = "create"
						uid := fmt.Sprintf("%s-%d", group, seq.Add(1))
						r, err = c.do(ctx, http.MethodPost, "Patient", []byte(patientJSON("", uid, group, "", "Outage")))
						if err == nil && r.status == http.StatusCreated {
							var p struct{ ID string }
							json.Unmarshal(r.body, &p)
							v = version{typ: "Patient", id: p.ID, ver: 1, body: r.body}
						}
					case 1:
						what = "read"
						mu.Lock()
						var id string
						if len(acked) > 0 {
							id = acked[(i*7+w)%len(acked)].id
						}
						mu.Unlock()
						if id == "" {
							continue
						}
						r, err = c.do(ctx, http.MethodGet, "Patient/"+id, nil)
					case 3:
						what = "search"
						r, err = c.do(ctx, http.MethodGet, "Patient?identifier="+url.QueryEscape(sysGroup+"|"+group)+"&_count=10", nil)
					}
					if ctx.Err() != nil {
						return
					}
					record(check(what, r, err))
					if v.id != "" {
						mu.Lock()
						acked = append(acked, v)
						mu.Unlock()
					}
					if err != nil || r.status/100 != 2 {
						time.Sleep(50 * time.Millisecond) // as a client honouring nothing would not
					}
				}
			})
		}
		wg.Wait()
	}
	// /readyz, every 200 ms.
	type probe struct {
		at     time.Time
		status int
		took   time.Duration
	}
	var probes []probe
	probeCtx, stopProbes := context.WithCancel(ctx)
	probesDone := make(chan struct{})
	go func() {
		defer close(probesDone)
		pc := newClient(g.base(), "", 20*time.Second)
		for probeCtx.Err() == nil {
			r, err := pc.do(probeCtx, http.MethodGet, g.base()+"/readyz", nil)
			if probeCtx.Err() != nil {
				return
			}
			if err != nil {
				r.status = 0
			}
			mu.Lock()
			probes = append(probes, probe{time.Now(), r.status, r.took})
			mu.Unlock()
			time.Sleep(200 * time.Millisecond)
		}
	}()

	// Before: 2 s of load.
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { load(lctx, "before"); close(loadDone) }()
	time.Sleep(2 * time.Second)
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	if before == 0 {
		t.Fatal("no write was acknowledged before the outage")
	}

	// waitWrite waits until a write made after from is acknowledged (30 s
	// at most).
	waitWrite := func(from time.Time, what string) time.Time {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		for deadline := from.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			mu.Lock()
			m := len(acked)
			mu.Unlock()
			if m > n {
				return time.Now()
			}
		}
		stopLoad()
		<-loadDone
		t.Fatalf("no write succeeded within 30 s of %s\n%s", what, g.p.tail(20))
		return time.Time{}
	}

	// Down: killed for 10 s, restarted on its port and data.
	killed := time.Now()
	srv.Stop()
	time.Sleep(redisOutage)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	recovered := waitWrite(restarted, "Redis restarting")
	time.Sleep(3 * time.Second)
	// Hung: stopped (SIGSTOP) for 6 s, its connections open.
	paused := time.Now()
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(redisHang)
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	recoveredHang := waitWrite(resumed, "Redis resuming")
	time.Sleep(2 * time.Second)
	stopLoad()
	<-loadDone
	stopProbes()
	<-probesDone

	// Judge the answers (the load and the probes have stopped).
	var (
		during, duringHang, ok503, bad int
		auditFailed                    int
		worst503, worstHang            time.Duration
		badKinds                       = map[string]int{}
	)
	for _, o := range outcomes {
		if o.at.After(killed) && o.at.Before(restarted) {
			during++
		}
		hung := o.at.After(paused) && o.at.Before(resumed.Add(failFast))
		if hung {
			duringHang++
		}
		if o.status == http.StatusServiceUnavailable {
			ok503++
			worst503 = max(worst503, o.took)
			if hung {
				worstHang = max(worstHang, o.took)
			}
		}
		if o.bad != "" {
			bad++
			if strings.Contains(o.bad, "could not be audited") {
				auditFailed++
			}
			k := o.what + ": " + o.bad
			if i := strings.Index(k, "{"); i > 0 {
				k = k[:i] // one kind per status and message start
			}
			if badKinds[k]++; badKinds[k] <= 3 {
				t.Errorf("%s %v after the kill: %s", o.what, o.at.Sub(killed).Round(time.Millisecond), o.bad)
			}
		}
	}
	if bad > 0 {
		var kinds []string
		for _, k := range sortedKeys(badKinds) {
			kinds = append(kinds, fmt.Sprintf("%d× %s", badKinds[k], k))
		}
		t.Errorf("%d of %d answers were wrong:\n  %s", bad, len(outcomes), strings.Join(kinds, "\n  "))
		if auditFailed > 0 {
			t.Errorf("%d requests failing for the store's outage were answered 500 \"could not be audited\": their AuditEvent cannot be stored either, and the audit failure replaces the 503 (gateway/audit.go respondAudited writes errAuditFailed without its cause)", auditFailed)
		}
	}
	if ok503 == 0 {
		t.Error("no request was answered 503 while Redis was down")
	}
	// /readyz: 503 while down or hung (after 1 s to notice, 3 s when a
	// probe may have started before the hang), 200 after.
	var readyDown, readyWrong int
	var readyBack, readyBackHang time.Time
	var worstReady time.Duration
	for _, p := range probes {
		worstReady = max(worstReady, p.took)
		switch {
		case p.at.After(killed.Add(time.Second)) && p.at.Before(restarted),
			p.at.After(paused.Add(3*time.Second)) && p.at.Before(resumed):
			if p.status != http.StatusServiceUnavailable {
				readyWrong++
				if readyWrong <= 3 {
					t.Errorf("/readyz %v after the kill (Redis down or hung): %d, want 503", p.at.Sub(killed).Round(time.Millisecond), p.status)
				}
			} else {
				readyDown++
			}
		case p.at.After(restarted) && p.at.Before(paused) && p.status == http.StatusOK && readyBack.IsZero():
			readyBack = p.at
		case p.at.After(resumed) && p.status == http.StatusOK && readyBackHang.IsZero():
			readyBackHang = p.at
		}
	}
	if readyBack.IsZero() || readyBackHang.IsZero() {
		t.Errorf("/readyz did not answer 200 after Redis restarted (%v) and after it resumed (%v)", !readyBack.IsZero(), !readyBackHang.IsZero())
	}
	if worstReady > failFast {
		t.Errorf("/readyz took up to %v", worstReady)
	}
	versions := slices.Clone(acked)

	// Acknowledged writes are all there.
	for _, v := range versions {
		r, err := c.do(ctx, http.MethodGet, "Patient/"+v.id, nil)
		if err != nil || r.status != http.StatusOK || etagVersion(r.header) != 1 {
			t.Errorf("acknowledged Patient/%s: %v %v", v.id, r, err)
		}
	}
	// The Subscription made before the outage notifies.
	hooksBefore := hooks.Load()
	if r, err := c.do(ctx, http.MethodPost, "Patient", []byte(patientJSON("", "after-1", "after", "", "After"))); err != nil || r.status != http.StatusCreated {
		t.Fatalf("create after the outage: %v %v", r, err)
	}
	start := time.Now()
	for hooks.Load() == hooksBefore {
		if time.Since(start) > 20*time.Second {
			t.Error("the Subscription made before the outage did not notify a match written after it within 20 s")
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	notified := time.Since(start)
	// Anchoring resumed: receipts of the writes made after the restart
	// (and before) verify.
	contract, err := os.ReadFile(filepath.Join(dir, "chain", "anchor-contract"))
	if err != nil {
		t.Fatal(err)
	}
	chain := openChain(t, "http://"+chainAddr, string(contract))
	verified := verifyReceipts(t, c, chain, versions, 60*time.Second)
	t.Logf("Redis killed for %v: %d answers meanwhile; /readyz 200 again %v and the first write acknowledged %v after the restart",
		redisOutage, during, readyBack.Sub(restarted).Round(time.Millisecond), recovered.Sub(restarted).Round(time.Millisecond))
	t.Logf("Redis hung (SIGSTOP) for %v: %d answers meanwhile (worst 503 %v); /readyz 200 again %v and the first write acknowledged %v after it resumed",
		redisHang, duringHang, worstHang.Round(time.Millisecond), readyBackHang.Sub(resumed).Round(time.Millisecond), recoveredHang.Sub(resumed).Round(time.Millisecond))
	t.Logf("%d answers in all: %d were 503 (worst %v), %d wrong; /readyz answered 503 ×%d while Redis was down or hung, its slowest answer in %v",
		len(outcomes), ok503, worst503.Round(time.Millisecond), bad, readyDown, worstReady.Round(time.Millisecond))
	t.Logf("%d acknowledged creates (%d before the outage) all readable, %d receipts verified; the Subscription notified %v after a match",
		len(versions), before, verified, notified.Round(100*time.Microsecond))
}
