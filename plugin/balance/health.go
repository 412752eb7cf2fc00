package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Check reasons, the reason label of hopless_plugin_health_checks_total.
const (
	checkStart  = "start"  // Run's first check of every endpoint
	checkWake   = "wake"   // the balancer turned active after being idle
	checkActive = "active" // periodic, about every HealthInterval, while the balancer is active
	checkOut    = "out"    // periodic, about every HealthInterval, of an endpoint out of rotation
	checkIdle   = "idle"   // periodic, every HealthIdleInterval, while the balancer is idle
)

// idleSpread is the jitter of the idle check period: wide, so that nodes that
// started or last pulled together drift apart.
const idleSpread = 0.5

// activePeriod is the time to an endpoint's next check while the balancer is active
// or the endpoint out of rotation: between 0.9 and 1 HealthInterval, never more, so
// that HealthInterval bounds the age of an active balancer's news of a master.
func (b *Balancer) activePeriod() time.Duration {
	if b.cfg.FixedChecks {
		return b.spread(b.cfg.HealthInterval, 0.1)
	}
	return b.spread(b.cfg.HealthInterval*19/20, 1.0/19)
}

// fresh is how recent news of an endpoint (an answer or a check) must be to spare
// it the check when the balancer turns active: the shortest activePeriod, so that
// the check then put one period after that news is not yet due.
func (b *Balancer) fresh() time.Duration { return b.cfg.HealthInterval * 9 / 10 }

// plan sets e's next periodic check. b.mu held.
func (e *endpoint) plan(at, now time.Time) { e.checkAt, e.plannedAt = at, now }

// scheduled is one periodic check that schedule handed out.
type scheduled struct {
	e      *endpoint
	reason string
}

// Run checks every endpoint at once, then each one on its own schedule, until ctx
// ends (see the package documentation): every 0.9 to 1 HealthInterval while the
// balancer is active or the endpoint is out of rotation, unless a real request got
// an answer from it lately; every HealthIdleInterval ±50 % while the balancer is
// idle; and at once, if not heard from lately, when the balancer turns active.
// While Run runs, an ejected endpoint comes back only through a passing check.
// Without Run the balancer relies on passive ejection and half-open trial requests.
func (b *Balancer) Run(ctx context.Context) {
	b.checking.Store(true)
	defer b.checking.Store(false)
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		due, next := b.schedule(b.now(), b.woke.Swap(false))
		for _, s := range due {
			wg.Go(func() {
				b.runCheck(ctx, s)
				b.poke()
			})
		}
		wait := time.Hour // every check is running; each pokes when it ends
		if !next.IsZero() {
			wait = max(next.Sub(b.now()), 0)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.kick:
		}
	}
}

// poke makes Run look at the schedule again.
func (b *Balancer) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// use notes that a request starts. A balancer that was idle has turned active: Run
// checks at once the endpoints it has not heard from lately, in parallel with this
// request.
func (b *Balancer) use() {
	now := b.now()
	last := time.Unix(0, b.lastUse.Swap(now.UnixNano()))
	if now.Sub(last) >= b.cfg.HealthInterval && !b.inFlight() {
		b.woke.Store(true)
		b.poke()
	}
}

// inFlight reports whether any attempt has not finished, bodies included.
func (b *Balancer) inFlight() bool {
	for _, e := range b.eps {
		if e.outstanding.Load() > 0 {
			return true
		}
	}
	return false
}

// active reports whether a request is in flight or started, or an attempt
// finished, within the last HealthInterval.
func (b *Balancer) active(now time.Time) bool {
	return now.Sub(time.Unix(0, b.lastUse.Load())) < b.cfg.HealthInterval || b.inFlight()
}

// Active reports whether the balancer is active: a request in flight, or one within
// the last HealthInterval. Its checks then run every 0.9 to 1 HealthInterval.
func (b *Balancer) Active() bool { return b.active(b.now()) }

// inRotation reports whether e is neither unhealthy nor ejected. b.mu held.
func inRotation(e *endpoint) bool { return !e.unhealthy && !e.ejected }

// schedule hands out the periodic checks due at now, marking them running, and
// returns the time the next one is due (zero when every endpoint's check is
// running). wake says that the balancer has just turned active. A check that a real
// answer made unnecessary (one came after it was planned) is skipped and moved to
// one period after that answer (or the last check, if later).
func (b *Balancer) schedule(now time.Time, wake bool) ([]scheduled, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fresh := b.fresh()
	wake = wake && !b.cfg.FixedChecks
	var (
		due  []scheduled
		next time.Time
	)
	for _, e := range b.eps {
		if e.checkRunning {
			continue
		}
		answered := time.Unix(0, e.answeredAt.Load())
		heard := answered
		if e.checkedAt.After(heard) {
			heard = e.checkedAt
		}
		reason := ""
		switch {
		case e.checkAt.IsZero():
			reason = checkStart
		case wake && now.Sub(heard) >= fresh && e.outstanding.Load() == 0:
			// An endpoint a request waits on is left to that request: a hedge
			// delay without headers probes it.
			reason = checkWake
		case now.Before(e.checkAt):
		case inRotation(e) && answered.After(e.plannedAt) && !b.cfg.FixedChecks:
			// An answer since the check was planned stands for it.
			b.metrics.checkSkipped(e.name)
			e.plan(heard.Add(b.activePeriod()), now)
		case !inRotation(e):
			reason = checkOut
		case b.active(now):
			reason = checkActive
		default:
			reason = checkIdle
		}
		if reason != "" {
			e.checkRunning = true
			due = append(due, scheduled{e: e, reason: reason})
			continue
		}
		if wake {
			// Active now: the idle period no longer holds.
			at := heard.Add(b.activePeriod())
			if !at.After(now) {
				at = now.Add(b.activePeriod())
			}
			if at.Before(e.checkAt) {
				e.plan(at, now)
			}
		}
		if next.IsZero() || e.checkAt.Before(next) {
			next = e.checkAt
		}
	}
	return due, next
}

// runCheck performs a check that schedule handed out, records it, and schedules
// the endpoint's next one.
func (b *Balancer) runCheck(ctx context.Context, s scheduled) {
	e := s.e
	b.metrics.check(e.name, s.reason)
	err := b.check(ctx, e, b.cfg.HealthTimeout)
	if err != nil && ctx.Err() == nil {
		b.metrics.error(e.name, kindHealth)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e.checkRunning = false
	now := b.now()
	if ctx.Err() == nil { // else Run is stopping, and the endpoint is not to blame
		b.recordCheck(e, err, now)
	}
	if !inRotation(e) || b.active(now) || b.cfg.HealthIdleInterval == b.cfg.HealthInterval {
		e.plan(now.Add(b.activePeriod()), now)
	} else {
		e.plan(now.Add(b.spread(b.cfg.HealthIdleInterval, idleSpread)), now)
	}
}

// probe checks e at once, bounded by timeout, unless a probe of e is running: a
// request has waited on e past its hedge delay. A master that answers GET /v2/
// but is slow to serve (its upstream is slow) passes, and the request keeps
// waiting within the hedge budget; a frozen one fails, is marked unhealthy, and
// every request waiting on it that has an endpoint left to try moves on now
// instead of at the next periodic check.
func (b *Balancer) probe(e *endpoint, timeout time.Duration) {
	if !e.probing.CompareAndSwap(false, true) {
		return
	}
	b.metrics.probe()
	go func() {
		defer e.probing.Store(false)
		b.checked(e, b.check(context.Background(), e, timeout))
	}()
}

// check asks GET <endpoint>/v2/. 200, or 401 from a registry that wants a token,
// means the registry is serving.
func (b *Balancer) check(ctx context.Context, e *endpoint, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target := e.url.JoinPath("/v2/").String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("health check GET %s: %w", target, err)
	}
	began := time.Now()
	resp, err := b.transport.RoundTrip(req)
	if err == nil {
		b.hedge.observeCheck(time.Since(began))
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = &timeoutError{what: "no answer", d: timeout}
		}
		return fmt.Errorf("health check GET %s: %w", target, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("health check GET %s: status %s", target, resp.Status)
	}
	return nil
}

// spread spreads d by ±frac.
func spread(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 - frac + 2*frac*rand.Float64()))
}
