package gateway

import (
	"net/http"
	"strconv"
	"time"

	"github.com/fhirgate/fhirgate/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics, in a registry of its own
// (so several Servers can live in one process). Labels never carry PHI:
// route names, methods, status codes and decision results only.
type metrics struct {
	reg             *prometheus.Registry
	integrity       prometheus.Counter
	erasures        prometheus.Counter
	auditFailures   prometheus.Counter
	decisions       *prometheus.CounterVec
	decisionSeconds prometheus.Histogram
	requestSeconds  *prometheus.HistogramVec
	policyReloads   *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
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
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fhirgate_http_request_duration_seconds",
			Help:    "HTTP request latency by route, method and status code.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method", "code"}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirgate_policy_reloads_total",
			Help: "Policy reloads from --policy-dir by result (ok, failed: the previous policy kept serving).",
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.integrity, m.erasures, m.auditFailures, m.decisions, m.decisionSeconds,
		m.requestSeconds, m.policyReloads,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) observeDecision(d policy.Decision, err error, took time.Duration) {
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

func (m *metrics) observeRequest(route, method string, status int, took time.Duration) {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
	default:
		method = "other" // clients choose methods: keep the label set bounded
	}
	m.requestSeconds.WithLabelValues(route, method, strconv.Itoa(status)).Observe(took.Seconds())
}

// ObservePolicyReload counts a policy reload (wire it to policy.Config.OnReload).
func (s *Server) ObservePolicyReload(err error) {
	if err != nil {
		s.metrics.policyReloads.WithLabelValues("failed").Inc()
		return
	}
	s.metrics.policyReloads.WithLabelValues("ok").Inc()
}
