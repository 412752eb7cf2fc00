package manifests

import (
	"io"
	"log/slog"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/nri/hostsync"
	"github.com/hopless/hopless/nri/pins"
	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/transfer"
	"github.com/hopless/hopless/registryd/metrics"
)

// installMetrics are hopless-install watch's metrics, named here until its package
// exists (it is being written beside this one): hopless_install_drift_files, the
// files that differ from what was installed, and hopless_install_info{mode,version}.
func installMetrics() map[string]string {
	return map[string]string{
		"hopless_install_drift_files": KindPlain,
		"hopless_install_info":        KindPlain,
	}
}

// sourceOnly are the packages whose metrics are built by unexported functions, so
// that only their source says what they are.
func sourceOnly() []string { return []string{"../../plugin/graph", "../../nri/agent"} }

// recorder is a prometheus.Registerer that keeps what is registered on it.
type recorder struct{ collectors []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
}

func (r *recorder) Unregister(prometheus.Collector) bool { return false }

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// describe returns the names and kind of what c describes.
func describe(t *testing.T, c prometheus.Collector) map[string]string {
	t.Helper()
	kind := KindPlain
	switch c := c.(type) {
	case *prometheus.HistogramVec:
		kind = KindHistogram
	case *prometheus.SummaryVec:
		kind = KindSummary
	case prometheus.Metric:
		// A single Histogram and Summary have the same methods: what they write
		// tells them apart.
		var pb dto.Metric
		if err := c.Write(&pb); err != nil {
			t.Fatal(err)
		}
		switch {
		case pb.Histogram != nil:
			kind = KindHistogram
		case pb.Summary != nil:
			kind = KindSummary
		}
	}
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	out := map[string]string{}
	for d := range ch {
		m := fqNameRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		out[m[1]] = kind
	}
	return out
}

// constructedMetrics builds the metrics of every package that exports its
// constructor, and returns their names and kinds.
func constructedMetrics(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	m := metrics.New()
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if c, ok := v.Field(i).Interface().(prometheus.Collector); ok {
			maps.Copy(out, describe(t, c))
		}
	}
	// The Go and process collectors on registryd's registry.
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		kind := KindPlain
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			kind = KindHistogram
		case dto.MetricType_SUMMARY:
			kind = KindSummary
		}
		out[f.GetName()] = kind
	}
	rec := &recorder{}
	balance.NewMetrics(rec)
	transfer.NewMetrics(rec)
	pins.NewMetrics(rec)
	if _, err := hostsync.New(hostsync.Config{
		Node:    "node-1",
		Writer:  nopWriter{},
		Health:  func(conf.Registry) (hostsync.Health, error) { return nil, nil },
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: rec,
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range rec.collectors {
		maps.Copy(out, describe(t, c))
	}
	return out
}

type nopWriter struct{}

func (nopWriter) Write(string, []byte) (bool, error) { return false, nil }

// knownSeries returns every series name that hopless's code exposes: constructed
// where the constructor is exported, read from the source where it is not, and
// the installer's two.
func knownSeries(t *testing.T) map[string]bool {
	t.Helper()
	all := constructedMetrics(t)
	for _, dir := range sourceOnly() {
		m, err := SourceMetrics(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(m) == 0 {
			t.Fatalf("no metrics declared in %s", dir)
		}
		maps.Copy(all, m)
	}
	maps.Copy(all, installMetrics())
	known := map[string]bool{}
	for name, kind := range all {
		for _, s := range SeriesNames(name, kind) {
			known[s] = true
		}
	}
	return known
}

// TestSourceMetricsAgreesWithConstructors reads the source of the packages whose
// constructors are exported and finds exactly the hopless metrics that they build:
// the reading that sourceOnly relies on.
func TestSourceMetricsAgreesWithConstructors(t *testing.T) {
	t.Parallel()
	fromSource := map[string]string{}
	for _, dir := range []string{"../../registryd/metrics", "../../plugin/balance", "../../plugin/transfer", "../../nri/pins", "../../nri/hostsync"} {
		m, err := SourceMetrics(dir)
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(fromSource, m)
	}
	built := map[string]string{}
	for name, kind := range constructedMetrics(t) {
		if strings.HasPrefix(name, "hopless_") {
			built[name] = kind
		}
	}
	if !maps.Equal(fromSource, built) {
		t.Errorf("from the source:\n%v\nconstructed:\n%v", sorted(fromSource), sorted(built))
	}
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+" "+v)
	}
	slices.Sort(out)
	return out
}
