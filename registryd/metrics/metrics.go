// Package metrics defines every Prometheus metric registryd exports, registered in one
// place on a dedicated registry rather than the process-wide default.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds registryd's collectors and the registry they are registered on.
type Metrics struct {
	Registry *prometheus.Registry
	// HTTPRequests counts client requests by method, kind and status code.
	HTTPRequests *prometheus.CounterVec
	// HTTPResponseBytes counts response body bytes written to clients by kind.
	HTTPResponseBytes *prometheus.CounterVec
}

// New creates the metrics and registers them, with the Go and process collectors, on
// a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_registryd_http_requests_total",
			Help: "Client HTTP requests by method, kind (manifest, blob, tags, base, health, other) and status code.",
		}, []string{"method", "kind", "code"}),
		HTTPResponseBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_registryd_http_response_bytes_total",
			Help: "Response body bytes written to clients by kind.",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.HTTPRequests,
		m.HTTPResponseBytes,
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
