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
//
// A run that failed (a pull that returned an error, or was cut at its time bound)
// is never a figure: it is counted in OursFailed or BaselineFailed, and Ours or
// Baseline is the figure of the runs that succeeded (0 if none did). Ratio is 0,
// shown as n/a, when either side has a failed run or a 0 figure.
type Result struct {
	Bench        string  `json:"bench"`
	Metric       string  `json:"metric"`
	Ours         float64 `json:"ours"`
	Baseline     float64 `json:"baseline"`
	BaselineName string  `json:"baseline_name"`
	Ratio        float64 `json:"ratio"`
	Unit         string  `json:"unit"`
	// OursFailed and BaselineFailed count the failed runs of each side.
	OursFailed     int `json:"ours_failed,omitempty"`
	BaselineFailed int `json:"baseline_failed,omitempty"`
	// Goal is the target for Ours, printed beside the figures, e.g. "<= 0.3 s added".
	Goal string `json:"goal,omitempty"`
}

// Units of results that count things: 0 is a figure like any other for them.
const (
	unitCount = "count"
	unitPulls = "pulls"
)

// Units of results that are not counts but for which 0 is a figure too: a
// deviation that may vanish, a request rate that may be nil.
const (
	unitPoints = "points"
	unitRate   = "req/s"
)

// baselineNone names the baseline of a figure that has none (a counter of ours
// alone, such as hedges); Baseline and Ratio are then 0.
const baselineNone = "none"

// baselineGoal names the baseline of a figure measured against its goal: Baseline
// is the goal, and a Ratio <= 1 meets it.
const baselineGoal = "goal"

// IsCount reports whether the result counts things, or is otherwise a figure for
// which 0 is valid.
func (r Result) IsCount() bool {
	return r.Unit == unitCount || r.Unit == unitPulls || r.Unit == unitPoints || r.Unit == unitRate
}

func (r Result) String() string {
	ratio := "n/a"
	if r.Ratio != 0 {
		ratio = fmt.Sprintf("%.3f", r.Ratio)
	}
	s := fmt.Sprintf("%-16s %-26s ours=%s %s=%s ratio=%s", r.Bench, r.Metric,
		figureString(r.Ours, r.OursFailed, r.Unit), r.BaselineName, figureString(r.Baseline, r.BaselineFailed, r.Unit), ratio)
	if r.BaselineName == baselineNone {
		s = fmt.Sprintf("%-16s %-26s ours=%s (no baseline)", r.Bench, r.Metric, figureString(r.Ours, r.OursFailed, r.Unit))
	}
	if r.Goal != "" {
		s += "  goal: " + r.Goal
	}
	return s
}

// figureString shows a figure and the failed runs beside it: "1.234s",
// "FAILED x2" when no run succeeded, "1.234s +FAILED x1" when some did.
func figureString(v float64, failed int, unit string) string {
	f := fmt.Sprintf("%.3f%s", v, unit)
	if unit == unitCount || unit == unitPulls {
		f = fmt.Sprintf("%g %s", v, unit)
	}
	switch {
	case failed > 0 && v == 0:
		return fmt.Sprintf("FAILED x%d", failed)
	case failed > 0:
		return fmt.Sprintf("%s +FAILED x%d", f, failed)
	}
	return f
}

func newResult(bench, metric, unit, baselineName string, ours, baseline float64) Result {
	r := Result{Bench: bench, Metric: metric, Ours: ours, Baseline: baseline, BaselineName: baselineName, Unit: unit}
	if baseline != 0 {
		r.Ratio = ours / baseline
	}
	return r
}

// figure collects one side's runs of one metric: the values of the runs that
// succeeded, and the number that failed, which are never values.
type figure struct {
	vals   []float64
	failed int
}

func (f *figure) add(v float64) { f.vals = append(f.vals, v) }
func (f *figure) fail()         { f.failed++ }

// figureResult compares two figures, each aggregated with agg (median, mean)
// over its successful runs. The ratio is left out (0) when either side failed.
func figureResult(bench, metric, unit, baselineName, goal string, agg func([]float64) float64, ours, base figure) Result {
	r := newResult(bench, metric, unit, baselineName, agg(ours.vals), agg(base.vals))
	r.OursFailed, r.BaselineFailed, r.Goal = ours.failed, base.failed, goal
	if ours.failed > 0 || base.failed > 0 {
		r.Ratio = 0
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
		{Name: "pull-lab", About: "crictl pull through the lab's masters (cold and warm) vs. a direct pull from the upstream and a cold pull through distribution's own proxy", Run: pullLab},
		{Name: "registryd-cold", About: "16 concurrent GETs of one cold blob through a registryd master vs. distribution's proxy: upstream bytes, time, peak RSS", Run: registrydCold},
		{Name: "registryd-warm", About: "8 concurrent GETs of one cached blob from a registryd master vs. distribution's proxy: throughput", Run: registrydWarm},
		{Name: "registryd-s3", About: "cold and warm blob throughput (4 clients, one blob each) of a registryd master on S3 (SeaweedFS) vs. distribution's proxy on the same bucket, and what S3 costs each against the filesystem", Run: registrydS3},
		{Name: "registryd-peers", About: "one image pulled through 3 registryd masters at once vs. 3 distribution proxies: upstream bytes, time", Run: registrydPeers},
		{Name: "pull-throughput", About: "crictl pull of warm images (1 big layer, many small) on fresh nodes: in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodePullThroughput},
		{Name: "node-cpu", About: "node CPU (containerd, plus nginx in nginx mode) per GiB pulled: in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodeCPU},
		{Name: "frozen-master", About: "time that SIGSTOPped masters add to a pull (one frozen 3 s before a warm pull, one at its start, 2 of 3 before a cold pull): in-process vs. the NGINX stream hop and stock hosts.toml", Run: nodeFrozenMaster},
		{Name: "upstream-fault", About: "pulls of cached images while another image's upstream answers 503 or hangs and that image is pulled in a loop: failed pulls and time, in-process vs. NGINX over distribution's proxy and stock hosts.toml", Run: upstreamFault},
		{Name: "index-100k", About: "registryd's store index at 100,000 entries on the filesystem driver: index writes per hour of steady reads, eviction planning and the store lock it holds, start after an unclean stop, vs. the bookkeeping it replaced (write every 5 s, plan under the lock, rebuild before New returns)", Run: indexBench100k},
		{Name: "fleet", About: "100 simulated nodes (in-process balancers), each sending a request about every second, against 3 masters weighted 3:1:1: each master's share of the requests and its active-check load, then master-1 frozen and thawed: time until 95 % of the active nodes stop using it, until 95 % of the nodes take it back, and its load after the thaw; vs. the old check schedule (every master every second, no slow start)", Run: fleet},
		{Name: "fleet-1000", About: "as fleet, with 1000 simulated nodes that pull now and then (12 requests, about every 90 s; 100 nodes with --quick)", Run: fleet1000},
		{Name: "soak", About: "1000 pulls (50 with --quick) on an in-process and an NRI node while a seeded chaos loop kills or freezes one master at a time, and every other one on an NGINX-hop node to the same masters: failed pulls vs. the hop, and the goroutines, open files and RSS of each registryd and containerd, failing on growth", Run: soak},
		{Name: "hedge-load", About: "cold pulls while every master is slow to the first byte: backend requests per client request and hedges, in-process vs. the NGINX stream hop and stock hosts.toml", Run: hedgeLoad},
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

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
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
