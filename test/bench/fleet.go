package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/transfer"
	"github.com/hopless/hopless/test/lab"
)

const (
	// fleetShareGoal is the most a master's share of the requests may differ
	// from its weight's share, in points.
	fleetShareGoal = 5.0
	// fleetCheckGoal is the most active checks per second a master should get.
	fleetCheckGoal = 100.0
	// fleetEjectGoal is the longest the fleet may take to stop using a frozen
	// master (95 % of the nodes).
	fleetEjectGoal = 1.5
	// fleetPoll is how often the nodes' balancer states are sampled.
	fleetPoll = 50 * time.Millisecond
	// fleetBucket is the width of the buckets of the load on a thawed master.
	fleetBucket = 100 * time.Millisecond
)

// The masters' request counter and the kinds it labels: the balancers' active
// checks and on-demand probes are GET /v2/ ("base"), the nodes' requests are
// manifests and blobs.
const (
	metricMasterRequests = "hopless_registryd_http_requests_total"
	kindCheck            = "base"
)

// FleetOptions size one run of the fleet.
type FleetOptions struct {
	// Nodes is the number of simulated nodes, one Balancer each.
	Nodes int
	// Interval is each node's mean time between two requests.
	Interval time.Duration
	// Steady is how long the nodes run before any master is frozen.
	Steady time.Duration
	// Requests, if set, makes each node send exactly that many requests, one
	// after another, instead of running for Steady: Requests in the report then
	// counts every one of them.
	Requests int
	// Freeze, if set, SIGSTOPs master-1 after Steady for Freeze, then SIGCONTs
	// it and watches Thawed longer.
	Freeze, Thawed time.Duration
	// NodeTOML is extra lines for each node's [[registry]] table, e.g.
	// "[registry.timeouts]\nhealth_interval = \"1s\"".
	NodeTOML string
}

// FleetReport is what a fleet run measured.
type FleetReport struct {
	Nodes int
	// Requests are the manifest and blob requests each master served in the
	// steady phase (its metrics), Checks its GET /v2/ over the whole run; both
	// per master, in order.
	Requests []float64
	Checks   []float64
	// ChecksPerSecond is Checks over the steady phase alone, per master.
	ChecksPerSecond []float64
	// Steady is how long the steady phase took; Lifetime is from the first
	// balancer's start to the last one's stop, the span of Checks.
	Steady, Lifetime time.Duration
	// Health is the node config's check schedule, as the balancers ran it.
	HealthInterval time.Duration
	// Sent counts the requests the nodes made, Failed those that failed.
	Sent, Failed int64
	// Hedges and Probes are the balancers' counters, over every node.
	Hedges, Probes float64
	// Ejected95 is the time from the freeze until 95 % of the nodes had
	// master-1 out of rotation; Back95 the time from the thaw until 95 % had it
	// back; FirstUse the time from the thaw to the first request to master-1
	// that its handler began after the thaw. Each is -1 when it did not happen.
	Ejected95, Back95, FirstUse time.Duration
	// EjectedShare samples the share of nodes with master-1 out, about every
	// fleetPoll from the freeze, at EjectedAt; ThawedRPS is master-1's
	// requests/s per fleetBucket from the thaw.
	EjectedShare []float64
	EjectedAt    []time.Duration
	ThawedRPS    []float64
}

// Share is master i's percentage of the steady requests.
func (r FleetReport) Share(i int) float64 {
	total := 0.0
	for _, v := range r.Requests {
		total += v
	}
	if total == 0 {
		return 0
	}
	return 100 * r.Requests[i] / total
}

// WantShare is master i's percentage by weight.
func WantShare(i int) float64 {
	ws := FleetWeights()
	total := 0
	for _, w := range ws {
		total += w
	}
	return 100 * float64(ws[i]) / float64(total)
}

// FleetWeights are the masters' weights in every simulated node's config, 3:1:1.
func FleetWeights() []int { return []int{3, 1, 1} }

// fleetNode is one simulated node: its balancer and what stops it.
type fleetNode struct {
	b    *balance.Balancer
	tr   *http.Transport
	stop context.CancelFunc
	done chan struct{}
}

// fleetTargets are the paths the nodes GET: a warm image's manifest and blobs.
type fleetTargets struct {
	manifest string
	blobs    []string
}

// RunFleet runs opts.Nodes in-process balancers, each configured from a node.toml
// of its own, against l's 3 masters: each node GETs the manifest or a blob of a warm
// image about every Interval. It measures the masters' load by their metrics, and,
// with Freeze, how the nodes' view of a frozen and then thawed master-1 changes.
func RunFleet(ctx context.Context, c Config, l *lab.Lab, opts FleetOptions) (FleetReport, error) {
	rep := FleetReport{Nodes: opts.Nodes, Ejected95: -1, Back95: -1, FirstUse: -1}
	if len(l.Masters) != len(FleetWeights()) {
		return rep, fmt.Errorf("fleet: the lab has %d masters, want %d", len(l.Masters), len(FleetWeights()))
	}
	targets, err := seedFleet(ctx, c, l)
	if err != nil {
		return rep, err
	}
	reg := prometheus.NewRegistry()
	metrics := balance.NewMetrics(reg)
	var nodes []*fleetNode
	defer func() {
		for _, n := range nodes {
			n.stop()
			<-n.done
			n.tr.CloseIdleConnections()
		}
	}()
	before, err := masterCounts(ctx, l)
	if err != nil {
		return rep, err
	}
	// The nodes start spread over one check interval, as nodes booted at
	// different times would be; starting all at once would measure the start.
	var interval time.Duration
	begin := time.Now()
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAll()
	for i := range opts.Nodes {
		cfg, tr, err := fleetConfig(l, i, opts.NodeTOML)
		if err != nil {
			return rep, err
		}
		interval = cfg.HealthInterval
		cfg.Metrics = metrics
		b, err := balance.New(cfg)
		if err != nil {
			return rep, fmt.Errorf("node-%d: %w", i, err)
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(time.Until(begin.Add(interval * time.Duration(i) / time.Duration(opts.Nodes)))):
		}
		nctx, stop := context.WithCancel(runCtx)
		n := &fleetNode{b: b, tr: tr, stop: stop, done: make(chan struct{})}
		nodes = append(nodes, n)
		go func() {
			defer close(n.done)
			b.Run(nctx)
		}()
		wg.Go(func() { fleetRequests(nctx, b, l.ImageHost, targets, opts.Interval, opts.Requests, &sent, &failed) })
	}
	rep.HealthInterval = interval
	c.logf("fleet: %d nodes started in %.1fs; each checks every master every %s and sends a request about every %s",
		opts.Nodes, time.Since(begin).Seconds(), interval, opts.Interval)

	steadyFrom, err := masterCounts(ctx, l)
	if err != nil {
		return rep, err
	}
	t0 := time.Now()
	if opts.Requests > 0 {
		steadyFrom = before
		wg.Wait()
	} else if err := sleepCtx(ctx, opts.Steady); err != nil {
		return rep, err
	}
	steadyTo, err := masterCounts(ctx, l)
	if err != nil {
		return rep, err
	}
	rep.Steady = time.Since(t0)
	for i := range l.Masters {
		rep.Requests = append(rep.Requests, steadyTo[i].requests-steadyFrom[i].requests)
		rep.ChecksPerSecond = append(rep.ChecksPerSecond, (steadyTo[i].checks-steadyFrom[i].checks)/rep.Steady.Seconds())
	}
	if opts.Freeze > 0 {
		if err := fleetFreeze(ctx, c, l, nodes, opts, &rep); err != nil {
			return rep, err
		}
	}
	stopAll()
	wg.Wait()
	for _, n := range nodes {
		<-n.done
	}
	rep.Lifetime = time.Since(begin)
	after, err := masterCounts(ctx, l)
	if err != nil {
		return rep, err
	}
	for i := range l.Masters {
		rep.Checks = append(rep.Checks, after[i].checks-before[i].checks)
	}
	rep.Sent, rep.Failed = sent.Load(), failed.Load()
	rep.Hedges, rep.Probes = gathered(reg, "hopless_plugin_hedges_total"), gathered(reg, "hopless_plugin_probes_total")
	return rep, nil
}

// fleetFreeze freezes master-1 while the nodes run, samples how many of them have
// it out of rotation, thaws it and samples how they take it back.
func fleetFreeze(ctx context.Context, c Config, l *lab.Lab, nodes []*fleetNode, opts FleetOptions, rep *FleetReport) error {
	const frozen = 0
	name := l.Masters[frozen].Name
	out := func() float64 {
		n := 0
		for _, nd := range nodes {
			if !nd.b.Status()[frozen].Healthy {
				n++
			}
		}
		return float64(n) / float64(len(nodes))
	}
	// watch samples out every fleetPoll for d and returns the samples and the
	// time at which the share first met done.
	watch := func(d time.Duration, done func(float64) bool) ([]float64, []time.Duration, time.Duration, error) {
		var samples []float64
		var ats []time.Duration
		at := time.Duration(-1)
		t0 := time.Now()
		tick := time.NewTicker(fleetPoll)
		defer tick.Stop()
		for time.Since(t0) < d {
			s := out()
			samples, ats = append(samples, s), append(ats, time.Since(t0))
			if at < 0 && done(s) {
				at = time.Since(t0)
			}
			select {
			case <-ctx.Done():
				return nil, nil, 0, ctx.Err()
			case <-tick.C:
			}
		}
		return samples, ats, at, nil
	}
	if err := l.Signal(name, syscall.SIGSTOP); err != nil {
		return err
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = l.Signal(name, syscall.SIGCONT)
		}
	}()
	c.logf("fleet: froze %s", name)
	samples, ats, at, err := watch(opts.Freeze, func(s float64) bool { return s >= 0.95 })
	if err != nil {
		return err
	}
	rep.EjectedShare, rep.EjectedAt, rep.Ejected95 = samples, ats, at
	if err := l.Signal(name, syscall.SIGCONT); err != nil {
		return err
	}
	thawAt := time.Now()
	thawed = true
	c.logf("fleet: thawed %s after %s", name, opts.Freeze)
	_, _, at, err = watch(opts.Thawed, func(s float64) bool { return s <= 0.05 })
	if err != nil {
		return err
	}
	rep.Back95 = at
	reqs, err := l.MasterRequests()
	if err != nil {
		return err
	}
	buckets := make([]float64, int(opts.Thawed/fleetBucket))
	for _, r := range reqs {
		if r.Master != name || !registryPathRE.MatchString(r.Path) {
			continue
		}
		since := r.Time.Add(-r.Duration).Sub(thawAt)
		if since < 0 {
			continue
		}
		if rep.FirstUse < 0 || since < rep.FirstUse {
			rep.FirstUse = since
		}
		if i := int(since / fleetBucket); i < len(buckets) {
			buckets[i] += 1 / fleetBucket.Seconds()
		}
	}
	rep.ThawedRPS = buckets
	return nil
}

// fleetRequests GETs the targets through b, one about every interval (randomly
// spread, so that the nodes do not send in step), until ctx ends or, if count is
// set, count requests were sent.
func fleetRequests(ctx context.Context, b *balance.Balancer, host string, t fleetTargets, interval time.Duration, count int, sent, failed *atomic.Int64) {
	client := &http.Client{Transport: b}
	paths := append([]string{t.manifest}, t.blobs...)
	timer := time.NewTimer(rand.N(interval))
	defer timer.Stop()
	first := rand.IntN(len(paths))
	for i := 0; count <= 0 || i < count; i++ {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		sent.Add(1)
		if err := fleetGet(ctx, client, "https://"+host+paths[(first+i)%len(paths)]); err != nil && ctx.Err() == nil {
			failed.Add(1)
		}
		timer.Reset(interval/2 + rand.N(interval))
	}
}

func fleetGet(ctx context.Context, client *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", strings.Join([]string{
		"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}, ", "))
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}

// fleetConfig is node i's balancer config, from a node.toml as a node's would be
// (the image host, the masters with their weights, the lab's CA, and extra), mapped
// exactly as plugin/transfer maps it in containerd, but quiet: 1000 nodes would
// flood the log.
func fleetConfig(l *lab.Lab, i int, extra string) (balance.Config, *http.Transport, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# node-%d\n[[registry]]\nhost = %q\n", i, l.ImageHost)
	ws := FleetWeights()
	for j, m := range l.Masters {
		fmt.Fprintf(&b, "[[registry.endpoint]]\nurl = \"https://%s\"\nweight = %d\n", m.Addr, ws[j])
	}
	fmt.Fprintf(&b, "[registry.tls]\nca = %q\n%s\n", l.CA, extra)
	node, err := conf.DecodeNode(fmt.Sprintf("node-%d.toml", i), b.String(), l.Dir)
	if err != nil {
		return balance.Config{}, nil, err
	}
	tr, err := transfer.Transport(node.Registries[0])
	if err != nil {
		return balance.Config{}, nil, fmt.Errorf("node-%d: %w", i, err)
	}
	cfg, err := transfer.BalanceConfig(node.Registries[0], tr, nil)
	if err != nil {
		return balance.Config{}, nil, fmt.Errorf("node-%d: %w", i, err)
	}
	cfg.Logger = nil
	return cfg, tr, nil
}

// seedFleet pushes a small image and warms every master with it.
func seedFleet(ctx context.Context, c Config, l *lab.Lab) (fleetTargets, error) {
	repo, tag := lab.UpstreamPath+"/bench/fleet", "v1"
	res, err := l.Seed(ctx, repo, tag, 2, 16<<10, false)
	if err != nil {
		return fleetTargets{}, err
	}
	if err := warmMasters(ctx, l, repo, tag); err != nil {
		return fleetTargets{}, err
	}
	base := "/v2/" + lab.LocalPrefix + "/" + strings.TrimPrefix(repo, lab.UpstreamPath+"/")
	t := fleetTargets{manifest: base + "/manifests/" + res.Digest}
	for _, d := range res.Layers {
		t.blobs = append(t.blobs, base+"/blobs/"+d)
	}
	c.logf("fleet: seeded and warmed %s (2 x 16 KiB)", res.Ref)
	return t, nil
}

type masterCount struct{ requests, checks float64 }

// masterCounts reads every master's manifest and blob requests and its GET /v2/.
func masterCounts(ctx context.Context, l *lab.Lab) ([]masterCount, error) {
	var out []masterCount
	for _, m := range l.Masters {
		s, err := lab.GetMetrics(ctx, "http://"+m.Metrics+"/metrics")
		if err != nil {
			return nil, fmt.Errorf("%s's metrics: %w", m.Name, err)
		}
		man, _ := s.Sum(metricMasterRequests, map[string]string{"kind": "manifest"})
		blob, _ := s.Sum(metricMasterRequests, map[string]string{"kind": "blob"})
		checks, found := s.Sum(metricMasterRequests, map[string]string{"kind": kindCheck, "method": http.MethodGet})
		if !found {
			return nil, fmt.Errorf("%s's metrics have no %s", m.Name, metricMasterRequests)
		}
		out = append(out, masterCount{requests: man + blob, checks: checks})
	}
	return out, nil
}

// gathered sums the samples of the counter name in reg.
func gathered(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fleet: 1000 simulated nodes (100 with --quick), each an in-process Balancer
// configured as a node is, against 3 masters weighted 3:1:1: each master's share of
// the requests and its active-check load, then master-1 frozen for 5 s and thawed.
func fleet(ctx context.Context, c Config) (_ []Result, err error) {
	const name = "fleet"
	opts := FleetOptions{Nodes: 1000, Interval: 4 * time.Second, Steady: 20 * time.Second, Freeze: 5 * time.Second, Thawed: 5 * time.Second}
	if c.Quick {
		opts.Nodes, opts.Interval, opts.Steady, opts.Freeze, opts.Thawed = 100, time.Second, 8*time.Second, 3*time.Second, 3*time.Second
	}
	o := c.Lab
	o.Dir = c.Dir + "/" + name
	o.Masters, o.Nodes, o.Mode, o.Proxies, o.Weights, o.Fallback = len(FleetWeights()), 0, lab.ModeInprocess, 0, FleetWeights(), false
	l, err := lab.Up(ctx, o)
	if err != nil {
		return nil, err
	}
	defer func() {
		downLab(l, &err)
		if err == nil {
			err = removeImageData(l)
		}
	}()
	rep, err := RunFleet(ctx, c, l, opts)
	if err != nil {
		return nil, err
	}
	c.logf("fleet: %d nodes sent %d requests (%d failed), %.0f hedges, %.0f on-demand probes", rep.Nodes, rep.Sent, rep.Failed, rep.Hedges, rep.Probes)
	var out []Result
	for i, m := range l.Masters {
		share := newResult(name, m.Name+"-share", "%", baselineGoal, rep.Share(i), WantShare(i))
		share.Goal = fmt.Sprintf("%.0f ± %.0f", WantShare(i), fleetShareGoal)
		dev := newResult(name, m.Name+"-share-deviation", unitPoints, baselineNone, math.Abs(rep.Share(i)-WantShare(i)), 0)
		dev.Goal = fmt.Sprintf("<= %.0f", fleetShareGoal)
		checks := newResult(name, m.Name+"-checks-per-s", "/s", baselineGoal, rep.ChecksPerSecond[i], fleetCheckGoal)
		checks.Goal = fmt.Sprintf("<= %.0f", fleetCheckGoal)
		out = append(out, share, dev, checks)
		c.logf("fleet: %s served %.0f requests (%.2f%%, want %.0f%%) and %.1f checks/s", m.Name, rep.Requests[i], rep.Share(i), WantShare(i), rep.ChecksPerSecond[i])
	}
	seconds := func(d time.Duration) (float64, int) {
		if d < 0 {
			return 0, 1
		}
		return d.Seconds(), 0
	}
	ej, ejFailed := seconds(rep.Ejected95)
	eject := newResult(name, "frozen-ejected-95-s", "s", baselineGoal, ej, fleetEjectGoal)
	eject.Goal, eject.OursFailed = fmt.Sprintf("<= %.1f", fleetEjectGoal), ejFailed
	if ejFailed > 0 {
		eject.Ratio = 0
	}
	back, backFailed := seconds(rep.Back95)
	first, firstFailed := seconds(rep.FirstUse)
	bk := newResult(name, "thawed-back-95-s", "s", baselineNone, back, 0)
	bk.OursFailed = backFailed
	fu := newResult(name, "thawed-first-use-s", "s", baselineNone, first, 0)
	fu.OursFailed = firstFailed
	out = append(out, eject, bk, fu,
		newResult(name, "requests", unitCount, baselineNone, float64(rep.Sent), 0),
		newResult(name, "failed-requests", unitCount, baselineNone, float64(rep.Failed), 0),
		newResult(name, "hedges", unitCount, baselineNone, rep.Hedges, 0),
		newResult(name, "probes", unitCount, baselineNone, rep.Probes, 0))
	var shares []string
	for i, s := range rep.EjectedShare {
		shares = append(shares, fmt.Sprintf("%.2fs:%.0f%%", rep.EjectedAt[i].Seconds(), 100*s))
	}
	c.logf("fleet: share of nodes with master-1 out after the freeze: %s", strings.Join(shares, " "))
	var rps []string
	for i, v := range rep.ThawedRPS {
		rps = append(rps, fmt.Sprintf("%.0f", v))
		if i < 30 {
			out = append(out, newResult(name, fmt.Sprintf("thawed-rps-%.1fs", float64(i)*fleetBucket.Seconds()), unitRate, baselineNone, v, 0))
		}
	}
	c.logf("fleet: master-1's requests/s per %s after the thaw: %s", fleetBucket, strings.Join(rps, " "))
	return out, nil
}
