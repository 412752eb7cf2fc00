package manifests

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Metric kinds, by the client_golang options type that declares them.
const (
	KindPlain     = "plain" // counters, gauges, untyped
	KindHistogram = "histogram"
	KindSummary   = "summary"
)

// SeriesNames are the names a metric of kind exposes: a histogram's _bucket, _sum
// and _count (and the name itself, as a native histogram), a summary's quantiles
// under the name, and _sum and _count.
func SeriesNames(name, kind string) []string {
	switch kind {
	case KindHistogram:
		return []string{name, name + "_bucket", name + "_sum", name + "_count"}
	case KindSummary:
		return []string{name, name + "_sum", name + "_count"}
	}
	return []string{name}
}

// SourceMetrics returns the metrics that the Go package in dir declares, by name
// and kind: every prometheus.CounterOpts, GaugeOpts, HistogramOpts, SummaryOpts or
// UntypedOpts literal with a constant Name, in the package's non-test files. It
// serves packages whose metrics are built by unexported functions.
func SourceMetrics(dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the Go package in %s: %w", dir, err)
	}
	fset := token.NewFileSet()
	out := map[string]string{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, e.Name()), err)
		}
		{
			ast.Inspect(f, func(n ast.Node) bool {
				lit, ok := n.(*ast.CompositeLit)
				if !ok {
					return true
				}
				sel, ok := lit.Type.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "prometheus" {
					return true
				}
				var kind string
				switch sel.Sel.Name {
				case "CounterOpts", "GaugeOpts", "UntypedOpts":
					kind = KindPlain
				case "HistogramOpts":
					kind = KindHistogram
				case "SummaryOpts":
					kind = KindSummary
				default:
					return true
				}
				for _, e := range lit.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != "Name" {
						continue
					}
					if v, ok := kv.Value.(*ast.BasicLit); ok && v.Kind == token.STRING {
						if name, err := strconv.Unquote(v.Value); err == nil {
							out[name] = kind
						}
					}
				}
				return true
			})
		}
	}
	return out, nil
}
