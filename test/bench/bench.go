// Package bench holds hopless's benchmarks. Each one measures ours against its
// baseline in the same run, on the same machine, and reports the ratio.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/hopless/hopless/test/lab"
)

// Result is one measured metric. Ratio is Ours/Baseline.
type Result struct {
	Bench        string  `json:"bench"`
	Metric       string  `json:"metric"`
	Ours         float64 `json:"ours"`
	Baseline     float64 `json:"baseline"`
	BaselineName string  `json:"baseline_name"`
	Ratio        float64 `json:"ratio"`
	Unit         string  `json:"unit"`
}

func (r Result) String() string {
	return fmt.Sprintf("%-16s %-22s ours=%.3f%s %s=%.3f%s ratio=%.3f", r.Bench, r.Metric, r.Ours, r.Unit, r.BaselineName, r.Baseline, r.Unit, r.Ratio)
}

func newResult(bench, metric, unit, baselineName string, ours, baseline float64) Result {
	r := Result{Bench: bench, Metric: metric, Ours: ours, Baseline: baseline, BaselineName: baselineName, Unit: unit}
	if baseline != 0 {
		r.Ratio = ours / baseline
	}
	return r
}

// Config is what every benchmark gets.
type Config struct {
	// Lab carries the binary locations; each benchmark sets its own sizes.
	Lab lab.Options
	// Dir is the work directory; empty means a temporary one, removed afterwards.
	Dir string
	// Quick uses small sizes and one round, for smoke runs in make test.
	Quick bool
	// Log receives progress lines.
	Log io.Writer
}

func (c Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Bench is one named benchmark.
type Bench struct {
	Name  string
	About string
	Run   func(ctx context.Context, c Config) ([]Result, error)
}

// All lists the benchmarks.
func All() []Bench {
	return []Bench{
		{Name: "pull-lab", About: "crictl pull through the lab's masters (cold and warm) vs. a direct pull from the upstream", Run: pullLab},
		{Name: "registryd-cold", About: "16 concurrent GETs of one cold blob through a registryd master vs. distribution's proxy: upstream bytes, time, peak RSS", Run: registrydCold},
		{Name: "registryd-warm", About: "8 concurrent GETs of one cached blob from a registryd master vs. distribution's proxy: throughput", Run: registrydWarm},
		{Name: "registryd-peers", About: "one image pulled through 3 registryd masters at once vs. 3 distribution proxies: upstream bytes, time", Run: registrydPeers},
		{Name: "pull-throughput", About: "crictl pull of warm images (1 big layer, many small) on fresh nodes: in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodePullThroughput},
		{Name: "node-cpu", About: "node CPU (containerd, plus nginx in nginx mode) per GiB pulled: in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodeCPU},
		{Name: "frozen-master", About: "time a SIGSTOPped master adds to a warm pull: in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodeFrozenMaster},
	}
}

// Run runs the named benchmark.
func Run(ctx context.Context, name string, c Config) ([]Result, error) {
	for _, b := range All() {
		if b.Name == name {
			if c.Dir == "" {
				d, err := os.MkdirTemp("", "hopless-bench-")
				if err != nil {
					return nil, fmt.Errorf("creating bench dir: %w", err)
				}
				defer os.RemoveAll(d)
				c.Dir = d
			}
			return b.Run(ctx, c)
		}
	}
	var names []string
	for _, b := range All() {
		names = append(names, b.Name)
	}
	return nil, fmt.Errorf("unknown benchmark %q; known: %s", name, strings.Join(names, ", "))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
