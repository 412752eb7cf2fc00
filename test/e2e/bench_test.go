package e2e

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/hopless/hopless/test/bench"
)

// TestBenchHarness runs every benchmark in quick mode: it checks that each one runs
// end to end and reports a figure for ours and its baseline. A failed run of ours (a
// pull that failed or was cut at its bound) fails the test; the baselines' failed
// runs are what some benchmarks measure (nginx and stock hosts.toml with a frozen
// master), so they are logged, as FAILED, not failures. Timing targets belong to
// make bench, not here.
//
// The benchmarks run beside each other and the other tests, each in a slot of its
// own (slotBenchFirst and up), so that the harness is not one long chain.
// slotBenchFirst is the first benchmark's slot; the others follow, one each.
const slotBenchFirst = 100

func TestBenchHarness(t *testing.T) {
	t.Parallel()
	for i, b := range bench.All() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			o := labOptions(t)
			o.Slot = slotBenchFirst + i
			c := bench.Config{Lab: o, Dir: t.TempDir(), Quick: true, Log: testWriter{t}}
			t0 := time.Now()
			results, err := bench.Run(ctx, b.Name, c)
			t.Logf("%s: quick run took %.1fs", b.Name, time.Since(t0).Seconds())
			if err != nil {
				t.Fatal(err)
			}
			if len(results) == 0 {
				t.Fatal("no results")
			}
			for _, r := range results {
				t.Log(r.String())
				checkResult(t, b.Name, r)
			}
		})
	}
}

// checkResult fails on a failed run of ours, and on a result that is incomplete:
// a figure that is missing (0 for a time with no failed run), negative or not a
// number. Counts may be 0; a figure with no baseline ("none") has Baseline 0.
func checkResult(t *testing.T, name string, r bench.Result) {
	t.Helper()
	if r.OursFailed > 0 {
		t.Errorf("FAILED: %d run(s) of ours failed: %s", r.OursFailed, r)
	}
	if r.BaselineFailed > 0 {
		t.Logf("baseline %s: %d run(s) FAILED (measured, not a test failure): %s", r.BaselineName, r.BaselineFailed, r)
	}
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) || v < 0 }
	if r.Bench != name || r.Metric == "" || r.BaselineName == "" || r.Unit == "" || bad(r.Ours) || bad(r.Baseline) || bad(r.Ratio) {
		t.Errorf("incomplete result: %+v", r)
		return
	}
	if r.IsCount() {
		return
	}
	if r.OursFailed == 0 && r.Ours <= 0 {
		t.Errorf("no figure for ours: %+v", r)
	}
	if r.BaselineName != "none" && r.BaselineFailed == 0 && r.Baseline <= 0 {
		t.Errorf("no figure for the baseline: %+v", r)
	}
	if r.OursFailed == 0 && r.BaselineFailed == 0 && r.Baseline > 0 && r.Ratio <= 0 {
		t.Errorf("no ratio: %+v", r)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
