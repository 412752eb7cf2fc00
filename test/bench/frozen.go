package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// frozenRow is one row of frozen-master: which masters are frozen, when, and on
// what image. Each run of a row freezes one set of masters, on a fresh node.
type frozenRow struct {
	// metric names the row's results: metric-s (the first set) and, in the full
	// run, metric-mean-s (the mean over every set).
	metric string
	about  string
	goal   string
	// before is how long the masters are frozen before the pull starts; 0 freezes
	// them right at its start.
	before time.Duration
	// cold pulls an image that no master has seen (one per run); otherwise the
	// warm image, which every master has served.
	cold bool
	// sets are the masters frozen in each run, 1-based.
	sets [][]int
}

// nodeFrozenMaster: the time that SIGSTOPped masters add to a pull, in three rows,
// each for every node mode in the same run: (a) one master frozen 3 s before a warm
// pull (a balancer with health checks has had time to notice), (b) one master
// frozen right at a warm pull's start (it has not), (c) 2 of the 3 masters frozen
// right before a cold pull (the one left must fill from the upstream). Added time
// is the pull minus the same kind of pull (warm or cold) on another fresh node
// with no master frozen. A pull that fails or exceeds its bound is a failed run,
// reported as FAILED and never as a time. The full run freezes each master in turn
// (each pair, for the cold row), each on a fresh node, and also reports the mean:
// which master a node's requests meet first differs by mode (stock hosts.toml
// always tries master-1 first; nginx's least_conn goes round the masters).
func nodeFrozenMaster(ctx context.Context, c Config) ([]Result, error) {
	const name = "frozen-master"
	size, bound, ourBound := int64(16<<20), 200*time.Second, 200*time.Second
	singles, pairs := [][]int{{1}, {2}, {3}}, [][]int{{1, 2}, {2, 3}, {1, 3}}
	if c.Quick {
		// A frozen master costs stock hosts.toml tens of seconds (50 s measured
		// here on new connections, 150 s on established ones), and nginx fails after 10 to 30 s: the quick
		// run bounds them at 5 s, where they are FAILED, and freezes master-1
		// (masters 1 and 2 for the cold row) only.
		size, bound, ourBound = 2<<20, 5*time.Second, 30*time.Second
		singles, pairs = singles[:1], pairs[:1]
	}
	rows := []frozenRow{
		{metric: "added-before", about: "frozen 3 s before a warm pull", goal: "<= 0.3 s added", before: 3 * time.Second, sets: singles},
		{metric: "added", about: "frozen at a warm pull's start", goal: "<= 0.5 s added", sets: singles},
		{metric: "added-cold-2of3", about: "frozen at a cold pull's start", cold: true, sets: pairs},
	}
	nodes := 2 // the healthy warm pull and the healthy cold pull
	for _, r := range rows {
		nodes += len(r.sets)
	}
	first, all := make([]figures, len(rows)), make([]figures, len(rows))
	for i := range rows {
		first[i], all[i] = figures{}, figures{}
	}
	// NRI nodes (stock containerd, hosts.toml kept by hopless-nri) are ours too,
	// measured beside the in-process plugin against the same baselines.
	modes := append(slices.Clone(nodeModes), lab.ModeNRI)
	err := eachRoundModes(ctx, c, name, 1, nodes, modes, nil, func(ctx context.Context, _ int, mode string, l *lab.Lab) error {
		limit := bound
		if mode == lab.ModeInprocess || mode == lab.ModeNRI {
			limit = ourBound
		}
		warm, err := seedWarm(ctx, c, l, "frozen", 4, size)
		if err != nil {
			return err
		}
		healthyCold, err := seedCold(ctx, c, l, "cold-healthy", 4, size)
		if err != nil {
			return err
		}
		var colds []benchImage
		for _, r := range rows {
			for range r.sets {
				if !r.cold {
					continue
				}
				im, err := seedCold(ctx, c, l, fmt.Sprintf("cold-%d", len(colds)+1), 4, size)
				if err != nil {
					return err
				}
				colds = append(colds, im)
			}
		}
		warmS, warmOK, err := timedPull(ctx, c, mode, l, 1, warm, limit)
		if err != nil {
			return err
		}
		coldS, coldOK, err := timedPull(ctx, c, mode, l, 2, healthyCold, limit)
		if err != nil {
			return err
		}
		node := 2
		for ri, row := range rows {
			for k, set := range row.sets {
				node++
				im, healthy, healthyOK := warm, warmS, warmOK
				if row.cold {
					im, colds = colds[0], colds[1:]
					healthy, healthyOK = coldS, coldOK
				}
				// A master frozen at a pull's start holds an NRI node's pull for
				// containerd's 30 s response-header timeout: the quick run, which
				// bounds ours at 30 s, measures NRI only with the freeze ahead.
				if mode == lab.ModeNRI && c.Quick && row.before == 0 {
					continue
				}
				frozen := masterNames(l, set)
				took, ok, err := frozenPull(ctx, c, mode, l, frozen, row.before, node, im, limit)
				if err != nil {
					return err
				}
				if err := settle(ctx, c, l, frozen, node+1); err != nil {
					return err
				}
				figs := []*figure{all[ri].of(mode)}
				if k == 0 {
					figs = append(figs, first[ri].of(mode))
				}
				who := strings.Join(frozen, " and ")
				switch {
				case !ok:
					c.logf("%s: %s %s: FAILED", mode, who, row.about)
					for _, f := range figs {
						f.fail()
					}
				case !healthyOK:
					c.logf("%s: %s %s: the pull took %.3fs, but the healthy pull it is measured against FAILED", mode, who, row.about, took)
					for _, f := range figs {
						f.fail()
					}
				default:
					added := took - healthy
					if added < 0.001 {
						// No slower than the healthy pull: timing noise, not a gain.
						c.logf("%s: added time %.3fs is not positive (timing noise); counted as 0.001s", mode, added)
						added = 0.001
					}
					c.logf("%s: %s %s added %.3fs to a %.3fs pull", mode, who, row.about, added, healthy)
					for _, f := range figs {
						f.add(added)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Result
	for ri, row := range rows {
		out = append(out, vsBaselineFigures(name, row.metric+"-s", "s", row.goal, baselineNginx, mean, first[ri])...)
		if !c.Quick || row.before > 0 {
			out = append(out, nriFigures(name, row.metric+"-nri-s", row.goal, first[ri])...)
		}
	}
	if !c.Quick {
		for ri, row := range rows {
			out = append(out, vsBaselineFigures(name, row.metric+"-mean-s", "s", row.goal, baselineNginx, mean, all[ri])...)
			out = append(out, nriFigures(name, row.metric+"-nri-mean-s", row.goal, all[ri])...)
		}
	}
	return out, nil
}

// nriFigures compares the NRI nodes' figure with both baselines.
func nriFigures(bench, metric, goal string, fs figures) []Result {
	return []Result{
		figureResult(bench, metric, "s", baselineNginx, goal, mean, *fs.of(lab.ModeNRI), *fs.of(lab.ModeNginx)),
		figureResult(bench, metric, "s", baselineStock, goal, mean, *fs.of(lab.ModeNRI), *fs.of(lab.ModeStock)),
	}
}

// masterNames names the masters of a set of 1-based indexes.
func masterNames(l *lab.Lab, set []int) []string {
	var out []string
	for _, i := range set {
		out = append(out, l.Masters[i-1].Name)
	}
	return out
}

// frozenPull freezes masters with SIGSTOP, waits before, pulls im on node bounded by
// limit, and lets the masters go on again. A pull that fails or is cut at the bound
// is a failed run (ok false).
func frozenPull(ctx context.Context, c Config, mode string, l *lab.Lab, masters []string, before time.Duration, node int, im benchImage, limit time.Duration) (took float64, ok bool, err error) {
	syscall.Sync()
	defer func() {
		for _, m := range masters {
			if cerr := l.Signal(m, syscall.SIGCONT); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	for _, m := range masters {
		if err := l.Signal(m, syscall.SIGSTOP); err != nil {
			return 0, false, err
		}
	}
	who := strings.Join(masters, " and ")
	if before > 0 {
		select {
		case <-ctx.Done():
			return 0, false, ctx.Err()
		case <-time.After(before):
		}
	}
	when := "at its start"
	if before > 0 {
		when = fmt.Sprintf("%s before", before)
	}
	took, ok, err = boundedPull(ctx, c, mode, l, node, im, limit, fmt.Sprintf("with %s frozen %s", who, when))
	if ok {
		c.logf("%s: node-%d pulled %s (%s) with %s frozen %s in %.3fs", mode, node, im.ref, im, who, when, took)
	}
	return took, ok, err
}

// settleLimit bounds settle's waits.
const settleLimit = 30 * time.Second

// settle waits, once the frozen masters have been let go, until they answer
// /readyz again and, in inprocess mode, until every node from fromNode on counts
// every endpoint healthy (hopless_plugin_endpoint_healthy), so that one run's
// freeze does not carry over into the next run's node: those nodes' health checks
// saw the freeze too.
func settle(ctx context.Context, c Config, l *lab.Lab, frozen []string, fromNode int) error {
	client, err := newClient(l)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	client.Timeout = time.Second
	t0 := time.Now()
	for _, name := range frozen {
		addr := ""
		for _, m := range l.Masters {
			if m.Name == name {
				addr = m.Addr
			}
		}
		if err := waitFor(ctx, settleLimit, func() (bool, error) {
			resp, err := client.Get("https://" + addr + "/readyz")
			if err != nil {
				return false, nil
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		}); err != nil {
			return fmt.Errorf("%s does not answer /readyz again after SIGCONT: %w", name, err)
		}
	}
	// hopless-nri runs plugin/balance's checks too, and exports the same gauge.
	if l.Mode != lab.ModeInprocess && l.Mode != lab.ModeNRI {
		return nil
	}
	for node := fromNode; node <= len(l.Nodes); node++ {
		var last string
		err := waitFor(ctx, settleLimit, func() (bool, error) {
			ms, err := l.NodeMetrics(ctx, node)
			if err != nil {
				return false, err
			}
			hs := ms.Of("hopless_plugin_endpoint_healthy")
			var down []string
			for _, s := range hs {
				if s.Value != 1 {
					down = append(down, s.Labels["endpoint"])
				}
			}
			last = fmt.Sprintf("%d endpoints, not healthy: %v", len(hs), down)
			return len(hs) == len(l.Masters) && len(down) == 0, nil
		})
		if err != nil {
			return fmt.Errorf("node-%d does not count every endpoint healthy again (%s): %w", node, last, err)
		}
	}
	up := ""
	if len(frozen) > 0 {
		up = strings.Join(frozen, " and ") + " up again, "
	}
	c.logf("%s: settled in %.1fs: %snode-%d on count every endpoint healthy", l.Mode, time.Since(t0).Seconds(), up, fromNode)
	return nil
}

// waitFor polls cond every 100 ms until it is true, fails, or limit passes.
func waitFor(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still not so after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
