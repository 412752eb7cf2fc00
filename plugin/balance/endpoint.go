package balance

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync/atomic"
	"time"
)

const (
	backoffMin = time.Second
	backoffMax = 30 * time.Second
	// slowFor is how long an endpoint whose body was left for being too slow is
	// picked only when no other endpoint may take the request.
	slowFor = 10 * time.Second
	// shareWindow is how many recent picks Status computes shares from.
	shareWindow = 256
	// statusWindow is how many times to headers per class each endpoint keeps for
	// Status.
	statusWindow = 64
)

// Endpoint states, as Status reports them.
const (
	StateUp        = "up"
	StateEjected   = "ejected"   // out for consecutive failures of real requests
	StateUnhealthy = "unhealthy" // its last active check failed
)

// endpoint is one master and its health. The fields after suspect are guarded by
// Balancer.mu.
type endpoint struct {
	url    *url.URL
	name   string // the URL as a string: the key of AllDownError.Errors and the metrics label
	weight int
	local  bool
	index  int // position in the configuration

	outstanding atomic.Int64
	// suspect counts attempts that a hedge overtook and that still wait for headers.
	suspect atomic.Int64
	// probing is set while an on-demand check of the endpoint runs.
	probing atomic.Bool
	// answeredAt is when it last gave a real request an HTTP answer, any status, in
	// nanoseconds of the balancer's clock: a check it makes unnecessary.
	answeredAt atomic.Int64

	current int // the SWRR running weight
	// unhealthy is set by a failed active check and cleared by a passing one; it is
	// not capped by MaxEjectionPercent.
	unhealthy bool
	// ejected is set after consecutive failures of real requests, for backoff.
	ejected bool
	retryAt time.Time
	backoff time.Duration
	// trial is set while the half-open trial request of an ejected endpoint is in
	// flight; there are trials only when no active checks run.
	trial bool
	// epoch changes with every ejection and recovery, so that a late report from
	// a trial of an earlier period is not mistaken for the current trial's.
	epoch uint64
	// localFails and fails5xx count consecutive failures of each class.
	localFails, fails5xx int
	since                time.Time // of the last change of state
	reason               string    // why it is out
	lastErr              error
	lastOK               time.Time
	slowUntil            time.Time
	// tput is the recent throughput of bodies it served from its cache, bytes/s;
	// tputAt is when it was last updated.
	tput   float64
	tputAt time.Time
	lat    map[string]*window
	// waiting holds the attempts that wait for its response headers.
	waiting map[*attempt]struct{}
	// checkAt is when its next periodic check is due, zero before the first, and
	// plannedAt when that was decided; checkRunning is set while one runs;
	// checkedAt is when a check or probe of it last ended, whatever its result.
	checkAt, plannedAt time.Time
	checkRunning       bool
	checkedAt          time.Time
	// rampFrom is when it came back into rotation, while its slow start lasts.
	rampFrom time.Time
}

func (e *endpoint) state() string {
	switch {
	case e.unhealthy:
		return StateUnhealthy
	case e.ejected:
		return StateEjected
	}
	return StateUp
}

// EndpointStatus is a snapshot of one endpoint, for operators and logs.
type EndpointStatus struct {
	URL    string
	Weight int
	Local  bool
	// State is StateUp, StateEjected or StateUnhealthy.
	State string
	// Healthy is State == StateUp.
	Healthy bool
	// Reason says why it is out of rotation; empty while up.
	Reason string
	// Since is when State last changed.
	Since time.Time
	// RetryAt is when an ejected endpoint may be tried again; zero otherwise.
	RetryAt time.Time
	// LastError is the endpoint's most recent failure, kept after it recovers.
	LastError error
	// Outstanding counts requests in flight to the endpoint, bodies being read
	// included.
	Outstanding int
	// EffectiveWeight is Weight, or less while the endpoint's slow start lasts.
	EffectiveWeight float64
	// Share is the fraction of the recent picks that went to it.
	Share float64
	// HeadersP95 is the 95th percentile of its recent times to response headers,
	// by request class ("manifest", "blob", "token").
	HeadersP95 map[string]time.Duration
	// Throughput is its recent throughput of bodies served from its cache, bytes/s.
	Throughput float64
}

// ticket is what a pick hands to an attempt: the endpoint, and the epoch if the
// attempt is the endpoint's half-open trial (0 otherwise).
type ticket struct {
	ep    *endpoint
	trial uint64
}

// available reports whether e may take traffic. b.mu held.
func (b *Balancer) available(e *endpoint, now time.Time) bool {
	switch {
	case e.unhealthy:
		return false
	case !e.ejected:
		return true
	case b.checking.Load():
		// With active checks, an ejected endpoint comes back only through a
		// passing check: real requests are never its trial.
		return false
	}
	return !e.trial && !now.Before(e.retryAt)
}

// pick chooses the endpoint for the next attempt, skipping the endpoints in tried.
// Among the endpoints that may take traffic it uses smooth weighted round robin,
// preferring those neither suspect (overtaken by a hedge) nor slow; a healthy local
// endpoint first with PreferLocal. When none may take traffic it routes in panic:
// the best of the others (healthy by the last check first, then the fewest
// consecutive failures, then the latest success), unless inRotation is set (for a
// hedge, which a known-bad endpoint would not help). A nil endpoint means there is
// none to pick.
func (b *Balancer) pick(tried map[*endpoint]bool, inRotation bool) ticket {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	eligible := func(e *endpoint) bool { return !tried[e] && b.available(e, now) }
	trusted := func(e *endpoint) bool {
		return eligible(e) && e.suspect.Load() == 0 && !now.Before(e.slowUntil)
	}
	weight := func(e *endpoint) int { return b.weightAt(e, now) }
	var e *endpoint
	for _, ok := range []func(*endpoint) bool{trusted, eligible} {
		if b.cfg.PreferLocal {
			e = swrr(b.eps, func(e *endpoint) bool { return e.local && ok(e) }, weight)
		}
		if e == nil {
			e = swrr(b.eps, ok, weight)
		}
		if e != nil {
			break
		}
	}
	if e == nil && !inRotation {
		e = b.panicPick(tried)
	}
	if e == nil {
		return ticket{}
	}
	if !b.available(e, now) {
		b.metrics.panicked()
		return b.record(ticket{ep: e})
	}
	if !e.ejected {
		return b.record(ticket{ep: e})
	}
	e.trial = true
	return b.record(ticket{ep: e, trial: e.epoch})
}

// panicPick is the best endpoint not in tried when none may take traffic. b.mu held.
func (b *Balancer) panicPick(tried map[*endpoint]bool) *endpoint {
	var cands []*endpoint
	for _, e := range b.eps {
		if !tried[e] {
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortStableFunc(cands, func(x, y *endpoint) int {
		switch {
		case x.unhealthy != y.unhealthy:
			if x.unhealthy {
				return 1
			}
			return -1
		case x.localFails+x.fails5xx != y.localFails+y.fails5xx:
			return (x.localFails + x.fails5xx) - (y.localFails + y.fails5xx)
		}
		return y.lastOK.Compare(x.lastOK)
	})
	return cands[0]
}

// record notes a pick for Status's shares. b.mu held.
func (b *Balancer) record(t ticket) ticket {
	b.picks[b.npicks%shareWindow] = int16(t.ep.index)
	b.npicks++
	return t
}

// swrr is nginx's smooth weighted round robin: every candidate gains its weight, the
// one with the most wins and pays back the candidates' total.
func swrr(eps []*endpoint, ok func(*endpoint) bool, weight func(*endpoint) int) *endpoint {
	var best *endpoint
	total := 0
	for _, e := range eps {
		if !ok(e) {
			continue
		}
		w := weight(e)
		e.current += w
		total += w
		if best == nil || e.current > best.current {
			best = e
		}
	}
	if best != nil {
		best.current -= total
	}
	return best
}

const (
	// weightScale is what weights are multiplied by for SWRR, so that a slow
	// start can take fractions of them.
	weightScale = 1000
	// slowStartFrom is the share of its weight an endpoint comes back with.
	slowStartFrom = 0.1
)

// weightAt is e's weight at now, times weightScale: during its slow start, from
// slowStartFrom of its weight up to all of it, linearly over SlowStart. b.mu held.
func (b *Balancer) weightAt(e *endpoint, now time.Time) int {
	w := e.weight * weightScale
	if e.rampFrom.IsZero() {
		return w
	}
	el := now.Sub(e.rampFrom)
	if el >= b.cfg.SlowStart {
		e.rampFrom = time.Time{}
		return w
	}
	f := slowStartFrom + (1-slowStartFrom)*max(float64(el), 0)/float64(b.cfg.SlowStart)
	return max(int(math.Round(float64(w)*f)), 1)
}

// answered records an answer from t's endpoint that shows it serving: any status
// below 500, or a 5xx that passes on the upstream's failure.
func (b *Balancer) answered(t ticket) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := t.ep
	e.localFails, e.fails5xx = 0, 0
	e.lastOK = b.now()
	switch {
	case !e.ejected:
		e.backoff = backoffMin
	case t.trial != 0 && t.trial == e.epoch:
		e.backoff = backoffMin
		b.markUp(e, "trial request succeeded")
	}
}

// failed records a failure of t's endpoint of kind (a local-origin failure, or
// kindStatus for a 5xx of its own) and ejects it when it has failed often enough in
// a row, or when this was its trial.
func (b *Balancer) failed(t ticket, err error, kind string) {
	b.metrics.error(t.ep.name, kind)
	b.mu.Lock()
	defer b.mu.Unlock()
	e := t.ep
	e.lastErr = err
	if kind == kindStatus {
		e.fails5xx++
	} else {
		e.localFails++
	}
	switch {
	case e.ejected:
		if t.trial != 0 && t.trial == e.epoch {
			b.eject(e, "trial request failed", err, ejectLocal)
		}
	case kind == kindStatus && e.fails5xx >= b.cfg.Consecutive5xx && b.mayEject():
		b.eject(e, "consecutive 5xx", err, eject5xx)
	case kind != kindStatus && e.localFails >= b.cfg.ConsecutiveFailures && b.mayEject():
		b.eject(e, "consecutive failures", err, ejectLocal)
	}
}

// mayEject reports whether one more endpoint may be ejected under
// MaxEjectionPercent; one always may. b.mu held.
func (b *Balancer) mayEject() bool {
	n := 0
	for _, e := range b.eps {
		if e.ejected {
			n++
		}
	}
	limit := max(1, len(b.eps)*b.cfg.MaxEjectionPercent/100)
	return n < limit
}

// released gives back a trial that ended without a verdict (it was cancelled).
func (b *Balancer) released(t ticket) {
	if t.trial == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.trial == t.ep.epoch {
		t.ep.trial = false
	}
}

// checked records the result of an on-demand check.
func (b *Balancer) checked(e *endpoint, err error) {
	if err != nil {
		b.metrics.error(e.name, kindHealth)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.recordCheck(e, err, b.now())
}

// recordCheck records the result of an active check: a failure marks the endpoint
// unhealthy at once, a pass clears that and brings back an ejected endpoint whose
// backoff has passed (without resetting the backoff, so that a master that answers
// /v2/ yet fails real requests is tried less and less often). b.mu held.
func (b *Balancer) recordCheck(e *endpoint, err error, now time.Time) {
	e.checkedAt = now
	if err != nil {
		e.lastErr = err
		if !e.unhealthy {
			e.unhealthy = true
			e.current = 0
			e.since, e.reason = now, "active check failed: "+err.Error()
			b.metrics.ejection(e.name, ejectHealth)
			b.metrics.setHealthy(e.name, false)
			b.log.Warn("registry endpoint failed its active check", "endpoint", e.name, "err", err)
			for a := range e.waiting {
				// Not under b.mu: the attempt's own lock is taken with b.mu free.
				go a.endpointFailed()
			}
			b.checkSoon(e, now)
		}
		return
	}
	if e.unhealthy {
		e.unhealthy = false
		if !e.ejected {
			b.markUp(e, "active check passed")
			return
		}
	}
	if e.ejected && !now.Before(e.retryAt) {
		b.markUp(e, "active check passed")
	}
}

// checkSoon brings e's next periodic check within one active period: it has just gone
// out of rotation, and checks are how it comes back. b.mu held.
func (b *Balancer) checkSoon(e *endpoint, now time.Time) {
	if e.checkRunning || e.checkAt.IsZero() {
		return // the check's end, or Run's first round, schedules it
	}
	if at := now.Add(b.activePeriod()); at.Before(e.checkAt) {
		e.plan(at, now)
		b.poke()
	}
}

// eject takes e out of rotation for its backoff, with jitter, and doubles the
// backoff. b.mu held.
func (b *Balancer) eject(e *endpoint, why string, err error, reason string) {
	d := b.jitter(e.backoff)
	e.ejected, e.trial, e.current = true, false, 0
	e.epoch++
	now := b.now()
	e.retryAt = now.Add(d)
	e.backoff = min(2*e.backoff, backoffMax)
	e.since, e.reason = now, why+": "+err.Error()
	b.metrics.ejection(e.name, reason)
	b.metrics.setHealthy(e.name, false)
	b.log.Warn("registry endpoint ejected", "endpoint", e.name, "for", d, "why", why, "err", err)
	b.checkSoon(e, now)
}

// markUp puts e back in rotation. b.mu held.
func (b *Balancer) markUp(e *endpoint, why string) {
	e.ejected, e.unhealthy, e.trial, e.current = false, false, false, 0
	e.localFails, e.fails5xx = 0, 0
	e.epoch++
	e.retryAt = time.Time{}
	e.since, e.reason = b.now(), ""
	if b.cfg.SlowStart > 0 {
		e.rampFrom = e.since
	}
	b.metrics.setHealthy(e.name, true)
	b.log.Info("registry endpoint is back", "endpoint", e.name, "reason", why)
}

// jitter spreads d by ±20 %, so that nodes that saw one failure together do not
// come back together.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// markSlow notes that a body of e was left for being too slow. b.mu taken.
func (b *Balancer) markSlow(e *endpoint) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e.slowUntil = b.now().Add(slowFor)
}

// observeThroughput folds a measured cache-hit throughput of e into its average.
func (b *Balancer) observeThroughput(e *endpoint, rate float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if e.tputAt.IsZero() || now.Sub(e.tputAt) > tputFresh {
		e.tput = rate
	} else {
		e.tput = 0.7*e.tput + 0.3*rate
	}
	e.tputAt = now
	b.metrics.setThroughput(e.name, e.tput)
}

// tputFresh is how long a throughput figure counts as recent.
const tputFresh = 30 * time.Second

// bestOtherThroughput is the highest recent cache-hit throughput of an endpoint
// other than e, or 0.
func (b *Balancer) bestOtherThroughput(e *endpoint) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	best := 0.0
	for _, o := range b.eps {
		if o != e && !o.tputAt.IsZero() && now.Sub(o.tputAt) <= tputFresh {
			best = max(best, o.tput)
		}
	}
	return best
}

// otherAvailable reports whether an endpoint outside skip may take traffic now.
func (b *Balancer) otherAvailable(skip map[*endpoint]bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for _, e := range b.eps {
		if !skip[e] && b.available(e, now) {
			return true
		}
	}
	return false
}

// stuck reports whether every attempt in as waits on an endpoint that is suspect
// for another request's sake (more overtaken attempts there than as's own), while
// an endpoint outside tried may take traffic and is not suspect or slow.
func (b *Balancer) stuck(as []*attempt, tried map[*endpoint]bool) bool {
	if len(as) == 0 {
		return false
	}
	own := map[*endpoint]int64{}
	for _, a := range as {
		a.mu.Lock()
		if a.suspects {
			own[a.t.ep]++
		}
		a.mu.Unlock()
	}
	for _, a := range as {
		if a.t.ep.suspect.Load() <= own[a.t.ep] {
			return false
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for _, e := range b.eps {
		if !tried[e] && b.available(e, now) && e.suspect.Load() == 0 && !now.Before(e.slowUntil) {
			return true
		}
	}
	return false
}

// waiting adds a to, or removes it from, its endpoint's attempts that wait for
// headers.
func (b *Balancer) waiting(a *attempt, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		a.t.ep.waiting[a] = struct{}{}
	} else {
		delete(a.t.ep.waiting, a)
	}
}

// observeHeaders records a time to headers of e for Status.
func (b *Balancer) observeHeaders(e *endpoint, class string, d time.Duration) {
	b.metrics.headers(e.name, class, d)
	b.mu.Lock()
	defer b.mu.Unlock()
	e.lat[class].add(d)
}

// allDown builds the error for a request that no endpoint answered: errs holds the
// request's own attempt errors, the other endpoints get what put them out.
func (b *Balancer) allDown(errs map[*endpoint]error, tried int) *AllDownError {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]error, len(b.eps))
	for _, e := range b.eps {
		switch err := errs[e]; {
		case err != nil:
			m[e.name] = err
		case e.reason != "":
			m[e.name] = errors.New(e.state() + ": " + e.reason)
		case e.lastErr != nil:
			m[e.name] = e.lastErr
		case e.trial:
			m[e.name] = errors.New("half-open, its trial request is in flight")
		default:
			m[e.name] = errors.New("not tried")
		}
	}
	return &AllDownError{Errors: m, tried: tried}
}

// Status reports every endpoint, in configuration order.
func (b *Balancer) Status() []EndpointStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	counts := make([]int, len(b.eps))
	n := min(b.npicks, shareWindow)
	for _, i := range b.picks[:n] {
		counts[i]++
	}
	out := make([]EndpointStatus, len(b.eps))
	now := b.now()
	for i, e := range b.eps {
		s := EndpointStatus{
			URL:             e.name,
			Weight:          e.weight,
			EffectiveWeight: float64(b.weightAt(e, now)) / weightScale,
			Local:           e.local,
			State:           e.state(),
			Reason:          e.reason,
			Since:           e.since,
			LastError:       e.lastErr,
			Outstanding:     int(e.outstanding.Load()),
			HeadersP95:      map[string]time.Duration{},
			Throughput:      e.tput,
		}
		s.Healthy = s.State == StateUp
		if e.ejected {
			s.RetryAt = e.retryAt
		}
		if n > 0 {
			s.Share = float64(counts[i]) / float64(n)
		}
		for c, w := range e.lat {
			if w.len() > 0 {
				s.HeadersP95[c] = w.percentile(ttfbPercentile)
			}
		}
		out[i] = s
	}
	return out
}

// untried reports whether an endpoint is not in tried: one that a request may still
// be sent to, by panic routing if by nothing else. The endpoints are fixed when the
// balancer is made.
func (b *Balancer) untried(tried map[*endpoint]bool) bool {
	for _, e := range b.eps {
		if !tried[e] {
			return true
		}
	}
	return false
}
