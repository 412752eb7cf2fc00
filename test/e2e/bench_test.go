package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/hopless/hopless/test/bench"
)

// TestBenchHarness runs every benchmark in quick mode: it checks that each one runs
// end to end and reports a positive figure for ours and its baseline. Timing targets
// belong to make bench, not here.
func TestBenchHarness(t *testing.T) {
	t.Parallel()
	for _, b := range bench.All() {
		t.Run(b.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			o := labOptions(t)
			o.Slot = slotBench
			c := bench.Config{Lab: o, Dir: t.TempDir(), Quick: true, Log: testWriter{t}}
			results, err := bench.Run(ctx, b.Name, c)
			if err != nil {
				t.Fatal(err)
			}
			if len(results) == 0 {
				t.Fatal("no results")
			}
			for _, r := range results {
				if r.Bench != b.Name || r.Metric == "" || r.BaselineName == "" || r.Ours <= 0 || r.Baseline <= 0 || r.Ratio <= 0 {
					t.Errorf("incomplete result: %+v", r)
				}
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
