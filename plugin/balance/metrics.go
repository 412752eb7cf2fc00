package balance

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Error kinds, the kind label of hopless_plugin_errors_total.
const (
	kindTransport = "transport" // the transport failed before response headers
	kindTimeout   = "timeout"   // no response headers within ResponseHeader
	kindStatus    = "status"    // a 5xx answer
	kindStall     = "stall"     // the body delivered no byte for Stall
	kindBody      = "body"      // the body broke mid-stream
	kindHealth    = "health"    // an active check failed
)

// Metrics are the balancer's Prometheus collectors. One Metrics may be shared by the
// balancers of several image hosts: the endpoint label tells them apart. A nil
// *Metrics records nothing.
type Metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	healthy  *prometheus.GaugeVec
	hedges   prometheus.Counter
	resumes  prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg; a nil reg leaves them
// unregistered. Registering twice on one registry panics, as MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_requests_total",
			Help: `Attempts sent to each endpoint by outcome: the HTTP status code, "error" for a failure without an answer, "canceled" for a hedge loser or a caller that gave up.`,
		}, []string{"endpoint", "code"}),
		bytes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_bytes_total",
			Help: "Response body bytes delivered to containerd from each endpoint.",
		}, []string{"endpoint"}),
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_errors_total",
			Help: "Endpoint failures by kind (transport, timeout, status, stall, body, health).",
		}, []string{"endpoint", "kind"}),
		healthy: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopless_plugin_endpoint_healthy",
			Help: "1 while the endpoint takes traffic, 0 while it is ejected or half-open.",
		}, []string{"endpoint"}),
		hedges: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_hedges_total",
			Help: "Requests sent to a further endpoint because no response headers arrived within the hedge delay.",
		}),
		resumes: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_resumes_total",
			Help: "Stalled or broken response bodies resumed with a Range request on another endpoint.",
		}),
	}
}

func (m *Metrics) request(endpoint string, code int) {
	if m != nil {
		m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
	}
}

func (m *Metrics) requestOutcome(endpoint, outcome string) {
	if m != nil {
		m.requests.WithLabelValues(endpoint, outcome).Inc()
	}
}

func (m *Metrics) addBytes(endpoint string, n int) {
	if m != nil && n > 0 {
		m.bytes.WithLabelValues(endpoint).Add(float64(n))
	}
}

func (m *Metrics) error(endpoint, kind string) {
	if m != nil {
		m.errors.WithLabelValues(endpoint, kind).Inc()
	}
}

func (m *Metrics) setHealthy(endpoint string, up bool) {
	if m != nil {
		v := 0.0
		if up {
			v = 1
		}
		m.healthy.WithLabelValues(endpoint).Set(v)
	}
}

func (m *Metrics) hedge() {
	if m != nil {
		m.hedges.Inc()
	}
}

func (m *Metrics) resume() {
	if m != nil {
		m.resumes.Inc()
	}
}
