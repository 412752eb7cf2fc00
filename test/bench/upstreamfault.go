package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// baselineNginxProxies is upstream-fault's nginx baseline: the NGINX stream hop in
// front of distribution's own proxies, the system as clusters run it today.
const baselineNginxProxies = "nginx-distribution-proxy"

// faultVariant is one way in which the upstream fails the cold image.
type faultVariant struct {
	name string
	// fault is false for the healthy reference: no fault, no loop.
	fault bool
	// faults are written with Repo set to the cold image's repository.
	faults lab.Faults
}

// upstreamFault: a failure of one image's upstream must stay with that image. A
// node pulls several images that every master (every proxy, in the nginx mode)
// has cached while the upstream fails another image, answering 503 or never
// answering (lab.Faults with Repo set to that image alone), and while that failing
// image is pulled on the same node in a loop. It reports per mode the cached
// images' failed pulls (ours must be 0) and the median time of the others; a
// healthy run first, with no fault and no loop, is the reference. Modes:
// in-process over registryd masters (ours), the NGINX stream hop over
// distribution's own proxies (lab.HopToProxies), and stock hosts.toml over
// registryd masters.
func upstreamFault(ctx context.Context, c Config) ([]Result, error) {
	const name = "upstream-fault"
	cached, layers, size := 6, 4, int64(4<<20)
	// lead is how long the failing image is pulled before the cached ones are:
	// longer than the plugin's response_header timeout (3 s), so that a hung
	// request has timed out on the node at least once by then.
	lead, coldBound, cachedBound := 10*time.Second, 30*time.Second, 2*time.Minute
	if c.Quick {
		cached, layers, size = 3, 2, int64(1<<20)
		lead, coldBound, cachedBound = 5*time.Second, 8*time.Second, 30*time.Second
	}
	variants := []faultVariant{
		{name: "healthy"},
		{name: "503", fault: true, faults: lab.Faults{Status: 503}},
		{name: "hang", fault: true, faults: lab.Faults{Hang: true}},
	}
	pullS := make([]figures, len(variants))
	for i := range variants {
		pullS[i] = figures{}
	}
	tune := func(mode string, o *lab.Options) {
		if mode == lab.ModeNginx {
			o.Proxies = nodeMasters
		}
	}
	err := eachRoundTuned(ctx, c, name, 1, 1, tune, func(ctx context.Context, _ int, mode string, l *lab.Lab) error {
		warm := func(im benchImage) error { return warmMasters(ctx, l, im.repo, im.tag) }
		ref := func(im benchImage) string { return im.ref }
		if mode == lab.ModeNginx {
			if err := l.HopToProxies(ctx); err != nil {
				return err
			}
			c.logf("nginx: every node's hop now goes to the %d stock distribution proxies", len(l.Proxies()))
			client, err := newClientCA(l.BenchCABundle())
			if err != nil {
				return err
			}
			defer client.CloseIdleConnections()
			var hosts []string
			for _, p := range l.Proxies() {
				hosts = append(hosts, p.Addr)
			}
			// The proxies know the upstream's names only.
			warm = func(im benchImage) error { return warmHosts(ctx, client, hosts, im.repo, im.repo, im.tag) }
			ref = func(im benchImage) string { return l.ImageHost + "/" + im.repo + ":" + im.tag }
		}
		images := make([][]benchImage, len(variants))
		t0 := time.Now()
		for vi, v := range variants {
			for k := range cached {
				im, err := seedImage(ctx, l, fmt.Sprintf("cached-%s-%d", v.name, k+1), layers, size)
				if err != nil {
					return err
				}
				if err := warm(im); err != nil {
					return err
				}
				im.ref = ref(im)
				images[vi] = append(images[vi], im)
			}
		}
		c.logf("%s: seeded %d images (%d x %d MiB) and warmed every cache in %.1fs", mode, cached*len(variants), layers, size>>20, time.Since(t0).Seconds())
		cold, err := seedImage(ctx, l, "failing", 2, 1<<20)
		if err != nil {
			return err
		}
		cold.ref = ref(cold)
		for vi, v := range variants {
			var loop *coldLoop
			if v.fault {
				f := v.faults
				f.Repo = cold.repo
				if err := lab.WriteFaults(l.FaultsFile(), f); err != nil {
					return err
				}
				loop = startColdLoop(ctx, l, cold, coldBound)
				c.logf("%s, %s: the upstream fails %s only; pulling it in a loop, then the cached images after %s", mode, v.name, cold.repo, lead)
				select {
				case <-ctx.Done():
					loop.stop()
					return ctx.Err()
				case <-time.After(lead):
				}
			}
			for _, im := range images[vi] {
				syscall.Sync() // as timedPull does: one pull's dirty pages must not slow the next
				took, ok, err := boundedPull(ctx, c, mode, l, 1, im, cachedBound, "(cached, upstream fault: "+v.name+")")
				if err != nil {
					if loop != nil {
						loop.stop()
					}
					return err
				}
				if !ok {
					pullS[vi].of(mode).fail()
					continue
				}
				c.logf("%s, %s: node-1 pulled cached %s (%s) in %.3fs", mode, v.name, im.ref, im, took)
				pullS[vi].of(mode).add(took)
			}
			if loop != nil {
				attempts, failed, pending, lastErr := loop.stop()
				if err := lab.WriteFaults(l.FaultsFile(), lab.Faults{}); err != nil {
					return err
				}
				c.logf("%s, %s: meanwhile %d pulls of the failing image ended, %d of them failed as they should (last: %s); %d still ran when the loop stopped",
					mode, v.name, attempts, failed, lastErr, pending)
				// The next variant starts from a node that has got over this one.
				if err := settle(ctx, c, l, nil, 1); err != nil {
					c.logf("%s, %s: not settled before the next run: %v", mode, v.name, err)
				}
			}
			f := pullS[vi].of(mode)
			c.logf("%s, %s: cached pulls: %d done, median %.3fs, %d FAILED", mode, v.name, len(f.vals), median(f.vals), f.failed)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Result
	for vi, v := range variants {
		out = append(out, vsBaselineFigures(name, "cached-pull-s-"+v.name, "s", "0 FAILED", baselineNginxProxies, median, pullS[vi])...)
		if !v.fault {
			continue
		}
		failed := func(mode string) float64 { return float64(pullS[vi].of(mode).failed) }
		for _, b := range []struct{ name, mode string }{{baselineNginxProxies, lab.ModeNginx}, {baselineStock, lab.ModeStock}} {
			r := newResult(name, "cached-failed-"+v.name, unitPulls, b.name, failed(lab.ModeInprocess), failed(b.mode))
			r.Goal = "0 (of " + fmt.Sprint(cached) + ")"
			out = append(out, r)
		}
	}
	return out, nil
}

// coldLoop pulls the failing image on node-1 again and again, each pull bounded,
// until stopped.
type coldLoop struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu               sync.Mutex
	attempts, failed int
	pending          int // 1 while a pull runs
	lastErr          string
}

func startColdLoop(ctx context.Context, l *lab.Lab, im benchImage, bound time.Duration) *coldLoop {
	lctx, cancel := context.WithCancel(ctx)
	cl := &coldLoop{cancel: cancel, done: make(chan struct{}), lastErr: "none"}
	go func() {
		defer close(cl.done)
		for lctx.Err() == nil {
			cl.mu.Lock()
			cl.pending = 1
			cl.mu.Unlock()
			pctx, pcancel := context.WithTimeout(lctx, bound)
			_, err := l.Crictl(pctx, 1, "pull", im.ref)
			timedOut := pctx.Err() != nil
			pcancel()
			if lctx.Err() != nil {
				return // stopped mid-pull: not a run, but pending
			}
			cl.mu.Lock()
			cl.pending = 0
			cl.attempts++
			switch {
			case err != nil && timedOut:
				cl.failed++
				cl.lastErr = fmt.Sprintf("cut at its bound of %s", bound)
			case err != nil:
				cl.failed++
				cl.lastErr = lastLine(err.Error(), 400)
			}
			cl.mu.Unlock()
			select {
			case <-lctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return cl
}

// stop ends the loop and returns its pulls that ran to an end, the failed ones
// among them, the pull that still ran (1 or 0), and the last failure.
func (cl *coldLoop) stop() (attempts, failed, pending int, lastErr string) {
	cl.cancel()
	<-cl.done
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.attempts, cl.failed, cl.pending, cl.lastErr
}

// lastLine is the last non-empty line of s, cut to n bytes: the gist of crictl's
// error output.
func lastLine(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > n {
		l = l[:n] + "..."
	}
	return l
}
