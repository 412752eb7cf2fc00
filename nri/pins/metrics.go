package pins

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Results of a report to one master, the values of hopless_nri_pin_reports_total's
// result label.
const (
	ResultOK = "ok"
	// ResultRejected is a 4xx other than 429: the node's token, name or the
	// masters' configuration is wrong.
	ResultRejected = "rejected"
	// ResultThrottled is 429: the masters hold as many nodes' pins as they may.
	ResultThrottled = "throttled"
	// ResultError is anything else: no connection, a timeout, a 5xx.
	ResultError = "error"
)

// Metrics are the reporter's Prometheus collectors. A nil *Metrics records nothing.
type Metrics struct {
	reports     *prometheus.CounterVec
	pinned      prometheus.Gauge
	lastSuccess prometheus.Gauge
}

// NewMetrics creates the collectors and registers them on reg; a nil reg leaves them
// unregistered. Registering twice on one registry panics, as MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		reports: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_nri_pin_reports_total",
			Help: `Reports of the node's pins sent to a master, by result: "ok", "rejected" (a 4xx: the token or the configuration is wrong), "throttled" (429) or "error".`,
		}, []string{"result"}),
		pinned: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopless_nri_pinned_images",
			Help: "Images (distinct manifest digests) that the last successful report pinned.",
		}),
		lastSuccess: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopless_nri_pin_last_success_timestamp_seconds",
			Help: "When a master last accepted the node's pins, in seconds since the epoch; 0 before the first time.",
		}),
	}
	// Every series exists from the start, so that a rate over them is defined.
	for _, r := range []string{ResultOK, ResultRejected, ResultThrottled, ResultError} {
		m.reports.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) report(result string) {
	if m != nil {
		m.reports.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) succeeded(pinned int, unixSeconds float64) {
	if m != nil {
		m.pinned.Set(float64(pinned))
		m.lastSuccess.Set(unixSeconds)
	}
}
