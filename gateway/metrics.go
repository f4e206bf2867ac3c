package gateway

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics, in a registry of its own
// (so several Servers can live in one process). Labels never carry PHI.
type metrics struct {
	reg       *prometheus.Registry
	integrity prometheus.Counter
	erasures  prometheus.Counter
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
	}
	m.reg.MustRegister(m.integrity, m.erasures,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
