package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// soakSeedEnv, when set, is the chaos loop's seed, to replay a run.
const soakSeedEnv = "HOPLESS_SOAK_SEED"

// Soak's growth bounds: the last sample of a process may exceed the largest of the
// first half of its samples by at most this much, plus this fraction of it.
const (
	soakGrowthFraction   = 0.5
	soakGoroutinesGrowth = 100
	soakFDsGrowth        = 64
	soakRSSGrowth        = 96 << 20
)

// soak pulls images one after another on an in-process node and an NRI node (ours,
// alternately) and, every other pull, on an NGINX-hop node in front of the same
// masters (the baseline), while a seeded chaos loop kills (kill -9) or freezes one
// master at a time and brings it back. Every pull removes its image from the node
// afterwards, so that each is a real pull. It counts failed pulls, and samples the
// goroutines, open files and RSS of each registryd and each node's containerd
// throughout; growth beyond the bounds above fails the run.
func soak(ctx context.Context, c Config) ([]Result, error) {
	pulls, images, size := 1000, 20, int64(256<<10)
	if c.Quick {
		pulls, images, size = 50, 6, 64<<10
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(soakSeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: %w", soakSeedEnv, s, err)
		}
		seed = v
	}
	c.logf("soak: seed %d (%s=%d replays the chaos)", seed, soakSeedEnv, seed)
	o := c.Lab
	o.Dir, o.Masters, o.Nodes = c.Dir+"/lab", 3, 3
	o.NodeModes = []string{lab.ModeInprocess, lab.ModeNRI, lab.ModeNginx}
	l, err := lab.Up(ctx, o)
	if err != nil {
		return nil, err
	}
	defer l.Down()
	repo := lab.UpstreamPath + "/soak"
	for i := range images {
		if _, err := l.Seed(ctx, repo, fmt.Sprintf("i%02d", i), 2, size, false); err != nil {
			return nil, err
		}
	}

	warmup := soakWarmup
	if c.Quick {
		warmup = 3 * time.Second
	}
	samples := newSoakSamples(warmup)
	samples.take(ctx, l)
	done := make(chan struct{})
	var wg sync.WaitGroup
	chaosErr := make(chan error, 1)
	wg.Go(func() { chaosErr <- soakChaos(ctx, c, l, rand.New(rand.NewPCG(seed, 1)), done) })
	wg.Go(func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				samples.take(ctx, l)
			}
		}
	})

	rng := rand.New(rand.NewPCG(seed, 2))
	var ours, base figure
	pull := func(node int, f *figure) error {
		tag := fmt.Sprintf("i%02d", rng.IntN(images))
		ref := l.PullRefFor(node, repo, tag)
		took, ok, err := boundedPull(ctx, c, l.NodeMode(node), l, node, benchImage{ref: ref}, pullBound, "")
		if err != nil {
			return err
		}
		if !ok {
			f.fail()
			return nil
		}
		f.add(took)
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if out, err := l.Crictl(rctx, node, "rmi", ref); err != nil {
			return fmt.Errorf("removing %s from node-%d after its pull: %w: %s", ref, node, err, out)
		}
		return nil
	}
	var runErr error
	for i := 0; i < pulls && runErr == nil; i++ {
		// The first tenth of the pulls fill connection pools and caches: growth is
		// measured from there.
		if i == pulls/10 {
			samples.warmedUp()
		}
		runErr = pull(1+i%2, &ours)
		if runErr == nil && i%2 == 0 {
			runErr = pull(3, &base)
		}
		if (i+1)%50 == 0 {
			c.logf("soak: %d of %d pulls of ours, %d failed; baseline %d failed", i+1, pulls, ours.failed, base.failed)
		}
	}
	close(done)
	wg.Wait()
	samples.take(ctx, l)
	if err := errors.Join(runErr, <-chaosErr); err != nil {
		return nil, err
	}

	const name = "soak"
	out := []Result{
		newResult(name, "failed-pulls", unitPulls, "nginx", float64(ours.failed), float64(base.failed)),
		newResult(name, "pulls-ok", unitPulls, "nginx", float64(len(ours.vals)), float64(len(base.vals))),
		figureResult(name, "pull-median-s", "s", "nginx", "", median, ours, base),
	}
	out[0].Goal = "0 failed"
	var grown []string
	for _, p := range samples.report() {
		c.logf("soak: %s", p)
		if p.last.goroutines >= 0 {
			out = append(out, newResult(name, p.name+"-goroutines-last", unitCount, baselineNone, float64(p.last.goroutines), 0))
		}
		out = append(out,
			newResult(name, p.name+"-fds-last", unitCount, baselineNone, float64(p.last.fds), 0),
			newResult(name, p.name+"-rss-mib-last", unitCount, baselineNone, float64(p.last.rss>>20), 0))
		if why := p.grown(); why != "" {
			grown = append(grown, why)
		}
	}
	if len(grown) > 0 {
		return out, fmt.Errorf("soak: growth beyond the bounds: %s", strings.Join(grown, "; "))
	}
	if ours.failed > 0 {
		out[0].OursFailed = ours.failed
	}
	return out, nil
}

// soakChaos kills or freezes one master at a time, at random, until done: a
// master is faulty for 0.5-2 s, then healthy for 1-3 s.
func soakChaos(ctx context.Context, c Config, l *lab.Lab, rng *rand.Rand, done <-chan struct{}) error {
	start := time.Now()
	wait := func(lo, hi time.Duration) bool {
		t := time.NewTimer(lo + time.Duration(rng.Int64N(int64(hi-lo))))
		defer t.Stop()
		select {
		case <-done:
			return false
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for wait(time.Second, 3*time.Second) {
		m := l.Masters[rng.IntN(len(l.Masters))].Name
		kill := rng.IntN(2) == 0
		at := time.Since(start).Seconds()
		if kill {
			if err := l.Signal(m, syscall.SIGKILL); err != nil {
				return fmt.Errorf("chaos: killing %s: %w", m, err)
			}
		} else if err := l.Signal(m, syscall.SIGSTOP); err != nil {
			return fmt.Errorf("chaos: freezing %s: %w", m, err)
		}
		wait(500*time.Millisecond, 2*time.Second)
		if kill {
			if err := soakRestart(ctx, l, m); err != nil {
				return err
			}
		} else if err := l.Signal(m, syscall.SIGCONT); err != nil {
			return fmt.Errorf("chaos: thawing %s: %w", m, err)
		}
		c.logf("soak: chaos at %.1fs: %s %s, back after %.1fs", at, m, map[bool]string{true: "killed", false: "frozen"}[kill], time.Since(start).Seconds()-at)
	}
	return nil
}

// soakRestart starts a killed master again once it is gone.
func soakRestart(ctx context.Context, l *lab.Lab, name string) error {
	for deadline := time.Now().Add(30 * time.Second); ; {
		alive := false
		for _, s := range l.Status() {
			alive = alive || s.Name == name && s.Alive
		}
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: %s still runs 30 s after kill -9", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := l.Start(sctx, name); err != nil {
		return fmt.Errorf("chaos: starting %s again: %w", name, err)
	}
	return nil
}

// soakSample is one process's state at one time; goroutines is -1 where the
// process exports no Go metrics (stock containerd).
type soakSample struct {
	pid, goroutines, fds int
	rss                  int64
}

// soakProc is the samples of one process (by name and PID: a restarted master is
// a new one).
type soakProc struct {
	name string
	// first is the first sample once the process has warmed up (see soakWarmup);
	// warm says whether there is one.
	first, last       soakSample
	warm              bool
	born              time.Time
	n, peakGoroutines int
	peakRSS, peakFDs  int64
	// judged are the samples from first on.
	judged []soakSample
}

func (p soakProc) String() string {
	if !p.warm {
		return fmt.Sprintf("%s (pid %d, %d samples): not judged, it did not run through the warm-up (killed soon after a restart); last: %d goroutines, %d open files, RSS %d MiB",
			p.name, p.last.pid, p.n, p.last.goroutines, p.last.fds, p.last.rss>>20)
	}
	g := "goroutines n/a (no Go metrics)"
	if p.first.goroutines >= 0 {
		g = fmt.Sprintf("goroutines %d/%d/%d", p.first.goroutines, p.peakGoroutines, p.last.goroutines)
	}
	return fmt.Sprintf("%s (pid %d, %d samples): %s, open files %d/%d/%d, RSS %d/%d/%d MiB (first after warm-up/peak/last)",
		p.name, p.first.pid, p.n, g, p.first.fds, p.peakFDs, p.last.fds, p.first.rss>>20, p.peakRSS>>20, p.last.rss>>20)
}

// grown says how p grew beyond the bounds while it ran, or "": its last sample
// against the largest of the first half of its samples after warm-up. Clients'
// idle connections raise a master's goroutines and open files to a plateau that
// their idle timeouts set; a leak goes on rising through the second half. A process
// that never warmed up (killed soon after a restart), or was sampled too little
// after, is not judged.
func (p soakProc) grown() string {
	if !p.warm || len(p.judged) < 4 {
		return ""
	}
	var base soakSample
	for _, x := range p.judged[:len(p.judged)/2] {
		base.goroutines, base.fds, base.rss = max(base.goroutines, x.goroutines), max(base.fds, x.fds), max(base.rss, x.rss)
	}
	over := func(first, last, slack int64) bool {
		return last > first+slack+int64(float64(first)*soakGrowthFraction)
	}
	var why []string
	if p.first.goroutines >= 0 && over(int64(base.goroutines), int64(p.last.goroutines), soakGoroutinesGrowth) {
		why = append(why, fmt.Sprintf("goroutines %d -> %d", base.goroutines, p.last.goroutines))
	}
	if over(int64(base.fds), int64(p.last.fds), soakFDsGrowth) {
		why = append(why, fmt.Sprintf("open files %d -> %d", base.fds, p.last.fds))
	}
	if over(base.rss, p.last.rss, soakRSSGrowth) {
		why = append(why, fmt.Sprintf("RSS %d -> %d MiB", base.rss>>20, p.last.rss>>20))
	}
	if len(why) == 0 {
		return ""
	}
	return p.name + ": " + strings.Join(why, ", ") + " (the first half's largest -> the last)"
}

// soakWarmup is how long a process runs under the soak before its first sample
// counts: connection pools and caches fill in that time (a client's idle
// connections, for one, stay open for a minute or more). Quick runs take 3 s.
const soakWarmup = 20 * time.Second

type soakSamples struct {
	mu       sync.Mutex
	procs    map[string]*soakProc // by name and PID
	order    []string
	warmFrom time.Time // zero until the soak's own warm-up pulls are done
	warmup   time.Duration
}

func newSoakSamples(warmup time.Duration) *soakSamples {
	return &soakSamples{procs: map[string]*soakProc{}, warmup: warmup}
}

// warmedUp marks the end of the soak's warm-up pulls: from now on, a process that
// has run for soakWarmup has its first sample.
func (s *soakSamples) warmedUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.warmFrom = time.Now()
}

// take samples every master and the in-process and NRI nodes' containerd. A
// process that cannot be read now (killed, frozen) is skipped this time.
func (s *soakSamples) take(ctx context.Context, l *lab.Lab) {
	metricsOf := map[string]string{"node-1": "http://" + lab.NodeMetricsAddr(l.Slot, 1) + "/v1/metrics"}
	for i, m := range l.Masters {
		metricsOf[m.Name] = "http://" + lab.MasterMetricsAddr(l.Slot, i+1) + "/metrics"
	}
	for _, st := range l.Status() {
		if _, ok := metricsOf[st.Name]; !ok && st.Name != "node-2" || !st.Alive {
			continue
		}
		smp, ok := soakRead(ctx, st.PID, metricsOf[st.Name])
		if !ok {
			continue
		}
		key := st.Name + "/" + strconv.Itoa(st.PID)
		s.mu.Lock()
		p := s.procs[key]
		now := time.Now()
		if p == nil {
			p = &soakProc{name: st.Name, born: now}
			s.procs[key] = p
			s.order = append(s.order, key)
		}
		if !p.warm && !s.warmFrom.IsZero() && now.Sub(p.born) >= s.warmup {
			p.first, p.warm = smp, true
		}
		p.last, p.n = smp, p.n+1
		if p.warm {
			p.judged = append(p.judged, smp)
		}
		p.peakRSS, p.peakFDs = max(p.peakRSS, smp.rss), max(p.peakFDs, int64(smp.fds))
		p.peakGoroutines = max(p.peakGoroutines, smp.goroutines)
		s.mu.Unlock()
	}
}

// report is, for each name, the process that was sampled most (the one that ran
// longest), in the order first seen.
func (s *soakSamples) report() []soakProc {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := map[string]*soakProc{}
	var names []string
	for _, k := range s.order {
		p := s.procs[k]
		if b, ok := best[p.name]; !ok {
			names = append(names, p.name)
			best[p.name] = p
		} else if p.n > b.n {
			best[p.name] = p
		}
	}
	out := make([]soakProc, 0, len(names))
	for _, n := range names {
		out = append(out, *best[n])
	}
	return out
}

// soakRead reads pid's open files and RSS from /proc and, if metricsURL is set, its
// go_goroutines. A frozen process's metrics time out: then nothing is read.
func soakRead(ctx context.Context, pid int, metricsURL string) (soakSample, bool) {
	smp := soakSample{pid: pid, goroutines: -1}
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return smp, false
	}
	smp.fds = len(fds)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return smp, false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			smp.rss = kb << 10
		}
		if rest, ok := strings.CutPrefix(line, "State:"); ok && strings.HasPrefix(strings.TrimSpace(rest), "T") {
			return smp, false
		}
	}
	if metricsURL != "" {
		mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		m, err := lab.GetMetrics(mctx, metricsURL)
		if err != nil {
			return smp, false
		}
		g, ok := m.Sum("go_goroutines", nil)
		if !ok {
			return smp, false
		}
		smp.goroutines = int(g)
	}
	return smp, true
}
