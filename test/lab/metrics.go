package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Sample is one sample of a Prometheus text exposition. A histogram gives its
// _count, _sum and _bucket (with "le") samples.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape is every sample of one read of a metrics endpoint.
type Scrape []Sample

// ParseMetrics reads a Prometheus text exposition.
func ParseMetrics(r io.Reader) (Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	var out Scrape
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			out = append(out, samplesOf(name, labels, m)...)
		}
	}
	slices.SortStableFunc(out, func(a, b Sample) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, nil
}

func samplesOf(name string, labels map[string]string, m *dto.Metric) []Sample {
	one := func(n string, v float64) Sample { return Sample{Name: n, Labels: labels, Value: v} }
	switch {
	case m.Counter != nil:
		return []Sample{one(name, m.GetCounter().GetValue())}
	case m.Gauge != nil:
		return []Sample{one(name, m.GetGauge().GetValue())}
	case m.Untyped != nil:
		return []Sample{one(name, m.GetUntyped().GetValue())}
	case m.Histogram != nil:
		h := m.GetHistogram()
		out := []Sample{one(name+"_count", float64(h.GetSampleCount())), one(name+"_sum", h.GetSampleSum())}
		for _, b := range h.GetBucket() {
			bl := map[string]string{"le": fmt.Sprint(b.GetUpperBound())}
			for k, v := range labels {
				bl[k] = v
			}
			out = append(out, Sample{Name: name + "_bucket", Labels: bl, Value: float64(b.GetCumulativeCount())})
		}
		return out
	case m.Summary != nil:
		s := m.GetSummary()
		return []Sample{one(name+"_count", float64(s.GetSampleCount())), one(name+"_sum", s.GetSampleSum())}
	}
	return nil
}

// Of returns the samples of name.
func (s Scrape) Of(name string) []Sample {
	var out []Sample
	for _, x := range s {
		if x.Name == name {
			out = append(out, x)
		}
	}
	return out
}

// Sum adds up the samples of name whose labels include want; found is false when
// the scrape has no sample of name at all.
func (s Scrape) Sum(name string, want map[string]string) (total float64, found bool) {
next:
	for _, x := range s.Of(name) {
		found = true
		for k, v := range want {
			if x.Labels[k] != v {
				continue next
			}
		}
		total += x.Value
	}
	return total, found
}

// NodeMetrics reads node's metrics: containerd's /v1/metrics on the node's metrics
// address, which inprocess nodes serve, or on a node in ModeNRI those of its
// hopless-nri, which exports plugin/balance's gauges too.
func (l *Lab) NodeMetrics(ctx context.Context, node int) (Scrape, error) {
	if l.NodeMode(node) == ModeNRI {
		return GetMetrics(ctx, "http://"+NRIMetricsAddr(l.Slot, node)+"/metrics")
	}
	return GetMetrics(ctx, "http://"+NodeMetricsAddr(l.Slot, node)+"/v1/metrics")
}

// GetMetrics reads the metrics endpoint u, bounded by 10 s.
func GetMetrics(ctx context.Context, u string) (Scrape, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	s, err := ParseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return s, nil
}
