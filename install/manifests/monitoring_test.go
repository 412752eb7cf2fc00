package manifests

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

func TestMetricNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		expr string
		want []string
		err  string
	}{
		{expr: `sum by (kind) (rate(a_total[5m])) / sum by (kind) (rate(b_total[$__rate_interval]))`, want: []string{"a_total", "b_total"}},
		{expr: `histogram_quantile(0.95, sum by (le) (rate(h_seconds_bucket[5m])))`, want: []string{"h_seconds_bucket"}},
		{expr: `{__name__="g", node="n"} > 0 and time() - g > 600`, want: []string{"g"}},
		{expr: `count(count by (version) (info))`, want: []string{"info"}},
		{expr: `{node="n"}`, err: "has no metric name"},
		{expr: `{__name__=~"hopless_.*"}`, err: "has no metric name"},
		{expr: `sum by (node (x)`, err: "parsing"},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			got, err := MetricNames(tc.expr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("MetricNames = %v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("MetricNames = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestCheckQueriesCatches(t *testing.T) {
	t.Parallel()
	known := map[string]bool{"hopless_registryd_store_bytes": true}
	for _, tc := range []struct {
		name, expr, want string
	}{
		{"a known metric", `max(hopless_registryd_store_bytes) > 0`, ""},
		{"a name that no code exports", `max(hopless_registryd_store_byte) > 0`, "metric hopless_registryd_store_byte does not exist"},
		{"a histogram without its suffix", `rate(hopless_registryd_store_bytes_bucket[5m])`, "does not exist"},
		{"an expression that does not parse", `max(hopless_registryd_store_bytes`, "parsing"},
		{"nothing", ` `, "empty expression"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckQueries([]Query{{Where: "q", Expr: tc.expr}}, known)
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("CheckQueries = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestAlerts parses every alert's expression with Prometheus's parser and checks
// that each metric it selects is one that hopless's code exports, and that the
// alerts the masters and nodes need are there.
func TestAlerts(t *testing.T) {
	t.Parallel()
	known := knownSeries(t)
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			qs := AlertQueries(r.objs)
			if err := CheckQueries(qs, known); err != nil {
				t.Error(err)
			}
			var alerts []string
			for _, o := range r.objs {
				pr, ok := o.(*monitoringv1.PrometheusRule)
				if !ok {
					continue
				}
				for _, g := range pr.Spec.Groups {
					for _, rule := range g.Rules {
						alerts = append(alerts, rule.Alert)
						if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" {
							t.Errorf("alert %s has no severity or summary", rule.Alert)
						}
					}
				}
			}
			for _, want := range []string{
				"HoplessMasterEjectedOnManyNodes", "HoplessMasterUnhealthyOnManyNodes", // a master out on many nodes
				"HoplessUpstreamFailing", "HoplessUpstreamDown", // the upstream failing
				"HoplessCacheDiskFull", "HoplessCacheDiskNearlyFull", // the cache's disk
				"HoplessPinLeasesLapsing", "HoplessNodePinsStale", // pins lapsing
			} {
				if !slices.Contains(alerts, want) {
					t.Errorf("no alert %s among %v", want, alerts)
				}
			}
		})
	}
}

// TestDashboard parses every query of the Grafana dashboard and checks its metric
// names, and that the ConfigMap that Grafana's sidecar loads holds the file.
func TestDashboard(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(filepath.Join("..", "deploy", "base", "hopless-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := DashboardQueries(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 20 {
		t.Errorf("%d queries in the dashboard, want its panels' targets", len(qs))
	}
	if err := CheckQueries(qs, knownSeries(t)); err != nil {
		t.Error(err)
	}
	cm := configMapNamed(baseObjs(t), "hopless-dashboard")
	if cm == nil || cm.Name != "hopless-dashboard" || cm.Labels["grafana_dashboard"] != "1" {
		t.Fatalf("ConfigMap %v, want hopless-dashboard labelled grafana_dashboard: \"1\"", cm)
	}
	if cm.Data["hopless-dashboard.json"] != string(src) {
		t.Error("the ConfigMap hopless-dashboard does not hold base/hopless-dashboard.json")
	}
}
