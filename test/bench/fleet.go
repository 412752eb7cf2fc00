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
	// Interval is each node's mean time between two requests (within a pull, with
	// PullEvery).
	Interval time.Duration
	// Steady is how long the steady phase lasts, in which the masters' load is
	// measured, before any master is frozen.
	Steady time.Duration
	// Requests, if set, makes each node send exactly that many requests, one
	// after another, instead of running for Steady: Requests in the report then
	// counts every one of them.
	Requests int
	// PullEvery, if set, makes the nodes pull rather than send all along: a pull
	// is PullRequests requests about Interval apart, and a node waits about
	// PullEvery (±50 %) between two pulls, the first at a random point of one.
	PullEvery    time.Duration
	PullRequests int
	// StartOver spreads the nodes' starts, as nodes booted at different times
	// would be; 0 means one health_interval.
	StartOver time.Duration
	// Warmup is how long the nodes run after the last one started before the
	// steady phase, so that their checks have spread out.
	Warmup time.Duration
	// Freeze, if set, SIGSTOPs master-1 after Steady for Freeze, then SIGCONTs
	// it and watches Thawed longer.
	Freeze, Thawed time.Duration
	// NodeTOML is extra lines for each node's [[registry]] table, e.g.
	// "[registry.timeouts]\nhealth_interval = \"1s\"".
	NodeTOML string
	// Tune, if set, changes each node's balancer config after it was read from
	// its node.toml, for what node.toml cannot say.
	Tune func(*balance.Config)
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
	// HealthInterval and HealthIdleInterval are the node config's check
	// schedule, as the balancers ran it.
	HealthInterval, HealthIdleInterval time.Duration
	// Sent counts the requests the nodes made, Failed those that failed, and
	// Errors holds the first few of their errors.
	Sent, Failed int64
	Errors       []string
	// Hedges and Probes are the balancers' counters, over every node;
	// CheckReasons counts their periodic checks by reason, Skipped those that a
	// real answer made unnecessary.
	Hedges, Probes, Skipped float64
	CheckReasons            map[string]float64
	// Active is how many nodes were active (Balancer.Active) when master-1 froze.
	Active int
	// Ejected95 is the time from the freeze until 95 % of the nodes that were
	// active then had master-1 out of rotation; Back95 the time from the thaw
	// until 95 % of all nodes had it back; FirstUse the time from the thaw to
	// the first request to master-1 that its handler began after the thaw. Each
	// is -1 when it did not happen.
	Ejected95, Back95, FirstUse time.Duration
	// EjectedShare samples the share of the nodes active at the freeze that had
	// master-1 out, EjectedAll that of all nodes, about every fleetPoll from the
	// freeze, at EjectedAt; ThawedRPS is master-1's requests/s per fleetBucket
	// from the thaw.
	EjectedShare, EjectedAll []float64
	EjectedAt                []time.Duration
	ThawedRPS                []float64
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
// image about every Interval, or in pulls with PullEvery. It measures the masters'
// load by their metrics, and, with Freeze, how the nodes' view of a frozen and then
// thawed master-1 changes.
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
	begin := time.Now()
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var sent atomic.Int64
	var failed fleetErrors
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAll()
	spreadOver := opts.StartOver
	for i := range opts.Nodes {
		cfg, tr, err := fleetConfig(l, i, opts.NodeTOML)
		if err != nil {
			return rep, err
		}
		rep.HealthInterval, rep.HealthIdleInterval = cfg.HealthInterval, cfg.HealthIdleInterval
		if spreadOver == 0 {
			spreadOver = cfg.HealthInterval
		}
		cfg.Metrics = metrics
		if opts.Tune != nil {
			opts.Tune(&cfg)
		}
		b, err := balance.New(cfg)
		if err != nil {
			return rep, fmt.Errorf("node-%d: %w", i, err)
		}
		select {
		case <-ctx.Done():
			return rep, ctx.Err()
		case <-time.After(time.Until(begin.Add(spreadOver * time.Duration(i) / time.Duration(opts.Nodes)))):
		}
		nctx, stop := context.WithCancel(runCtx)
		n := &fleetNode{b: b, tr: tr, stop: stop, done: make(chan struct{})}
		nodes = append(nodes, n)
		go func() {
			defer close(n.done)
			b.Run(nctx)
		}()
		wg.Go(func() { fleetRequests(nctx, b, l.ImageHost, targets, opts, &sent, &failed) })
	}
	how := fmt.Sprintf("sends a request about every %s", opts.Interval)
	if opts.PullEvery > 0 {
		how = fmt.Sprintf("pulls (%d requests about %s apart) about every %s", opts.PullRequests, opts.Interval, opts.PullEvery)
	}
	c.logf("fleet: %d nodes started in %.1fs; each checks every master every %s while active, every %s while idle, and %s",
		opts.Nodes, time.Since(begin).Seconds(), rep.HealthInterval, rep.HealthIdleInterval, how)
	if err := sleepCtx(ctx, opts.Warmup); err != nil {
		return rep, err
	}

	steadyFrom, err := masterCounts(ctx, l)
	if err != nil {
		return rep, err
	}
	t0 := time.Now()
	if opts.Requests > 0 {
		steadyFrom = before
		t0 = begin
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
	rep.Sent = sent.Load()
	rep.Failed, rep.Errors = failed.get()
	rep.Hedges, rep.Probes = gathered(reg, "hopless_plugin_hedges_total", nil), gathered(reg, "hopless_plugin_probes_total", nil)
	rep.Skipped = gathered(reg, "hopless_plugin_health_checks_skipped_total", nil)
	rep.CheckReasons = map[string]float64{}
	for _, r := range []string{"start", "wake", "active", "out", "idle"} {
		rep.CheckReasons[r] = gathered(reg, "hopless_plugin_health_checks_total", map[string]string{"reason": r})
	}
	return rep, nil
}

// fleetFreeze freezes master-1 while the nodes run, samples how many of them have
// it out of rotation, thaws it and samples how they take it back.
func fleetFreeze(ctx context.Context, c Config, l *lab.Lab, nodes []*fleetNode, opts FleetOptions, rep *FleetReport) error {
	const frozen = 0
	name := l.Masters[frozen].Name
	// out is the share of ns that have master-1 out of rotation.
	out := func(ns []*fleetNode) float64 {
		n := 0
		for _, nd := range ns {
			if !nd.b.Status()[frozen].Healthy {
				n++
			}
		}
		return float64(n) / float64(max(len(ns), 1))
	}
	// watch samples out(ns) and out(nodes) every fleetPoll for d and returns the
	// samples and the time at which the share of ns first met done.
	watch := func(d time.Duration, ns []*fleetNode, done func(float64) bool) ([]float64, []float64, []time.Duration, time.Duration, error) {
		var samples, all []float64
		var ats []time.Duration
		at := time.Duration(-1)
		t0 := time.Now()
		tick := time.NewTicker(fleetPoll)
		defer tick.Stop()
		for time.Since(t0) < d {
			s := out(ns)
			samples, all, ats = append(samples, s), append(all, out(nodes)), append(ats, time.Since(t0))
			if at < 0 && done(s) {
				at = time.Since(t0)
			}
			select {
			case <-ctx.Done():
				return nil, nil, nil, 0, ctx.Err()
			case <-tick.C:
			}
		}
		return samples, all, ats, at, nil
	}
	// The nodes that are active now are those whose use of master-1 has to stop;
	// an idle node uses no master, and checks at once when it turns active.
	var active []*fleetNode
	for _, nd := range nodes {
		if nd.b.Active() {
			active = append(active, nd)
		}
	}
	rep.Active = len(active)
	if err := l.Signal(name, syscall.SIGSTOP); err != nil {
		return err
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = l.Signal(name, syscall.SIGCONT)
		}
	}()
	c.logf("fleet: froze %s with %d of %d nodes active", name, len(active), len(nodes))
	samples, all, ats, at, err := watch(opts.Freeze, active, func(s float64) bool { return s >= 0.95 })
	if err != nil {
		return err
	}
	if len(active) == 0 {
		at = -1
	}
	rep.EjectedShare, rep.EjectedAll, rep.EjectedAt, rep.Ejected95 = samples, all, ats, at
	if err := l.Signal(name, syscall.SIGCONT); err != nil {
		return err
	}
	thawAt := time.Now()
	thawed = true
	c.logf("fleet: thawed %s after %s", name, opts.Freeze)
	_, _, _, at, err = watch(opts.Thawed, nodes, func(s float64) bool { return s <= 0.05 })
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

// fleetRequests GETs the targets through b until ctx ends: one about every
// opts.Interval (randomly spread, so that the nodes do not send in step), and
// opts.Requests of them if set; or, with opts.PullEvery, in pulls.
func fleetRequests(ctx context.Context, b *balance.Balancer, host string, t fleetTargets, opts FleetOptions, sent *atomic.Int64, failed *fleetErrors) {
	client := &http.Client{Transport: b}
	paths := append([]string{t.manifest}, t.blobs...)
	interval := opts.Interval
	first := rand.IntN(len(paths))
	wait := rand.N(interval)
	if opts.PullEvery > 0 {
		wait = rand.N(opts.PullEvery)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for i := 0; opts.Requests <= 0 || i < opts.Requests; i++ {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		sent.Add(1)
		if err := fleetGet(ctx, client, "https://"+host+paths[(first+i)%len(paths)]); err != nil && ctx.Err() == nil {
			failed.add(err)
		}
		wait = interval/2 + rand.N(interval)
		if opts.PullEvery > 0 && (i+1)%max(opts.PullRequests, 1) == 0 {
			wait = opts.PullEvery/2 + rand.N(opts.PullEvery)
		}
		timer.Reset(wait)
	}
}

// fleetErrors counts the nodes' failed requests and keeps the first few errors.
type fleetErrors struct {
	mu    sync.Mutex
	n     int64
	first []string
}

func (f *fleetErrors) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if len(f.first) < 5 {
		f.first = append(f.first, err.Error())
	}
}

func (f *fleetErrors) get() (int64, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.first
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

// masterCounts reads every master's manifest and blob requests and its GET /v2/,
// trying each master three times: a master busy with a thousand nodes' checks may
// miss the scrape's deadline.
func masterCounts(ctx context.Context, l *lab.Lab) ([]masterCount, error) {
	var err error
	for range 3 {
		var out []masterCount
		if out, err = masterCountsOnce(ctx, l); err == nil || ctx.Err() != nil {
			return out, err
		}
	}
	return nil, err
}

func masterCountsOnce(ctx context.Context, l *lab.Lab) ([]masterCount, error) {
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

// gathered sums the samples of the counter name in reg whose labels include want.
func gathered(reg *prometheus.Registry, name string, want map[string]string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == k && lp.GetValue() == v
				}
				if !found {
					continue next
				}
			}
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

// fleetBaselineTOML and fleetBaselineTune make the check schedule of before: every
// master every health_interval whatever the node does, answered or not, and a master
// back at its full weight at once.
const fleetBaselineTOML = "[registry.timeouts]\nhealth_idle_interval = \"1s\"\n[registry.outlier]\nslow_start = \"0s\""

func fleetBaselineTune(c *balance.Config) { c.FixedChecks = true }

// fleetBaseline names the baseline of the fleet benchmarks.
const fleetBaseline = "old-schedule"

// fleet: 100 simulated nodes, each an in-process Balancer configured as a node is,
// against 3 masters weighted 3:1:1, every node sending a request about every
// second: each master's share of the requests and its active-check load, then
// master-1 frozen for 5 s and thawed; ours, then the old check schedule in the same
// lab.
func fleet(ctx context.Context, c Config) ([]Result, error) {
	opts := FleetOptions{Nodes: 100, Interval: time.Second, Steady: 20 * time.Second, Freeze: 5 * time.Second, Thawed: 12 * time.Second}
	if c.Quick {
		opts.Steady, opts.Freeze, opts.Thawed = 8*time.Second, 3*time.Second, 6*time.Second
	}
	return fleetBench(ctx, c, "fleet", opts)
}

// fleet1000: 1000 simulated nodes that pull now and then (12 requests about 250 ms
// apart, about every 90 s), started over 10 s; as fleet otherwise. With --quick, 100
// nodes pulling about every 10 s, for the e2e harness.
func fleet1000(ctx context.Context, c Config) ([]Result, error) {
	opts := FleetOptions{
		Nodes: 1000, Interval: 250 * time.Millisecond, PullEvery: 90 * time.Second, PullRequests: 12,
		StartOver: 10 * time.Second, Warmup: 45 * time.Second, Steady: 60 * time.Second,
		Freeze: 5 * time.Second, Thawed: 12 * time.Second,
	}
	if c.Quick {
		opts.Nodes, opts.PullEvery, opts.StartOver, opts.Warmup, opts.Steady = 100, 10*time.Second, 2*time.Second, 3*time.Second, 8*time.Second
		opts.Freeze, opts.Thawed = 3*time.Second, 4*time.Second
	}
	return fleetBench(ctx, c, "fleet-1000", opts)
}

// fleetBench runs the fleet with opts twice in one lab, with the node defaults
// (ours) and with fleetBaselineTOML, and compares the two.
func fleetBench(ctx context.Context, c Config, name string, opts FleetOptions) (_ []Result, err error) {
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
	var reps [2]FleetReport
	for i, toml := range []string{opts.NodeTOML, fleetBaselineTOML} {
		side := "ours"
		run := opts
		if i == 1 {
			side, run.Tune = fleetBaseline, fleetBaselineTune
		}
		c.logf("%s: %s", name, side)
		run.NodeTOML = toml
		rep, err := RunFleet(ctx, c, l, run)
		switch {
		case err == nil:
		case i == 0 || ctx.Err() != nil:
			return nil, fmt.Errorf("%s (%s): %w", name, side, err)
		default:
			// The old schedule can overload the machine (1000 nodes: 3000 checks
			// a second); that is a failed run of the baseline, not of ours.
			c.logf("%s: %s FAILED: %v", name, side, err)
			return fleetResults(name, l, reps[0], nil), nil
		}
		reps[i] = rep
		logFleet(c, name+" "+side, l, reps[i])
	}
	return fleetResults(name, l, reps[0], &reps[1]), nil
}

// logFleet logs what one run measured.
func logFleet(c Config, name string, l *lab.Lab, rep FleetReport) {
	c.logf("%s: %d nodes sent %d requests (%d failed), %.0f hedges, %.0f on-demand probes; periodic checks start %.0f, wake %.0f, active %.0f, out %.0f, idle %.0f; %.0f skipped after a real answer",
		name, rep.Nodes, rep.Sent, rep.Failed, rep.Hedges, rep.Probes,
		rep.CheckReasons["start"], rep.CheckReasons["wake"], rep.CheckReasons["active"], rep.CheckReasons["out"], rep.CheckReasons["idle"], rep.Skipped)
	for _, e := range rep.Errors {
		c.logf("%s: a failed request: %s", name, e)
	}
	for i, m := range l.Masters {
		c.logf("%s: %s served %.0f requests (%.2f%%, want %.0f%%) and %.1f checks/s", name, m.Name, rep.Requests[i], rep.Share(i), WantShare(i), rep.ChecksPerSecond[i])
	}
	var shares []string
	for i, s := range rep.EjectedShare {
		shares = append(shares, fmt.Sprintf("%.2fs:%.0f%%/%.0f%%", rep.EjectedAt[i].Seconds(), 100*s, 100*rep.EjectedAll[i]))
	}
	c.logf("%s: share of the %d nodes active at the freeze / of all nodes with master-1 out: %s", name, rep.Active, strings.Join(shares, " "))
	var rps []string
	for _, v := range rep.ThawedRPS {
		rps = append(rps, fmt.Sprintf("%.0f", v))
	}
	c.logf("%s: master-1's requests/s per %s after the thaw (steady: %.0f/s): %s", name, fleetBucket, rep.steadyRPS(0), strings.Join(rps, " "))
}

// steadyRPS is master i's requests per second in the steady phase.
func (r FleetReport) steadyRPS(i int) float64 {
	if r.Steady <= 0 {
		return 0
	}
	return r.Requests[i] / r.Steady.Seconds()
}

// fleetResults compares ours with the baseline; a nil baseline failed.
func fleetResults(name string, l *lab.Lab, ours FleetReport, baseline *FleetReport) []Result {
	base := FleetReport{Ejected95: -1, Back95: -1, FirstUse: -1}
	if baseline != nil {
		base = *baseline
	}
	for len(base.Requests) < len(l.Masters) {
		base.Requests, base.ChecksPerSecond = append(base.Requests, 0), append(base.ChecksPerSecond, 0)
	}
	out := fleetCompare(name, l, ours, base)
	if baseline == nil {
		for i := range out {
			if out[i].BaselineName == fleetBaseline {
				out[i].Baseline, out[i].Ratio, out[i].BaselineFailed = 0, 0, 1
			}
		}
	}
	return out
}

// fleetCompare is fleetResults' figures.
func fleetCompare(name string, l *lab.Lab, ours, base FleetReport) []Result {
	var out []Result
	for i, m := range l.Masters {
		share := newResult(name, m.Name+"-share", "%", baselineGoal, ours.Share(i), WantShare(i))
		share.Goal = fmt.Sprintf("%.0f ± %.0f", WantShare(i), fleetShareGoal)
		dev := newResult(name, m.Name+"-share-deviation", unitPoints, baselineNone, math.Abs(ours.Share(i)-WantShare(i)), 0)
		dev.Goal = fmt.Sprintf("<= %.0f", fleetShareGoal)
		checks := newResult(name, m.Name+"-checks-per-s", "/s", fleetBaseline, ours.ChecksPerSecond[i], base.ChecksPerSecond[i])
		checks.Goal = fmt.Sprintf("<= %.0f", fleetCheckGoal)
		out = append(out, share, dev, checks)
	}
	seconds := func(d time.Duration) (float64, int) {
		if d < 0 {
			return 0, 1
		}
		return d.Seconds(), 0
	}
	timed := func(metric string, o, b time.Duration) Result {
		var of, bf figure
		if v, failed := seconds(o); failed == 0 {
			of.add(v)
		} else {
			of.fail()
		}
		if v, failed := seconds(b); failed == 0 {
			bf.add(v)
		} else {
			bf.fail()
		}
		return figureResult(name, metric, "s", fleetBaseline, "", mean, of, bf)
	}
	eject := timed("frozen-ejected-95-s", ours.Ejected95, base.Ejected95)
	eject.Goal = fmt.Sprintf("<= %.1f", fleetEjectGoal)
	out = append(out, eject,
		timed("thawed-back-95-s", ours.Back95, base.Back95),
		timed("thawed-first-use-s", ours.FirstUse, base.FirstUse),
		newResult(name, "active-at-freeze", unitCount, fleetBaseline, float64(ours.Active), float64(base.Active)),
		newResult(name, "master-1-steady-rps", unitRate, fleetBaseline, ours.steadyRPS(0), base.steadyRPS(0)))
	// The thawed master's load: every 100 ms bucket of the first second, then
	// the mean of each second.
	bucket := func(r FleetReport, from, to int) float64 {
		sum, n := 0.0, 0
		for j := from; j < to && j < len(r.ThawedRPS); j++ {
			sum += r.ThawedRPS[j]
			n++
		}
		if n == 0 {
			return 0
		}
		return sum / float64(n)
	}
	perSecond := int(time.Second / fleetBucket)
	for j := 0; j < perSecond && j < len(ours.ThawedRPS); j++ {
		out = append(out, newResult(name, fmt.Sprintf("thawed-rps-%.1fs", float64(j)*fleetBucket.Seconds()), unitRate, fleetBaseline, bucket(ours, j, j+1), bucket(base, j, j+1)))
	}
	for sec := 1; sec*perSecond < len(ours.ThawedRPS); sec++ {
		out = append(out, newResult(name, fmt.Sprintf("thawed-rps-%ds-%ds", sec, sec+1), unitRate, fleetBaseline, bucket(ours, sec*perSecond, (sec+1)*perSecond), bucket(base, sec*perSecond, (sec+1)*perSecond)))
	}
	out = append(out,
		newResult(name, "requests", unitCount, fleetBaseline, float64(ours.Sent), float64(base.Sent)),
		newResult(name, "failed-requests", unitCount, fleetBaseline, float64(ours.Failed), float64(base.Failed)),
		newResult(name, "hedges", unitCount, fleetBaseline, ours.Hedges, base.Hedges),
		newResult(name, "probes", unitCount, fleetBaseline, ours.Probes, base.Probes),
		newResult(name, "checks-skipped", unitCount, fleetBaseline, ours.Skipped, base.Skipped))
	return out
}
