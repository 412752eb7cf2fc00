package bench

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The balancer's counters that hedge-load reads from the node.
const (
	metricRequests  = "hopless_plugin_requests_total"
	metricClient    = "hopless_plugin_client_requests_total"
	metricHedges    = "hopless_plugin_hedges_total"
	metricExhausted = "hopless_plugin_hedge_budget_exhausted_total"
)

// hedgeGoal is the most backend requests per client request that hedging may cost.
const hedgeGoal = 1.1

// registryPathRE matches the registry API requests that a node sends and the
// balancer spreads: the manifests and blobs of a repository. The API base /v2/ (the
// health checks) and /hopless/v1/peer (masters filling from each other) do not.
var registryPathRE = regexp.MustCompile(`^/v2/.+/(manifests|blobs)/[^/]+$`)

// hedgeLoad: hedging must not multiply the load when every master is slow. Every
// master is slow to the first byte because the upstream is: it holds every request
// for the benchmark's images for 1.5 s (lab.Faults.HeaderDelay), longer than the
// plugin's largest hedge delay (hedge_max, 1 s by default), and every master waits
// on it for cold content. A fresh node pulls several cold images at once. From the
// node's metrics, backend requests per client request is the sum of
// hopless_plugin_requests_total over the endpoints (every attempt, hedges and
// retries included) over the sum of hopless_plugin_client_requests_total; the
// masters' access logs cross-check it (manifest and blob requests of the images).
// The baselines, which never hedge, give the masters' requests per pull and the
// pull time in the same run.
func hedgeLoad(ctx context.Context, c Config) ([]Result, error) {
	const name = "hedge-load"
	images, layers, size, bound := 8, 4, int64(4<<20), 3*time.Minute
	if c.Quick {
		images, layers, size, bound = 3, 2, int64(1<<20), 90*time.Second
	}
	const delay = 1500 * time.Millisecond
	pullS, perPull := figures{}, map[string]float64{}
	var backend, client, logged, hedges, exhausted float64
	err := eachRound(ctx, c, name, 1, 1, func(ctx context.Context, _ int, mode string, l *lab.Lab) error {
		repo := lab.UpstreamPath + "/bench/hedge"
		var ims []benchImage
		for i := range images {
			tag := fmt.Sprintf("h%d", i+1)
			res, err := l.Seed(ctx, repo, tag, layers, size, false)
			if err != nil {
				return err
			}
			ims = append(ims, benchImage{repo: repo, tag: tag, layers: layers, bytes: res.Bytes, ref: l.PullRef(repo, tag)})
		}
		c.logf("%s: seeded %d cold images of %d x %d MiB in %s; the upstream answers each of their requests after %s", mode, images, layers, size>>20, repo, delay)
		if err := lab.WriteFaults(l.FaultsFile(), lab.Faults{Repo: repo, HeaderDelay: lab.Duration(delay)}); err != nil {
			return err
		}
		local := "/v2/" + lab.LocalPrefix + "/" + strings.TrimPrefix(repo, lab.UpstreamPath+"/") + "/"
		logBefore, err := masterRegistryRequests(l, local)
		if err != nil {
			return err
		}
		var mBefore lab.Scrape
		if mode == lab.ModeInprocess {
			if mBefore, err = l.NodeMetrics(ctx, 1); err != nil {
				return err
			}
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
		)
		t0 := time.Now()
		for _, im := range ims {
			wg.Go(func() {
				took, ok, err := boundedPull(ctx, c, mode, l, 1, im, bound, "(every master slow)")
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					errs = append(errs, err)
				case !ok:
					pullS.of(mode).fail()
				default:
					c.logf("%s: node-1 pulled %s (%s) in %.3fs", mode, im.ref, im, took)
					pullS.of(mode).add(took)
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			return errs[0]
		}
		wall := time.Since(t0).Seconds()
		// A hedge that lost is logged by its master when that master's wait on
		// the upstream ends, after the pull: read until the logs stop changing.
		logAfter, err := settledRegistryRequests(ctx, l, local)
		if err != nil {
			return err
		}
		if err := lab.WriteFaults(l.FaultsFile(), lab.Faults{}); err != nil {
			return err
		}
		reqs := float64(logAfter - logBefore)
		perPull[mode] = reqs / float64(images)
		c.logf("%s: %d pulls at once in %.3fs; the masters logged %.0f manifest and blob requests for them, %.2f per pull", mode, images, wall, reqs, perPull[mode])
		if mode != lab.ModeInprocess {
			return nil
		}
		mAfter, err := l.NodeMetrics(ctx, 1)
		if err != nil {
			return err
		}
		delta := func(metric string) (float64, error) {
			a, found := mAfter.Sum(metric, nil)
			if !found {
				return 0, fmt.Errorf("node-1's metrics have no %s: bin/containerd lacks the balancer's counter", metric)
			}
			b, _ := mBefore.Sum(metric, nil)
			return a - b, nil
		}
		for _, m := range []struct {
			metric string
			v      *float64
		}{{metricRequests, &backend}, {metricClient, &client}, {metricHedges, &hedges}, {metricExhausted, &exhausted}} {
			if *m.v, err = delta(m.metric); err != nil {
				return err
			}
		}
		if client == 0 {
			return fmt.Errorf("node-1 counted no client requests (%s) for %d pulls", metricClient, images)
		}
		logged = reqs
		c.logf("%s: %.0f client requests, %.0f backend requests (%.3f per client request; the masters' logs: %.0f, %.3f), %.0f hedges, hedge budget exhausted %.0f times",
			mode, client, backend, backend/client, reqs, reqs/client, hedges, exhausted)
		return nil
	})
	if err != nil {
		return nil, err
	}
	goal := fmt.Sprintf("<= %.1f", hedgeGoal)
	perClient := newResult(name, "backend-per-client", "x", baselineGoal, backend/client, hedgeGoal)
	perClient.Goal = goal
	logPerClient := newResult(name, "master-log-per-client", "x", baselineGoal, logged/client, hedgeGoal)
	logPerClient.Goal = goal + " (cross-check: the masters' access logs)"
	out := []Result{perClient, logPerClient}
	out = append(out, vsBaselines(name, "master-requests-per-pull", "req/pull", perPull)...)
	out = append(out, vsBaselineFigures(name, "pull-s", "s", "", baselineNginx, median, pullS)...)
	out = append(out,
		newResult(name, "client-requests", unitCount, baselineNone, client, 0),
		newResult(name, "hedges", unitCount, baselineNone, hedges, 0),
		newResult(name, "hedge-budget-exhausted", unitCount, baselineNone, exhausted, 0),
	)
	return out, nil
}

// masterRegistryRequests counts the manifest and blob GETs and HEADs under the path
// prefix in every master's access log.
func masterRegistryRequests(l *lab.Lab, prefix string) (int, error) {
	reqs, err := l.MasterRequests()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range reqs {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.HasPrefix(r.Path, prefix) && registryPathRE.MatchString(r.Path) {
			n++
		}
	}
	return n, nil
}

// settledRegistryRequests is masterRegistryRequests once the count has not changed
// for 3 s.
func settledRegistryRequests(ctx context.Context, l *lab.Lab, prefix string) (int, error) {
	const poll, still, limit = 500 * time.Millisecond, 6, time.Minute
	last, same := -1, 0
	deadline := time.Now().Add(limit)
	for {
		n, err := masterRegistryRequests(l, prefix)
		if err != nil {
			return 0, err
		}
		if n == last {
			if same++; same >= still {
				return n, nil
			}
		} else {
			last, same = n, 0
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the masters' access logs still change after %s", limit)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(poll):
		}
	}
}
