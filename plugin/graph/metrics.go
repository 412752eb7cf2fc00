package graph

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/hopless/hopless/plugin/crilocal"
	"github.com/hopless/hopless/plugin/transfer"
)

// metrics are the hopless plugin's collectors, created once by Install.
type metrics struct {
	transfer *transfer.Metrics
	cri      *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	return &metrics{
		transfer: transfer.NewMetrics(reg),
		cri: promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopless_plugin_cri_local_pull",
			Help: "1 for each setting of CRI's images config that makes CRI pull through its local path, past hopless; 0 for the others. Set when CRI's images plugin loads.",
		}, []string{"setting"}),
	}
}

// criLocalPull sets the gauge of every setting: 1 for those in present.
func (m *metrics) criLocalPull(present []string) {
	for _, s := range crilocal.Settings() {
		v := 0.0
		for _, p := range present {
			if p == s {
				v = 1
			}
		}
		m.cri.WithLabelValues(s).Set(v)
	}
}
