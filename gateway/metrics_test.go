package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common"
	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/anchor/anchortest"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/gateway"
	"github.com/fhirgate/fhirgate/internal/store"
)

// metricsURL is the /metrics URL of s.
func (s *server) metricsURL() string { return strings.TrimSuffix(s.base, "/fhir") + "/metrics" }

// scrape returns /metrics: its text and its samples, keyed by series as
// the text format writes them (name{label="value",...}, labels sorted).
func scrape(t *testing.T, s *server) (string, map[string]float64) {
	t.Helper()
	r := s.do(t, http.MethodGet, s.metricsURL(), "").want(t, http.StatusOK)
	samples := map[string]float64{}
	for line := range strings.SplitSeq(string(r.body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return string(r.body), samples
}

// wantSamples checks each series has its value.
func wantSamples(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for series, v := range want {
		g, ok := got[series]
		switch {
		case !ok:
			t.Errorf("/metrics lacks %s", series)
		case g != v:
			t.Errorf("%s = %v, want %v", series, g, v)
		}
	}
}

// wantPositive checks each series is there and above 0.
func wantPositive(t *testing.T, got map[string]float64, series ...string) {
	t.Helper()
	for _, s := range series {
		if got[s] <= 0 {
			t.Errorf("%s = %v, want > 0", s, got[s])
		}
	}
}

var labelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// labels returns the label values of every series of metric name.
func labels(samples map[string]float64, name string) []map[string]string {
	var out []map[string]string
	for series := range samples {
		n, rest, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ls := map[string]string{}
		for _, m := range labelRE.FindAllStringSubmatch(rest, -1) {
			ls[m[1]] = m[2]
		}
		out = append(out, ls)
	}
	return out
}

// interactions are the values the interaction label may take.
var interactions = map[string]bool{
	"read": true, "vread": true, "update": true, "patch": true, "delete": true,
	"history-instance": true, "history-type": true, "history-system": true,
	"create": true, "search-type": true, "search-system": true, "capabilities": true,
	"batch": true, "transaction": true, "operation": true,
	"receipts": true, "export": true, "admin": true, "websocket": true, "healthz": true,
	"readyz": true, "metrics": true, "smart-configuration": true, "jwks": true, "unsupported": true,
}

// TestMetricsRequests: /metrics counts requests by FHIR interaction,
// resource type and status, and times them, a Bundle by its type and not
// its entries; the store's calls are timed by operation; no label, nor
// anything else /metrics serves, holds an id, a name, a query value or a
// token.
func TestMetricsRequests(t *testing.T) {
	eachStore(t, func(t *testing.T, st store.Store) {
		a := newAuthServer(t, st)
		sys := a.tok(t, "", "system/*.cruds", "")
		const (
			id     = "zq-metrics-id-7781"
			family = "Xylophonides"
		)
		a.as(t, sys, http.MethodPut, "/Patient/"+id, patientBody(id, family, 1)).want(t, http.StatusCreated)
		created := a.createAs(t, sys, "Patient", patient("Marblewright"))
		a.as(t, sys, http.MethodGet, "/Patient/"+id, "").want(t, http.StatusOK)
		a.as(t, sys, http.MethodGet, "/Patient/"+id+"/_history/1", "").want(t, http.StatusOK)
		if n := a.as(t, sys, http.MethodGet, "/Patient?family="+family, "").want(t, http.StatusOK).bundle(t).total(t); n != 1 {
			t.Fatalf("search by family found %d", n)
		}
		a.as(t, sys, http.MethodGet, "/Patient/no-such-patient-9917", "").want(t, http.StatusNotFound)
		a.do(t, http.MethodGet, "/Patient/"+id, "").want(t, http.StatusUnauthorized)
		a.as(t, sys, http.MethodGet, "/NotAType/"+id, "").wantOutcome(t, http.StatusNotFound)
		tx := a.as(t, sys, http.MethodPost, "", `{"resourceType":"Bundle","type":"transaction","entry":[
			{"fullUrl":"urn:uuid:0b0e5b9c-8c79-4d0f-9d0b-5c1a9e1f2a33","resource":`+patient("Quillfeather")+`,"request":{"method":"POST","url":"Patient"}}]}`).
			want(t, http.StatusOK).txResponse(t, "transaction-response")
		txID := strings.Split(tx.Entry[0].Response.Location, "/")[1]
		a.as(t, sys, http.MethodPost, "", `{"resourceType":"Bundle","type":"batch","entry":[
			{"resource":`+patient("Brackenbury")+`,"request":{"method":"POST","url":"Patient"}},
			{"request":{"method":"GET","url":"Patient/`+id+`"}}]}`).want(t, http.StatusOK)
		a.do(t, http.MethodGet, "/metadata", "").want(t, http.StatusOK)

		body, m := scrape(t, a.server)
		wantSamples(t, m, map[string]float64{
			`fhirgate_requests_total{code="201",interaction="update",type="Patient"}`:      1,
			`fhirgate_requests_total{code="201",interaction="create",type="Patient"}`:      1, // not the batch's entry
			`fhirgate_requests_total{code="200",interaction="read",type="Patient"}`:        1, // not the batch's entry
			`fhirgate_requests_total{code="200",interaction="vread",type="Patient"}`:       1,
			`fhirgate_requests_total{code="200",interaction="search-type",type="Patient"}`: 1,
			`fhirgate_requests_total{code="404",interaction="read",type="Patient"}`:        1,
			`fhirgate_requests_total{code="401",interaction="read",type="Patient"}`:        1,
			`fhirgate_requests_total{code="404",interaction="read",type="unknown"}`:        1,
			`fhirgate_requests_total{code="200",interaction="transaction",type=""}`:        1,
			`fhirgate_requests_total{code="200",interaction="batch",type=""}`:              1,
			`fhirgate_requests_total{code="200",interaction="capabilities",type=""}`:       1,
			`fhirgate_request_duration_seconds_count{interaction="read",type="Patient"}`:   3,
			`fhirgate_request_duration_seconds_count{interaction="transaction",type=""}`:   1,
			`fhirgate_store_errors_total{op="get"}`:                                        0, // a 404 is not a store error
		})
		if _, ok := m[`fhirgate_request_duration_seconds_bucket{interaction="create",type="Patient",le="0.0005"}`]; !ok {
			t.Errorf("/metrics lacks the create latency buckets")
		}
		wantPositive(t, m, `fhirgate_store_operation_seconds_count{op="commit"}`,
			`fhirgate_store_operation_seconds_count{op="get"}`, `fhirgate_store_operation_seconds_count{op="search"}`,
			`fhirgate_store_operation_seconds_count{op="get_version"}`, `fhirgate_store_operation_seconds_sum{op="commit"}`)
		for _, ls := range labels(m, "fhirgate_requests_total") {
			if !interactions[ls["interaction"]] {
				t.Errorf("interaction label %q", ls["interaction"])
			}
			if typ := ls["type"]; typ != "" && typ != "unknown" && !fhir.IsResourceType(typ) {
				t.Errorf("type label %q", typ)
			}
		}
		for _, phi := range []string{id, created, txID, family, "Marblewright", "Quillfeather", "Brackenbury", "no-such-patient", "NotAType", sys, "urn:uuid"} {
			if strings.Contains(body, phi) {
				t.Errorf("/metrics contains %q", phi)
			}
		}
	})
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// add moves the clock on (past the gateway's 1 s cache of the lag).
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// readiness is the /readyz body.
type readiness struct {
	Status string `json:"status"`
	Store  struct {
		OK *bool `json:"ok"`
	} `json:"store"`
	Anchoring struct {
		Enabled          *bool    `json:"enabled"`
		TreeSize         *int64   `json:"tree_size"`
		AnchoredSize     *int64   `json:"anchored_size"`
		UnanchoredLeaves *int64   `json:"unanchored_leaves"`
		SinceLast        *float64 `json:"seconds_since_last_anchor"`
		Oldest           *float64 `json:"oldest_unanchored_seconds"`
		Lagging          *bool    `json:"lagging"`
		LastError        string   `json:"last_error"`
	} `json:"anchoring"`
	raw string
}

func readyz(t *testing.T, s *server, status int) readiness {
	t.Helper()
	r := s.do(t, http.MethodGet, strings.TrimSuffix(s.base, "/fhir")+"/readyz", "").want(t, status)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("/readyz Content-Type %q", ct)
	}
	var out readiness
	dec := json.NewDecoder(strings.NewReader(string(r.body)))
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("/readyz body %s: %v", r.body, err)
	}
	if out.Store.OK == nil || out.Anchoring.Enabled == nil || out.Anchoring.TreeSize == nil || out.Anchoring.AnchoredSize == nil ||
		out.Anchoring.UnanchoredLeaves == nil || out.Anchoring.Lagging == nil {
		t.Fatalf("/readyz lacks members: %s", r.body)
	}
	out.raw = string(r.body)
	return out
}

// anchoredServer is an open gateway whose transparency log is anchored on
// a simulated chain, with a settable clock.
type anchoredServer struct {
	*server
	st       store.Store
	log      *anchor.Log
	anchorer *anchor.Anchorer
	clock    *clock
}

func newAnchoredServer(t *testing.T, wrapChain func(anchor.Chain) anchor.Chain, acfg anchor.AnchorerConfig) *anchoredServer {
	t.Helper()
	st := boltStore(t)
	log := anchor.NewLog(st.(interface{ Backend() store.Store }).Backend().(anchor.Storage))
	sim := anchortest.Simulated(t, nil)
	metrics := gateway.NewMetrics()
	// As `fhirgate serve` wires it: the chain is made, and observed,
	// before the gateway.
	var chain anchor.Chain = sim.Chain(t, sim.Key)
	if wrapChain != nil {
		chain = wrapChain(chain)
	}
	acfg.Log, acfg.Chain = log, anchor.ObserveChain(chain, metrics.ObserveChainCall)
	anchorer := anchor.NewAnchorer(acfg)
	clk := newClock()
	srv := newServer(t, gateway.Config{Store: st, Log: log, Anchor: anchorer, Metrics: metrics, Now: clk.Now, AnchorMaxLag: time.Minute})
	return &anchoredServer{server: srv, st: st, log: log, anchorer: anchorer, clock: clk}
}

// TestMetricsAnchoring: the lag gauges and /readyz follow the log: none
// before any write, leaves waiting after writes, degraded once the oldest
// has waited longer than AnchorMaxLag, all anchored after a step; the
// chain's calls and the anchors sent are counted.
func TestMetricsAnchoring(t *testing.T) {
	s := newAnchoredServer(t, nil, anchor.AnchorerConfig{})

	_, m := scrape(t, s.server)
	wantSamples(t, m, map[string]float64{
		"fhirgate_anchor_tree_size": 0, "fhirgate_anchor_anchored_size": 0, "fhirgate_anchor_unanchored_leaves": 0,
		"fhirgate_anchor_oldest_unanchored_seconds": 0, "fhirgate_anchor_lagging": 0, "fhirgate_anchor_leader": 0,
		`fhirgate_anchors_total{result="confirmed"}`: 0,
	})
	if _, ok := m["fhirgate_anchor_seconds_since_last"]; ok {
		t.Errorf("fhirgate_anchor_seconds_since_last before any anchor")
	}
	r := readyz(t, s.server, http.StatusOK)
	if r.Status != "ready" || !*r.Store.OK || !*r.Anchoring.Enabled || *r.Anchoring.TreeSize != 0 || *r.Anchoring.UnanchoredLeaves != 0 ||
		r.Anchoring.SinceLast != nil || *r.Anchoring.Lagging || r.Anchoring.LastError != "" {
		t.Fatalf("/readyz of an empty log: %s", r.raw)
	}

	for i := range 3 {
		s.create(t, "Patient", patient(fmt.Sprint("Lag", i)))
	}
	s.clock.add(2 * time.Second)
	_, m = scrape(t, s.server)
	waiting := m["fhirgate_anchor_unanchored_leaves"]
	if waiting < 3 || m["fhirgate_anchor_tree_size"] != waiting || m["fhirgate_anchor_anchored_size"] != 0 {
		t.Fatalf("after 3 creates: tree size %v, anchored %v, unanchored %v", m["fhirgate_anchor_tree_size"], m["fhirgate_anchor_anchored_size"], waiting)
	}
	if o := m["fhirgate_anchor_oldest_unanchored_seconds"]; o < 2 || o > 10 {
		t.Errorf("oldest unanchored leaf waited %vs, want about 2", o)
	}
	r = readyz(t, s.server, http.StatusOK)
	if r.Status != "ready" || *r.Anchoring.UnanchoredLeaves != int64(waiting) || *r.Anchoring.Lagging || r.Anchoring.Oldest == nil {
		t.Fatalf("/readyz with leaves waiting under AnchorMaxLag: %s", r.raw)
	}

	// Past AnchorMaxLag: degraded, still 200 (writes go on).
	s.clock.add(2 * time.Minute)
	r = readyz(t, s.server, http.StatusOK)
	if r.Status != "degraded" || !*r.Anchoring.Lagging || *r.Anchoring.Oldest < 120 {
		t.Fatalf("/readyz lagging: %s", r.raw)
	}
	if s.do(t, http.MethodHead, strings.TrimSuffix(s.base, "/fhir")+"/readyz", "").status != http.StatusOK {
		t.Errorf("HEAD /readyz degraded is not 200")
	}
	_, m = scrape(t, s.server)
	wantSamples(t, m, map[string]float64{"fhirgate_anchor_lagging": 1})

	if ok, err := s.anchorer.Step(t.Context()); !ok || err != nil {
		t.Fatalf("Step = %v, %v", ok, err)
	}
	s.clock.add(2 * time.Second)
	_, m = scrape(t, s.server)
	size := m["fhirgate_anchor_tree_size"]
	wantSamples(t, m, map[string]float64{
		"fhirgate_anchor_unanchored_leaves": 0, "fhirgate_anchor_anchored_size": size, "fhirgate_anchor_lagging": 0,
		"fhirgate_anchor_oldest_unanchored_seconds":                   0,
		`fhirgate_anchors_total{result="confirmed"}`:                  1,
		`fhirgate_anchors_total{result="failed"}`:                     0,
		`fhirgate_chain_call_seconds_count{call="anchor"}`:            1,
		`fhirgate_chain_call_seconds_count{call="latest"}`:            1,
		`fhirgate_chain_call_seconds_bucket{call="anchor",le="+Inf"}`: 1,
	})
	if size < waiting {
		t.Errorf("tree size %v after anchoring, was %v", size, waiting)
	}
	if v := m[`fhirgate_chain_errors_total{call="anchor"}`]; v != 0 {
		t.Errorf("%v chain errors counted without a failure", v)
	}
	if since, ok := m["fhirgate_anchor_seconds_since_last"]; !ok || since < 0 || since > 200 {
		t.Errorf("fhirgate_anchor_seconds_since_last = %v, %v", since, ok)
	}
	r = readyz(t, s.server, http.StatusOK)
	if r.Status != "ready" || *r.Anchoring.UnanchoredLeaves != 0 || *r.Anchoring.AnchoredSize != int64(size) ||
		r.Anchoring.SinceLast == nil || r.Anchoring.Oldest != nil || *r.Anchoring.Lagging {
		t.Fatalf("/readyz after anchoring: %s", r.raw)
	}

	// A write after a long quiet spell waits from its own commit, not from
	// the last anchor: not lagging.
	s.clock.add(time.Hour)
	s.create(t, "Patient", patient("Quiet"))
	s.clock.add(2 * time.Second)
	r = readyz(t, s.server, http.StatusOK)
	if r.Status != "ready" || *r.Anchoring.UnanchoredLeaves == 0 || r.Anchoring.SinceLast == nil || *r.Anchoring.SinceLast < 3600 {
		t.Fatalf("/readyz after a quiet hour and one write: %s", r.raw)
	}
}

// downChain is a chain whose anchor transactions fail with an error that
// names the RPC URL and its key.
type downChain struct{ anchor.Chain }

const rpcSecret = "rpc-key-5ec2e7"

func (downChain) Anchor(context.Context, uint64, common.Hash) (anchor.Anchor, error) {
	return anchor.Anchor{}, errors.New(`Post "https://rpc.example.org/v3/` + rpcSecret + `": connection refused`)
}

// TestReadyzChainDown: while the chain fails, writes go on, /readyz turns
// degraded (200) once the leaves wait past AnchorMaxLag, and says where
// the leader's step failed without the error's text; the failures are
// counted.
func TestReadyzChainDown(t *testing.T) {
	s := newAnchoredServer(t, func(c anchor.Chain) anchor.Chain { return downChain{c} },
		anchor.AnchorerConfig{Interval: time.Millisecond, Poll: 5 * time.Millisecond, Holder: "test"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { s.anchorer.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	s.create(t, "Patient", patient("Down"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.anchorer.Status()
		if st.Leader && st.LastError != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the anchorer did not fail: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.clock.add(2 * time.Second)
	r := readyz(t, s.server, http.StatusOK)
	if r.Status != "ready" || r.Anchoring.LastError != "chain call anchor failed" || *r.Anchoring.UnanchoredLeaves == 0 {
		t.Fatalf("/readyz with the chain down, under AnchorMaxLag: %s", r.raw)
	}
	s.clock.add(2 * time.Minute)
	r = readyz(t, s.server, http.StatusOK)
	if r.Status != "degraded" || !*r.Anchoring.Lagging || r.Anchoring.LastError != "chain call anchor failed" {
		t.Fatalf("/readyz with the chain down past AnchorMaxLag: %s", r.raw)
	}
	// Writes go on.
	s.create(t, "Patient", patient("StillWriting"))
	body, m := scrape(t, s.server)
	wantSamples(t, m, map[string]float64{"fhirgate_anchor_leader": 1, "fhirgate_anchor_lagging": 1, `fhirgate_anchors_total{result="confirmed"}`: 0})
	wantPositive(t, m, `fhirgate_anchors_total{result="failed"}`, `fhirgate_chain_errors_total{call="anchor"}`,
		`fhirgate_chain_call_seconds_count{call="latest"}`)
	for _, leak := range []string{rpcSecret, "rpc.example.org"} {
		if strings.Contains(r.raw, leak) || strings.Contains(body, leak) {
			t.Errorf("/readyz or /metrics contains %q", leak)
		}
	}
}

// TestReadyzUnavailable: with the store closed, /readyz answers 503,
// status unavailable; GET and HEAD alike. /metrics still answers.
func TestReadyzUnavailable(t *testing.T) {
	s := newAnchoredServer(t, nil, anchor.AnchorerConfig{})
	readyz(t, s.server, http.StatusOK)
	if err := s.st.Close(); err != nil {
		t.Fatal(err)
	}
	s.clock.add(2 * time.Second)
	r := readyz(t, s.server, http.StatusServiceUnavailable)
	if r.Status != "unavailable" || *r.Store.OK {
		t.Fatalf("/readyz with the store closed: %s", r.raw)
	}
	if got := s.do(t, http.MethodHead, strings.TrimSuffix(s.base, "/fhir")+"/readyz", ""); got.status != http.StatusServiceUnavailable || len(got.body) != 0 {
		t.Errorf("HEAD /readyz = %d with %d bytes", got.status, len(got.body))
	}
	_, m := scrape(t, s.server)
	if _, ok := m["fhirgate_anchor_tree_size"]; ok {
		t.Errorf("a tree size reported with the store closed")
	}
	wantPositive(t, m, `fhirgate_store_errors_total{op="ping"}`)
}

// TestReadyzNoAnchoring: without an Anchorer nothing lags, whatever waits.
func TestReadyzNoAnchoring(t *testing.T) {
	st := boltStore(t)
	log := anchor.NewLog(st.(interface{ Backend() store.Store }).Backend().(anchor.Storage))
	clk := newClock()
	s := newServer(t, gateway.Config{Store: st, Log: log, Now: clk.Now})
	s.create(t, "Patient", patient("Off"))
	clk.add(time.Hour)
	r := readyz(t, s, http.StatusOK)
	if r.Status != "ready" || *r.Anchoring.Enabled || *r.Anchoring.Lagging || *r.Anchoring.UnanchoredLeaves == 0 {
		t.Fatalf("/readyz with anchoring off: %s", r.raw)
	}
	_, m := scrape(t, s)
	for _, series := range []string{"fhirgate_anchor_leader", "fhirgate_anchor_lagging"} {
		if _, ok := m[series]; ok {
			t.Errorf("%s with anchoring off", series)
		}
	}
}

// TestMetricsAnchorLagShared: two gateway processes on one Redis report
// the same lag, whichever anchors.
func TestMetricsAnchorLagShared(t *testing.T) {
	stores := sharedRedis(t, 2)
	var (
		servers [2]*server
		logs    [2]*anchor.Log
	)
	for i, st := range stores {
		logs[i] = anchor.NewLog(st.(interface{ Backend() store.Store }).Backend().(anchor.Storage))
		servers[i] = newServer(t, gateway.Config{Store: st, Log: logs[i]})
	}
	servers[0].create(t, "Patient", patient("Shared"))
	_, m := scrape(t, servers[1])
	if m["fhirgate_anchor_unanchored_leaves"] == 0 {
		t.Fatalf("the other process sees no leaf waiting")
	}
	sim := anchortest.Simulated(t, nil)
	if ok, err := anchor.NewAnchorer(anchor.AnchorerConfig{Log: logs[0], Chain: sim.Chain(t, sim.Key)}).Step(t.Context()); !ok || err != nil {
		t.Fatalf("Step = %v, %v", ok, err)
	}
	time.Sleep(1100 * time.Millisecond) // past the 1 s cache
	_, m = scrape(t, servers[1])
	if m["fhirgate_anchor_unanchored_leaves"] != 0 || m["fhirgate_anchor_anchored_size"] == 0 {
		t.Fatalf("the other process after the anchor: unanchored %v, anchored %v", m["fhirgate_anchor_unanchored_leaves"], m["fhirgate_anchor_anchored_size"])
	}
}

// TestMetricsSubscriptionNotifications: rest-hook deliveries, retries
// and final failures are counted.
func TestMetricsSubscriptionNotifications(t *testing.T) {
	s := newSubServer(t, gateway.Config{SubscriptionRetries: 2, SubscriptionBackoff: 5 * time.Millisecond})
	// 1: 500, 2: 200 (delivered after a retry); 3, 4: 500 (failed).
	h := newHook(t, func(n int) int {
		if n == 2 {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	s.create(t, "Subscription", subscriptionBody("active", "Observation?patient=Patient/p1", "rest-hook", h.url, "application/fhir+json"))
	s.create(t, "Observation", obsFor("Patient/p1"))
	h.next(t, "attempt 1")
	h.next(t, "attempt 2")
	s.create(t, "Observation", obsFor("Patient/p1"))
	h.next(t, "attempt 3")
	h.next(t, "attempt 4")
	want := map[string]float64{
		`fhirgate_subscription_notifications_total{result="delivered"}`: 1,
		`fhirgate_subscription_notifications_total{result="retried"}`:   2,
		`fhirgate_subscription_notifications_total{result="failed"}`:    1,
	}
	deadline := time.Now().Add(notifyWait)
	for {
		_, m := scrape(t, s)
		ok := true
		for k, v := range want {
			ok = ok && m[k] == v
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			wantSamples(t, m, want)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
