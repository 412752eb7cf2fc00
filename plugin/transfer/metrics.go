package transfer

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the Prometheus collectors of the hopless plugin's configuration. A nil
// *Metrics records nothing.
type Metrics struct {
	reloads *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg; a nil reg leaves them
// unregistered. Registering twice on one registry panics, as MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reloads: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_plugin_config_reloads_total",
			Help: `Reloads after a change of a watched file (TLS, credentials, node_config), by result: "ok", or "error" when something kept its previous settings.`,
		}, []string{"result"}),
	}
	// Both series exist from the start, so that a rate over them is defined.
	m.reloads.WithLabelValues(ReloadOK)
	m.reloads.WithLabelValues(ReloadError)
	return m
}

func (m *Metrics) reloaded(result string) {
	if m != nil {
		m.reloads.WithLabelValues(result).Inc()
	}
}
