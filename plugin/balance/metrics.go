package balance

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Error kinds, the kind label of hopless_plugin_errors_total.
const (
	kindTransport = "transport" // the transport failed before response headers
	kindTimeout   = "timeout"   // no response headers within ResponseHeader
	kindStatus    = "status"    // a 5xx answer of the master's own
	kindStall     = "stall"     // the body delivered no byte for Stall
	kindSlow      = "slow"      // the body stayed below the throughput floor
	kindBody      = "body"      // the body broke mid-stream
	kindDigest    = "digest"    // a whole blob did not hash to its digest
	kindHealth    = "health"    // an active check failed
)

// Ejection reasons, the reason label of hopless_plugin_ejections_total.
const (
	ejectLocal  = "local"  // consecutive local-origin failures (or a failed trial)
	eject5xx    = "5xx"    // consecutive 5xx answers of its own
	ejectHealth = "health" // a failed active check
)

// Metrics are the balancer's Prometheus collectors. One Metrics may be shared by the
// balancers of several image hosts: the endpoint label tells them apart. A nil
// *Metrics records nothing.
type Metrics struct {
	clientRequests *prometheus.CounterVec
	requests       *prometheus.CounterVec
	bytes          *prometheus.CounterVec
	errors         *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec
	ejections      *prometheus.CounterVec
	digests        *prometheus.CounterVec
	healthy        *prometheus.GaugeVec
	throughput     *prometheus.GaugeVec
	headerTimes    *prometheus.HistogramVec
	hedges         prometheus.Counter
	hedgesWon      prometheus.Counter
	exhausted      prometheus.Counter
	panics         prometheus.Counter
	probes         prometheus.Counter
	checks         *prometheus.CounterVec
	checksSkipped  *prometheus.CounterVec
	resumes        prometheus.Counter
}

// NewMetrics creates the collectors and registers them on reg; a nil reg leaves them
// unregistered. Registering twice on one registry panics, as MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		clientRequests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_client_requests_total",
			Help: "Requests containerd made to a balanced image host, by class (manifest, blob, token).",
		}, []string{"class"}),
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
			Help: "Endpoint failures by kind (transport, timeout, status, stall, slow, body, digest, health).",
		}, []string{"endpoint", "kind"}),
		upstreamErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_upstream_errors_total",
			Help: `Answers in which a master passed on its upstream's failure, by the upstream's status ("0": no answer); they never count against the master.`,
		}, []string{"endpoint", "status"}),
		ejections: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_ejections_total",
			Help: "Times an endpoint was taken out of rotation, by reason (local: consecutive local-origin failures; 5xx: consecutive 5xx of its own; health: a failed active check).",
		}, []string{"endpoint", "reason"}),
		digests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_digest_mismatches_total",
			Help: "Blob bodies from each endpoint that did not hash to their digest.",
		}, []string{"endpoint"}),
		healthy: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopless_plugin_endpoint_healthy",
			Help: "1 while the endpoint takes traffic, 0 while it is ejected or unhealthy.",
		}, []string{"endpoint"}),
		throughput: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopless_plugin_throughput_bytes_per_second",
			Help: "Recent throughput of bodies each endpoint served from its cache.",
		}, []string{"endpoint"}),
		headerTimes: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hopless_plugin_headers_seconds",
			Help:    "Time to response headers of answered attempts, by endpoint and request class.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"endpoint", "class"}),
		hedges: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_hedges_total",
			Help: "Requests sent to a further endpoint because no response headers arrived within the hedge delay.",
		}),
		hedgesWon: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_hedges_won_total",
			Help: "Hedged attempts that answered first.",
		}),
		exhausted: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_hedge_budget_exhausted_total",
			Help: "Hedges not sent because the hedge budget was spent; the request waited on its first endpoint.",
		}),
		panics: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_panic_picks_total",
			Help: "Attempts sent to an endpoint out of rotation because none in rotation was left (panic routing).",
		}),
		probes: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_probes_total",
			Help: "On-demand active checks of an endpoint that a request waited on past its hedge delay.",
		}),
		checks: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_health_checks_total",
			Help: "Periodic active checks (GET /v2/) sent to each endpoint, by reason (start; wake: the node turned active; active: every health_interval while the node is active; out: every health_interval while the endpoint is out of rotation; idle: every health_idle_interval while the node is idle).",
		}, []string{"endpoint", "reason"}),
		checksSkipped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_health_checks_skipped_total",
			Help: "Periodic active checks not sent because a real request got an answer from the endpoint within health_interval.",
		}, []string{"endpoint"}),
		resumes: f.NewCounter(prometheus.CounterOpts{
			Name: "hopless_plugin_resumes_total",
			Help: "Stalled, broken or too slow response bodies resumed with a Range request.",
		}),
	}
}

func (m *Metrics) clientRequest(class string) {
	if m != nil {
		m.clientRequests.WithLabelValues(class).Inc()
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

func (m *Metrics) upstreamError(endpoint string, status int) {
	if m != nil {
		m.upstreamErrors.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	}
}

func (m *Metrics) ejection(endpoint, reason string) {
	if m != nil {
		m.ejections.WithLabelValues(endpoint, reason).Inc()
	}
}

func (m *Metrics) digestMismatch(endpoint string) {
	if m != nil {
		m.digests.WithLabelValues(endpoint).Inc()
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

func (m *Metrics) setThroughput(endpoint string, bps float64) {
	if m != nil {
		m.throughput.WithLabelValues(endpoint).Set(bps)
	}
}

func (m *Metrics) headers(endpoint, class string, d time.Duration) {
	if m != nil {
		m.headerTimes.WithLabelValues(endpoint, class).Observe(d.Seconds())
	}
}

func (m *Metrics) hedge() {
	if m != nil {
		m.hedges.Inc()
	}
}

func (m *Metrics) hedgeWon() {
	if m != nil {
		m.hedgesWon.Inc()
	}
}

func (m *Metrics) budgetExhausted() {
	if m != nil {
		m.exhausted.Inc()
	}
}

func (m *Metrics) panicked() {
	if m != nil {
		m.panics.Inc()
	}
}

func (m *Metrics) probe() {
	if m != nil {
		m.probes.Inc()
	}
}

func (m *Metrics) check(endpoint, reason string) {
	if m != nil {
		m.checks.WithLabelValues(endpoint, reason).Inc()
	}
}

func (m *Metrics) checkSkipped(endpoint string) {
	if m != nil {
		m.checksSkipped.WithLabelValues(endpoint).Inc()
	}
}

func (m *Metrics) resume() {
	if m != nil {
		m.resumes.Inc()
	}
}
