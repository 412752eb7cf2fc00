package balance

import (
	"errors"
	"net/url"
	"sync/atomic"
	"time"
)

const (
	backoffMin = time.Second
	backoffMax = 30 * time.Second
)

// endpoint is one master and its health. The fields after outstanding are guarded
// by Balancer.mu.
type endpoint struct {
	url    *url.URL
	name   string // the URL as a string: the key of AllDownError.Errors and the metrics label
	weight int
	local  bool

	outstanding atomic.Int64
	// suspect counts attempts that a hedge overtook and that still wait for headers.
	suspect atomic.Int64

	current int  // the SWRR running weight
	up      bool // takes traffic
	// retryAt is when an ejected endpoint becomes half-open.
	retryAt time.Time
	// backoff is the length of the next ejection.
	backoff time.Duration
	// trial is set while the half-open trial request is in flight.
	trial bool
	// epoch changes with every change of state, so that a late report from a trial
	// of an earlier half-open period is not mistaken for the current trial's.
	epoch   uint64
	lastErr error
}

// EndpointStatus is a snapshot of one endpoint, for logs and debugging.
type EndpointStatus struct {
	URL     string
	Weight  int
	Local   bool
	Healthy bool
	// RetryAt is when an ejected endpoint becomes half-open; zero while healthy.
	RetryAt time.Time
	// LastError is the endpoint's most recent failure, kept after it recovers.
	LastError error
	// Outstanding counts requests in flight to the endpoint, bodies being read
	// included.
	Outstanding int
}

// ticket is what a pick hands to an attempt: the endpoint, and the epoch if the
// attempt is the endpoint's half-open trial (0 otherwise).
type ticket struct {
	ep    *endpoint
	trial uint64
}

// pick chooses the endpoint for the next attempt by smooth weighted round robin,
// skipping the endpoints in tried, or returns a nil endpoint when none may take
// traffic. A half-open endpoint may be picked once, as its trial.
func (b *Balancer) pick(tried map[*endpoint]bool) ticket {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	eligible := func(e *endpoint) bool {
		if tried[e] {
			return false
		}
		return e.up || (!e.trial && !now.Before(e.retryAt))
	}
	// A suspect endpoint is chosen only when nothing else may take traffic.
	trusted := func(e *endpoint) bool { return eligible(e) && e.suspect.Load() == 0 }
	var e *endpoint
	for _, ok := range []func(*endpoint) bool{trusted, eligible} {
		if b.cfg.PreferLocal {
			e = swrr(b.eps, func(e *endpoint) bool { return e.local && ok(e) })
		}
		if e == nil {
			e = swrr(b.eps, ok)
		}
		if e != nil {
			break
		}
	}
	if e == nil {
		return ticket{}
	}
	if e.up {
		return ticket{ep: e}
	}
	e.trial = true
	return ticket{ep: e, trial: e.epoch}
}

// swrr is nginx's smooth weighted round robin: every candidate gains its weight, the
// one with the most wins and pays back the candidates' total.
func swrr(eps []*endpoint, ok func(*endpoint) bool) *endpoint {
	var best *endpoint
	total := 0
	for _, e := range eps {
		if !ok(e) {
			continue
		}
		e.current += e.weight
		total += e.weight
		if best == nil || e.current > best.current {
			best = e
		}
	}
	if best != nil {
		best.current -= total
	}
	return best
}

// succeeded records a valid answer (status below 500) from t's endpoint.
func (b *Balancer) succeeded(t ticket) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := t.ep
	switch {
	case e.up:
		e.backoff = backoffMin
	case t.trial != 0 && t.trial == e.epoch:
		e.backoff = backoffMin
		b.markUp(e, "trial request succeeded")
	}
}

// failed records a failure of t's endpoint and ejects it if it was up or this was
// its trial.
func (b *Balancer) failed(t ticket, err error, kind string) {
	b.metrics.error(t.ep.name, kind)
	b.mu.Lock()
	defer b.mu.Unlock()
	e := t.ep
	e.lastErr = err
	if e.up || (t.trial != 0 && t.trial == e.epoch) {
		b.eject(e, err)
	}
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

// checked records the result of an active check.
func (b *Balancer) checked(e *endpoint, err error) {
	if err != nil {
		b.metrics.error(e.name, kindHealth)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	halfOpen := !e.up && !b.now().Before(e.retryAt)
	switch {
	case err == nil && halfOpen:
		b.markUp(e, "active check passed")
	case err != nil:
		e.lastErr = err
		if e.up || halfOpen {
			b.eject(e, err)
		}
	}
}

// eject takes e out of rotation for its backoff and doubles the backoff. b.mu held.
func (b *Balancer) eject(e *endpoint, err error) {
	d := e.backoff
	e.up, e.trial, e.current = false, false, 0
	e.epoch++
	e.retryAt = b.now().Add(d)
	e.backoff = min(2*d, backoffMax)
	b.metrics.setHealthy(e.name, false)
	b.log.Warn("registry endpoint ejected", "endpoint", e.name, "for", d, "err", err)
}

// markUp puts e back in rotation. b.mu held.
func (b *Balancer) markUp(e *endpoint, why string) {
	e.up, e.trial, e.current = true, false, 0
	e.epoch++
	e.retryAt = time.Time{}
	b.metrics.setHealthy(e.name, true)
	b.log.Info("registry endpoint is back", "endpoint", e.name, "reason", why)
}

// allDown builds the error for a request that no endpoint answered: errs holds the
// request's own attempt errors, the other endpoints get their last error.
func (b *Balancer) allDown(errs map[*endpoint]error) *AllDownError {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := make(map[string]error, len(b.eps))
	for _, e := range b.eps {
		switch err := errs[e]; {
		case err != nil:
			m[e.name] = err
		case e.lastErr != nil:
			m[e.name] = e.lastErr
		case e.trial:
			m[e.name] = errors.New("half-open, its trial request is in flight")
		default:
			m[e.name] = errors.New("not available")
		}
	}
	return &AllDownError{Errors: m}
}

// Status reports every endpoint, in configuration order.
func (b *Balancer) Status() []EndpointStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]EndpointStatus, len(b.eps))
	for i, e := range b.eps {
		out[i] = EndpointStatus{
			URL:         e.name,
			Weight:      e.weight,
			Local:       e.local,
			Healthy:     e.up,
			RetryAt:     e.retryAt,
			LastError:   e.lastErr,
			Outstanding: int(e.outstanding.Load()),
		}
	}
	return out
}
