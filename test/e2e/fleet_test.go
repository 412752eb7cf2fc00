package e2e

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/hopless/hopless/test/bench"
	"github.com/hopless/hopless/test/lab"
)

// TestFleetShares runs 100 simulated nodes, each an in-process balancer configured
// from a node.toml of its own with the masters weighted 3:1:1, and checks the load
// that the masters saw.
//
// Each node sends fleetRequests requests one after another, with hedging off
// (hedge.budget_percent = 0), so that every request is one pick of the node's smooth
// weighted round robin. SWRR keeps every endpoint's count within one pick of its
// weight's share of the picks so far, complete cycle or not: over 100 nodes of 25
// requests the masters' shares are within 100/2500 = 4 points of 60/20/20 whatever
// the timing, inside the ±5 points asserted. A failed request would be retried on
// another master and is asserted not to happen.
//
// Every node checks each master once when it starts, and no periodic check of a
// master comes within 0.9 × health_interval of the previous one (checks come every
// 0.9 to 1 interval while the node is active; after a real answer they are skipped,
// and an idle node checks less often): over the nodes' lifetime L a master gets at
// most nodes × (1 + L / (0.9 × interval)) periodic checks, plus the on-demand
// probes, which the balancers count.
//
// It does not run in parallel with the other tests: 100 balancers checking three
// masters every second is most of what 2 cores can do. Under more load than that
// (four CPU burners beside it) each master in turn failed a starved on-demand check,
// which aborted the request's attempt on its last master too, and one request in
// 2500 failed; a request now waits on its last master to the header deadline.
func TestFleetShares(t *testing.T) {
	const nodes, fleetRequests = 100, 25
	l := upLab(t, slotFleet, 3, 0, func(o *lab.Options) { o.Weights = bench.FleetWeights() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := bench.Config{Lab: labOptions(t), Dir: t.TempDir(), Log: testWriter{t}}
	rep, err := bench.RunFleet(ctx, c, l, bench.FleetOptions{
		Nodes: nodes, Interval: 200 * time.Millisecond, Requests: fleetRequests,
		NodeTOML: "[registry.hedge]\nbudget_percent = 0",
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(nodes * fleetRequests); rep.Sent != want || rep.Failed != 0 {
		t.Fatalf("the nodes sent %d requests, %d failed; want %d, none failed; the first errors: %q", rep.Sent, rep.Failed, want, rep.Errors)
	}
	total := 0.0
	for _, v := range rep.Requests {
		total += v
	}
	if total < float64(rep.Sent) {
		t.Fatalf("the masters counted %.0f manifest and blob requests, the nodes sent %d", total, rep.Sent)
	}
	for i, m := range l.Masters {
		got, want := rep.Share(i), bench.WantShare(i)
		t.Logf("%s: %.0f requests, %.2f%% (want %.0f%%); %.0f GET /v2/ checks", m.Name, rep.Requests[i], got, want, rep.Checks[i])
		if math.Abs(got-want) > 5 {
			t.Errorf("%s served %.2f%% of the requests, want %.0f ± 5", m.Name, got, want)
		}
	}
	interval := rep.HealthInterval
	periodic := math.Floor(1 + rep.Lifetime.Seconds()/(0.9*interval.Seconds()))
	bound := float64(nodes)*periodic + rep.Probes
	t.Logf("lifetime %s, health_interval %s: at most %.0f checks per node and master, %.0f probes in all: bound %.0f per master",
		rep.Lifetime.Round(time.Millisecond), interval, periodic, rep.Probes, bound)
	for i, m := range l.Masters {
		if rep.Checks[i] < nodes || rep.Checks[i] > bound {
			t.Errorf("%s got %.0f GET /v2/ checks, want %d..%.0f", m.Name, rep.Checks[i], nodes, bound)
		}
	}
}
