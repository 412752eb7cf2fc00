package manifests

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/runtime"
)

// Query is a PromQL expression and where it comes from.
type Query struct {
	// Where names it: "PrometheusRule ns/name: alert X", "dashboard: panel Y".
	Where string
	Expr  string
}

// AlertQueries returns the expression of every rule of the PrometheusRules among objs.
func AlertQueries(objs []runtime.Object) []Query {
	var out []Query
	for _, o := range objs {
		pr, ok := o.(*monitoringv1.PrometheusRule)
		if !ok {
			continue
		}
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				name := r.Alert
				if name == "" {
					name = "record " + r.Record
				}
				out = append(out, Query{Where: fmt.Sprintf("%s: group %s: %s", ID(o), g.Name, name), Expr: r.Expr.String()})
			}
		}
	}
	return out
}

// DashboardQueries returns the expr of every target of a Grafana dashboard, panels
// inside rows included.
func DashboardQueries(dashboard []byte) ([]Query, error) {
	var d struct {
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, fmt.Errorf("decoding the dashboard: %w", err)
	}
	var out []Query
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				out = append(out, Query{Where: fmt.Sprintf("dashboard: panel %q: target %s", p.Title, t.RefID), Expr: t.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out, nil
}

type dashboardPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}

// grafanaVariables are Grafana's built-in interval variables, replaced by a
// duration before parsing.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// MetricNames parses expr with Prometheus's own parser and returns the metric
// names it selects, sorted. A selector without a plain metric name is an error:
// its names could not be checked.
func MetricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVariables.Replace(expr))
	if err != nil {
		return nil, fmt.Errorf("parsing %q: %w", expr, err)
	}
	var names []string
	var errs []error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
		}
		if name == "" {
			errs = append(errs, fmt.Errorf("selector %s in %q has no metric name", vs.String(), expr))
			return nil
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
		return nil
	})
	slices.Sort(names)
	return names, errors.Join(errs...)
}

// CheckQueries parses every query and checks that each metric it selects is in
// known. It returns one error per query that does not parse or per unknown name.
func CheckQueries(qs []Query, known map[string]bool) error {
	var errs []error
	for _, q := range qs {
		if strings.TrimSpace(q.Expr) == "" {
			errs = append(errs, fmt.Errorf("%s: empty expression", q.Where))
			continue
		}
		names, err := MetricNames(q.Expr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", q.Where, err))
			continue
		}
		for _, n := range names {
			if !known[n] {
				errs = append(errs, fmt.Errorf("%s: metric %s does not exist", q.Where, n))
			}
		}
	}
	return errors.Join(errs...)
}
