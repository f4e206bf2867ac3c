package gateway

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhirgate/fhirgate/anchor"
	"github.com/fhirgate/fhirgate/fhir"
	"github.com/fhirgate/fhirgate/internal/keys"
	"github.com/fhirgate/fhirgate/internal/store"
	"github.com/fhirgate/fhirgate/policy"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are a gateway's Prometheus metrics, in a registry of their own
// (so several Servers can live in one process), served on /metrics.
// Labels never carry PHI: every label value is from a bounded set the
// server chooses (interactions, R4 resource type names, status codes,
// store operations, chain calls, results), never ids, paths, query values
// or tokens.
//
// New makes them, unless Config.Metrics gives them: make them first with
// NewMetrics when something created before the Server reports to them
// (ObserveChainCall, for anchor.ObserveChain). A Metrics serves one Server.
type Metrics struct {
	reg             *prometheus.Registry
	used            atomic.Bool
	integrity       prometheus.Counter
	erasures        prometheus.Counter
	auditFailures   prometheus.Counter
	decisions       *prometheus.CounterVec
	decisionSeconds prometheus.Histogram
	requests        *prometheus.CounterVec
	requestSeconds  *prometheus.HistogramVec
	policyReloads   *prometheus.CounterVec
	storeSeconds    *prometheus.HistogramVec
	storeErrors     *prometheus.CounterVec
	chainSeconds    *prometheus.HistogramVec
	chainErrors     *prometheus.CounterVec
	anchors         *prometheus.CounterVec
	notifications   *prometheus.CounterVec

	// chainFailed names the latest chain call if it failed: /readyz
	// says where the Anchorer's last step failed without its error's
	// text, which can hold the RPC URL and its credentials.
	chainFailed atomic.Pointer[string]
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

// NewMetrics returns the metrics for one Server.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		integrity: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fhirgate_integrity_failures_total",
			Help: "Stored values that failed authentication on read (tampered, corrupted or moved).",
		}),
		erasures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fhirgate_erasures_total",
			Help: "Patient compartments erased (crypto-shredded).",
		}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fhirgate_audit_failures_total",
			Help: "Requests refused because their AuditEvent could not be stored.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_policy_decisions_total",
			Help: "Policy decisions by result (allow, deny, break_glass, error).",
		}, []string{"result"}),
		decisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fhirgate_policy_decision_seconds",
			Help:    "Time to evaluate one policy decision.",
			Buckets: []float64{5e-6, 10e-6, 20e-6, 50e-6, 100e-6, 250e-6, 1e-3, 5e-3, 25e-3},
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_requests_total",
			Help: "HTTP requests by FHIR interaction (or endpoint), R4 resource type (\"\" when none, \"unknown\" when not an R4 type) and status code. A batch's entries are not counted on their own.",
		}, []string{"interaction", "type", "code"}),
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fhirgate_request_duration_seconds",
			Help:    "HTTP request latency by FHIR interaction (or endpoint) and R4 resource type.",
			Buckets: latencyBuckets,
		}, []string{"interaction", "type"}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_policy_reloads_total",
			Help: "Policy reloads from --policy-dir by result (ok, failed: the previous policy kept serving).",
		}, []string{"result"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fhirgate_store_operation_seconds",
			Help:    "Latency of the gateway's store calls (sealing included) by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_store_errors_total",
			Help: "Store calls that failed, by operation (not found, version conflicts, erased resources and client cancellations are outcomes, not errors).",
		}, []string{"op"}),
		chainSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fhirgate_chain_call_seconds",
			Help:    "Latency of the anchoring chain's calls by call (anchor: sent, mined and confirmed).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"call"}),
		chainErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_chain_errors_total",
			Help: "Anchoring chain calls that failed, by call.",
		}, []string{"call"}),
		anchors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_anchors_total",
			Help: "Anchor transactions this process sent, by result: confirmed, failed, superseded (another anchor of a larger tree landed first). Their sum is the anchors sent.",
		}, []string{"result"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_subscription_notifications_total",
			Help: "Subscription rest-hook notifications by result: delivered, retried (an attempt failed, another follows), failed (the last attempt failed: the Subscription is set to error), dropped (its queue was full).",
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.integrity, m.erasures, m.auditFailures, m.decisions, m.decisionSeconds,
		m.requests, m.requestSeconds, m.policyReloads,
		m.storeSeconds, m.storeErrors, m.chainSeconds, m.chainErrors, m.anchors, m.notifications,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Counters of failures start at 0, so that rates and alerts see them.
	for _, r := range []string{"confirmed", "failed", "superseded"} {
		m.anchors.WithLabelValues(r)
	}
	for op := range storeOps {
		m.storeErrors.WithLabelValues(op)
	}
	for call := range chainCalls {
		m.chainErrors.WithLabelValues(call)
	}
	return m
}

func (m *Metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *Metrics) observeDecision(d policy.Decision, err error, took time.Duration) {
	m.decisionSeconds.Observe(took.Seconds())
	switch {
	case err != nil:
		m.decisions.WithLabelValues("error").Inc()
	case d.Allow && d.BreakGlass:
		m.decisions.WithLabelValues("break_glass").Inc()
	case d.Allow:
		m.decisions.WithLabelValues("allow").Inc()
	default:
		m.decisions.WithLabelValues("deny").Inc()
	}
}

// ObservePolicyReload counts a policy reload (wire it to policy.Config.OnReload).
func (s *Server) ObservePolicyReload(err error) {
	if err != nil {
		s.metrics.policyReloads.WithLabelValues("failed").Inc()
		return
	}
	s.metrics.policyReloads.WithLabelValues("ok").Inc()
}

// Requests.

// requestInfo is what the outermost middleware learns of a request from
// inside it: the access record of a FHIR interaction, whose interaction a
// Bundle's handler sets to batch or transaction once parsed.
type requestInfo struct {
	access *access
}

type requestInfoKey struct{}

func requestInfoFrom(ctx context.Context) *requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return ri
}

// routeInteraction maps route names to the interaction label: FHIR's
// restful-interaction codes for the FHIR REST routes, the endpoint for
// the others.
var routeInteraction = map[string]string{
	"read":                "read",
	"vread":               "vread",
	"update":              "update",
	"update-conditional":  "update",
	"delete":              "delete",
	"delete-conditional":  "delete",
	"create":              "create",
	"search":              "search-type",
	"search-post":         "search-type",
	"history-type":        "history-type",
	"history-instance":    "history-instance",
	"metadata":            "capabilities",
	"bundle":              "batch", // or transaction: see interactionOf
	"erase":               "operation",
	"receipt":             "receipts",
	"log":                 "receipts",
	"log-consistency":     "receipts",
	"export":              "export",
	"export-status":       "export",
	"export-cancel":       "export",
	"export-file":         "export",
	"admin-keys":          "admin",
	"websocket":           "websocket",
	"healthz":             "healthz",
	"readyz":              "readyz",
	"metrics":             "metrics",
	"smart-configuration": "smart-configuration",
	"jwks":                "jwks",
	"not-allowed":         "unsupported",
}

// interactionOf returns the interaction label of a request to route name.
func interactionOf(name string, ri *requestInfo) string {
	in, ok := routeInteraction[name]
	if !ok {
		return "unsupported"
	}
	if name == "bundle" && ri != nil && ri.access != nil && ri.access.interaction == "transaction" {
		return "transaction"
	}
	return in
}

// resourceTypeOf returns the type label of a request: its {type} if that
// is an R4 resource type, "unknown" if it is not, "" without one.
func resourceTypeOf(r *http.Request, name string) string {
	if name == "erase" {
		return "Patient"
	}
	t, ok := mux.Vars(r)["type"]
	switch {
	case !ok:
		return ""
	case fhir.IsResourceType(t):
		return t
	}
	return "unknown"
}

func (m *Metrics) observeRequest(r *http.Request, ri *requestInfo, status int, took time.Duration) {
	name := routeName(r)
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answered 200
	}
	code := strconv.Itoa(status)
	if ri == nil {
		return // a batch's entry, run as its own request: the batch counts
	}
	in, typ := interactionOf(name, ri), resourceTypeOf(r, name)
	m.requests.WithLabelValues(in, typ, code).Inc()
	m.requestSeconds.WithLabelValues(in, typ).Observe(took.Seconds())
}

// Store.

var storeOps = map[string]bool{
	store.OpPut: true, store.OpCommit: true, store.OpGetCell: true, store.OpGet: true,
	store.OpGetVersion: true, store.OpHistory: true, store.OpSearch: true, store.OpErase: true,
	store.OpGetKey: true, store.OpPutKey: true, store.OpScanKeys: true, store.OpPing: true,
}

func (m *Metrics) observeStore(op string, took time.Duration, err error) {
	if !storeOps[op] {
		op = "other"
	}
	m.storeSeconds.WithLabelValues(op).Observe(took.Seconds())
	if storeFailure(err) {
		m.storeErrors.WithLabelValues(op).Inc()
	}
}

// storeFailure reports whether err is the store failing rather than an
// outcome of the contract a request expects.
func storeFailure(err error) bool {
	switch {
	case err == nil, errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrConflict),
		errors.Is(err, store.ErrErased), errors.Is(err, context.Canceled):
		return false
	}
	return true
}

// ownedLister is what $erase needs of the sealed store (erase.go).
type ownedLister interface {
	Owned(ctx context.Context, t, owner string) ([]string, error)
}

// observeStore returns st timing its calls into m, keeping the optional
// method the gateway looks for on its store.
func observeStore(st store.Store, m *Metrics) store.Store {
	o := store.Observe(st, m.observeStore)
	if ol, ok := st.(ownedLister); ok {
		return struct {
			*store.Observed
			ownedLister
		}{o, ol}
	}
	return o
}

// Chain.

var chainCalls = map[string]bool{
	anchor.CallLatest: true, anchor.CallRootAt: true, anchor.CallAnchor: true,
	anchor.CallFind: true, anchor.CallAnchored: true,
}

// ObserveChainCall records a call of the anchoring chain: pass it to
// anchor.ObserveChain.
func (m *Metrics) ObserveChainCall(call string, took time.Duration, err error) {
	if !chainCalls[call] {
		call = "other"
	}
	m.chainSeconds.WithLabelValues(call).Observe(took.Seconds())
	failed := err != nil && !errors.Is(err, anchor.ErrNotGrowing) && !errors.Is(err, context.Canceled)
	if failed {
		m.chainErrors.WithLabelValues(call).Inc()
		m.chainFailed.Store(&call)
	} else {
		m.chainFailed.Store(nil)
	}
	if call != anchor.CallAnchor {
		return
	}
	switch {
	case err == nil:
		m.anchors.WithLabelValues("confirmed").Inc()
	case errors.Is(err, anchor.ErrNotGrowing):
		m.anchors.WithLabelValues("superseded").Inc()
	default:
		m.anchors.WithLabelValues("failed").Inc()
	}
}

// Subscriptions.

func (m *Metrics) observeNotification(result string) {
	m.notifications.WithLabelValues(result).Inc()
}

// Anchoring lag.

const (
	// lagTTL is how long a reading of the anchoring lag is served again.
	lagTTL = time.Second
	// lagTimeout bounds reading it from the store.
	lagTimeout = time.Second
)

// lagCache holds the latest reading of the anchoring lag.
type lagCache struct {
	mu  sync.Mutex
	at  time.Time
	lag anchor.Lag
	err error
}

// anchorLag returns the log's anchoring lag, read from the shared store
// at most once per lagTTL (concurrent callers wait for one read).
func (s *Server) anchorLag(ctx context.Context) (anchor.Lag, error) {
	c := &s.lag
	c.mu.Lock()
	defer c.mu.Unlock()
	now := s.now()
	if age := now.Sub(c.at); !c.at.IsZero() && age >= 0 && age < lagTTL {
		return c.lag, c.err
	}
	ctx, cancel := context.WithTimeout(ctx, lagTimeout)
	defer cancel()
	c.lag, c.err = s.cfg.Log.Lag(ctx)
	c.at = now
	return c.lag, c.err
}

// anchorView is the anchoring lag as /readyz and /metrics tell it.
type anchorView struct {
	lag anchor.Lag
	// sinceLast and oldest are in seconds; sinceLast < 0: unknown.
	sinceLast, oldest float64
	lagging           bool
}

func (s *Server) anchorView(lag anchor.Lag) anchorView {
	now := s.now()
	v := anchorView{lag: lag, sinceLast: -1}
	if !lag.LastAnchor.IsZero() {
		v.sinceLast = max(now.Sub(lag.LastAnchor).Seconds(), 0)
	}
	wait := time.Duration(-1)
	switch {
	case lag.Unanchored() == 0:
	case !lag.Oldest.IsZero():
		wait = max(now.Sub(lag.Oldest), 0)
	case !lag.LastAnchor.IsZero():
		wait = max(now.Sub(lag.LastAnchor), 0)
	}
	if wait >= 0 {
		v.oldest = wait.Seconds()
	}
	v.lagging = s.cfg.Anchor != nil && wait > s.cfg.AnchorMaxLag
	return v
}

// lastAnchorError is the Anchorer's last error as /readyz may tell it
// (unauthenticated): where it failed, not its text, which can hold the
// chain's RPC URL with its credentials. "" when this process does not
// hold the lease or its last step succeeded.
func (s *Server) lastAnchorError() string {
	if s.cfg.Anchor == nil {
		return ""
	}
	st := s.cfg.Anchor.Status()
	if !st.Leader || st.LastError == nil {
		return ""
	}
	if call := s.metrics.chainFailed.Load(); call != nil {
		return "chain call " + *call + " failed"
	}
	if errors.Is(st.LastError, context.DeadlineExceeded) {
		return "anchoring step timed out"
	}
	if errors.Is(st.LastError, keys.ErrIntegrity) {
		return "anchoring step failed: integrity failure"
	}
	return "anchoring step failed; see the server log"
}

var (
	descTreeSize = prometheus.NewDesc("fhirgate_anchor_tree_size",
		"Leaves committed to the transparency log (read from the shared store).", nil, nil)
	descAnchoredSize = prometheus.NewDesc("fhirgate_anchor_anchored_size",
		"Tree size of the latest recorded anchor.", nil, nil)
	descUnanchored = prometheus.NewDesc("fhirgate_anchor_unanchored_leaves",
		"Leaves committed that no recorded anchor covers yet.", nil, nil)
	descSinceLast = prometheus.NewDesc("fhirgate_anchor_seconds_since_last",
		"Seconds since the latest anchor was recorded (absent when none was, or it was recorded without its time).", nil, nil)
	descOldest = prometheus.NewDesc("fhirgate_anchor_oldest_unanchored_seconds",
		"Seconds the oldest unanchored leaf has waited (0 when every leaf is anchored).", nil, nil)
	descLagging = prometheus.NewDesc("fhirgate_anchor_lagging",
		"1 when anchoring is on and the oldest unanchored leaf has waited longer than the gateway's AnchorMaxLag (/readyz says degraded).", nil, nil)
	descLeader = prometheus.NewDesc("fhirgate_anchor_leader",
		"1 when this process holds the anchoring lease.", nil, nil)
)

// anchorCollector reports the anchoring lag at scrape time, from the
// store every gateway process shares, so that any of them answers alike.
type anchorCollector struct{ s *Server }

func (c anchorCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTreeSize, descAnchoredSize, descUnanchored, descSinceLast, descOldest, descLagging, descLeader} {
		ch <- d
	}
}

func (c anchorCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	if s.cfg.Anchor != nil {
		ch <- gauge(descLeader, s.cfg.Anchor.Status().Leader)
	}
	lag, err := s.anchorLag(context.Background())
	if err != nil {
		// The store is down: /metrics still answers, without these.
		s.log.Debug("anchoring lag unavailable", "error", err)
		return
	}
	v := s.anchorView(lag)
	ch <- prometheus.MustNewConstMetric(descTreeSize, prometheus.GaugeValue, float64(lag.Size))
	ch <- prometheus.MustNewConstMetric(descAnchoredSize, prometheus.GaugeValue, float64(lag.AnchoredSize))
	ch <- prometheus.MustNewConstMetric(descUnanchored, prometheus.GaugeValue, float64(lag.Unanchored()))
	if v.sinceLast >= 0 {
		ch <- prometheus.MustNewConstMetric(descSinceLast, prometheus.GaugeValue, v.sinceLast)
	}
	ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, v.oldest)
	if s.cfg.Anchor != nil {
		ch <- gauge(descLagging, v.lagging)
	}
}

func gauge(d *prometheus.Desc, b bool) prometheus.Metric {
	v := 0.0
	if b {
		v = 1
	}
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
}
