package balance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// Defaults for the zero values of Config: conf's, so that a node.toml that leaves a
// setting out and a Config that leaves it zero behave alike.
const (
	DefaultDial                = conf.DefaultDial
	DefaultResponseHeader      = conf.DefaultResponseHeader
	DefaultStall               = conf.DefaultStall
	DefaultHealthInterval      = conf.DefaultHealthInterval
	DefaultHealthTimeout       = conf.DefaultHealthTimeout
	DefaultHealthIdleInterval  = conf.DefaultHealthIdleInterval
	DefaultSlowStart           = conf.DefaultSlowStart
	DefaultHedgeMin            = conf.DefaultHedgeMin
	DefaultHedgeMax            = conf.DefaultHedgeMax
	DefaultConsecutiveFailures = conf.DefaultConsecutiveFailures
	DefaultConsecutive5xx      = conf.DefaultConsecutive5xx
	DefaultMaxEjectionPercent  = conf.DefaultMaxEjectionPercent
	DefaultHedgeBudgetPercent  = conf.DefaultHedgeBudgetPercent
	DefaultHedgeBurst          = conf.DefaultHedgeBurst
	DefaultMinRate             = int64(conf.DefaultBodyMinRate)
	DefaultRelativeRate        = conf.DefaultBodyRelativeRate
	DefaultWarmup              = conf.DefaultBodyWarmup
	DefaultWindow              = conf.DefaultBodyWindow
	DefaultResumeAttempts      = conf.DefaultResumeAttempts
)

// Endpoint is one master registry.
type Endpoint struct {
	// URL is the scheme and host[:port], e.g. https://10.0.0.1:5001; no path.
	URL *url.URL
	// Weight is the endpoint's relative share of requests; 0 means 1.
	Weight int
	// Local marks the master on this node, preferred with Config.PreferLocal.
	Local bool
}

// Config configures a Balancer. Zero values take the defaults above; a negative
// count or rate turns its mechanism off where that makes sense (noted per field).
type Config struct {
	Endpoints []Endpoint
	// Host is the virtual host:port the resolver talks to. Requests for any other
	// host (a redirect to object storage, say) go to Transport unchanged. Empty
	// balances every request.
	Host string
	// Transport carries requests to the masters, with TLS configured by the caller.
	// Nil means a transport built from Dial, without proxies or transparent gzip.
	Transport http.RoundTripper
	// Dial bounds the TCP and TLS handshakes of the default transport.
	Dial time.Duration
	// ResponseHeader bounds one attempt's wait for response headers; a miss is a
	// local-origin failure of the endpoint.
	ResponseHeader time.Duration
	// Stall aborts, and resumes elsewhere, a body that delivers no byte for this long.
	Stall time.Duration
	// HealthInterval bounds the period (0.9 to 1 of it) of the active checks that
	// Run performs while the balancer is active (requests in flight or made within
	// the last HealthInterval) and of an endpoint out of rotation; HealthTimeout
	// bounds each check.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	// HealthIdleInterval is the period, spread by ±50 %, of the checks of an
	// endpoint in rotation while the balancer is idle; at least HealthInterval
	// (a shorter one is raised to it).
	HealthIdleInterval time.Duration
	// SlowStart is how long an endpoint that comes back into rotation takes to
	// ramp from a tenth of its weight to all of it; negative turns it off.
	SlowStart time.Duration
	// FixedChecks makes the active period HealthInterval ±10 % and checks an
	// endpoint when due even if it answered a real request lately, nor at once
	// when the balancer turns active, as before answers stood for checks: for
	// comparisons.
	FixedChecks bool
	// HedgeMin and HedgeMax clamp the adaptive hedge delay.
	HedgeMin time.Duration
	HedgeMax time.Duration
	// ConsecutiveFailures ejects an endpoint after this many local-origin failures
	// in a row; Consecutive5xx after this many 5xx answers of its own in a row.
	ConsecutiveFailures int
	Consecutive5xx      int
	// MaxEjectionPercent caps the share of endpoints ejected at once (one always
	// may be); negative means 0, so that only the first ejection is allowed.
	MaxEjectionPercent int
	// HedgeBudgetPercent is how many hedges per 100 requests may be sent, with
	// HedgeBurst at once; a negative percent turns hedging off.
	HedgeBudgetPercent int
	HedgeBurst         int
	// MinRate is the body throughput floor in bytes/s after Warmup, measured over
	// Window; RelativeRate raises it, for bodies served from a master's cache, to
	// that fraction of the fastest other endpoint's recent throughput. Negative
	// values turn each off.
	MinRate      int64
	RelativeRate float64
	Warmup       time.Duration
	Window       time.Duration
	// ResumeAttempts bounds the resumes of one body after failures; negative
	// means none.
	ResumeAttempts int
	// Reauthorize, if set, is called when a resume request is refused with 401
	// (its token expired): it sets fresh credentials on req from the challenge in
	// resp. The resume is then sent once more.
	Reauthorize func(ctx context.Context, req *http.Request, resp *http.Response) error
	// PreferLocal sends every request to a healthy local endpoint if there is one.
	PreferLocal bool
	// Now is the clock of health decisions (ejection and backoff); nil is time.Now.
	Now func() time.Time
	// Metrics, if set, receives the balancer's counters.
	Metrics *Metrics
	// Logger receives endpoint state changes and resumes; nil discards them.
	Logger *slog.Logger
}

// Balancer is an http.RoundTripper that sends each request to one of the
// configured endpoints. It is safe for concurrent use.
type Balancer struct {
	cfg       Config
	transport http.RoundTripper
	now       func() time.Time
	metrics   *Metrics
	log       *slog.Logger
	hedge     *hedger
	budget    *budget
	// checking is set while Run performs active checks.
	checking atomic.Bool
	// reauth is Config.Reauthorize, or what SetReauthorize set.
	reauth atomic.Pointer[func(ctx context.Context, req *http.Request, resp *http.Response) error]
	// jitter spreads ejection lengths (tests replace it to assert them exactly).
	jitter func(time.Duration) time.Duration
	// spread spreads check periods by ±frac (tests replace it likewise).
	spread func(d time.Duration, frac float64) time.Duration
	// lastUse is when a request last started or an attempt last finished, in
	// nanoseconds of now's clock.
	lastUse atomic.Int64
	// kick wakes Run to look at the schedule again; woke says why: the balancer
	// turned active.
	kick chan struct{}
	woke atomic.Bool

	mu     sync.Mutex // guards the state fields of every endpoint, and picks
	eps    []*endpoint
	picks  [shareWindow]int16
	npicks int
}

var _ http.RoundTripper = (*Balancer)(nil)

// New validates cfg, applies the defaults and returns a Balancer with every endpoint
// up. Call Run to start the active checks.
func New(cfg Config) (*Balancer, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("balance: no endpoints: %w", errdefs.ErrInvalidArgument)
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	b := &Balancer{
		cfg:       cfg,
		transport: cfg.Transport,
		now:       cfg.Now,
		metrics:   cfg.Metrics,
		log:       cfg.Logger,
		hedge:     newHedger(cfg.HedgeMin, cfg.HedgeMax),
		budget:    newBudget(max(cfg.HedgeBudgetPercent, 0), cfg.HedgeBurst),
		jitter:    jitter,
		spread:    spread,
		kick:      make(chan struct{}, 1),
	}
	if cfg.HedgeBudgetPercent < 0 {
		b.budget = newBudget(0, 0)
	}
	if b.transport == nil {
		b.transport = defaultTransport(cfg.Dial)
	}
	if cfg.Reauthorize != nil {
		b.SetReauthorize(cfg.Reauthorize)
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	seen := make(map[string]bool)
	now := b.now()
	for i, ep := range cfg.Endpoints {
		u, err := endpointURL(ep.URL)
		if err != nil {
			return nil, fmt.Errorf("balance: endpoint[%d]: %w", i, err)
		}
		name := u.String()
		if seen[name] {
			return nil, fmt.Errorf("balance: endpoint[%d]: %s is listed twice: %w", i, name, errdefs.ErrInvalidArgument)
		}
		seen[name] = true
		w := ep.Weight
		switch {
		case w < 0:
			return nil, fmt.Errorf("balance: endpoint[%d]: weight must be > 0, got %d: %w", i, w, errdefs.ErrInvalidArgument)
		case w == 0:
			w = 1
		}
		e := &endpoint{url: u, name: name, weight: w, local: ep.Local, index: i, backoff: backoffMin, since: now, lat: map[string]*window{}, waiting: map[*attempt]struct{}{}}
		for _, c := range classes {
			e.lat[c] = newWindow(statusWindow)
		}
		b.eps = append(b.eps, e)
		b.metrics.setHealthy(name, true)
	}
	return b, nil
}

// SetReauthorize sets the hook that a resume refused with 401 calls, as
// Config.Reauthorize; for callers whose authorizer exists only after the balancer.
func (b *Balancer) SetReauthorize(f func(ctx context.Context, req *http.Request, resp *http.Response) error) {
	b.reauth.Store(&f)
}

// defaults fills the zero values of c and checks the rest.
func (c *Config) defaults() error {
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"dial", &c.Dial, DefaultDial},
		{"response_header", &c.ResponseHeader, DefaultResponseHeader},
		{"stall", &c.Stall, DefaultStall},
		{"health_interval", &c.HealthInterval, DefaultHealthInterval},
		{"health_timeout", &c.HealthTimeout, DefaultHealthTimeout},
		{"health_idle_interval", &c.HealthIdleInterval, DefaultHealthIdleInterval},
		{"hedge_min", &c.HedgeMin, DefaultHedgeMin},
		{"hedge_max", &c.HedgeMax, DefaultHedgeMax},
		{"warmup", &c.Warmup, DefaultWarmup},
		{"window", &c.Window, DefaultWindow},
	}
	for _, f := range durations {
		switch {
		case *f.d < 0:
			return fmt.Errorf("balance: %s: must not be negative, got %s: %w", f.name, *f.d, errdefs.ErrInvalidArgument)
		case *f.d == 0:
			*f.d = f.def
		}
	}
	c.HealthIdleInterval = max(c.HealthIdleInterval, c.HealthInterval)
	switch {
	case c.SlowStart == 0:
		c.SlowStart = DefaultSlowStart
	case c.SlowStart < 0:
		c.SlowStart = 0
	}
	if c.HedgeMin > c.HedgeMax {
		return fmt.Errorf("balance: hedge_min %s exceeds hedge_max %s: %w", c.HedgeMin, c.HedgeMax, errdefs.ErrInvalidArgument)
	}
	ints := []struct {
		v   *int
		def int
	}{
		{&c.ConsecutiveFailures, DefaultConsecutiveFailures},
		{&c.Consecutive5xx, DefaultConsecutive5xx},
		{&c.MaxEjectionPercent, DefaultMaxEjectionPercent},
		{&c.HedgeBudgetPercent, DefaultHedgeBudgetPercent},
		{&c.HedgeBurst, DefaultHedgeBurst},
		{&c.ResumeAttempts, DefaultResumeAttempts},
	}
	for _, f := range ints {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	c.ConsecutiveFailures = max(c.ConsecutiveFailures, 1)
	c.Consecutive5xx = max(c.Consecutive5xx, 1)
	c.MaxEjectionPercent = max(c.MaxEjectionPercent, 0)
	c.HedgeBurst = max(c.HedgeBurst, 0)
	c.ResumeAttempts = max(c.ResumeAttempts, 0)
	if c.MinRate == 0 {
		c.MinRate = DefaultMinRate
	}
	if c.RelativeRate == 0 {
		c.RelativeRate = DefaultRelativeRate
	}
	if c.RelativeRate >= 1 {
		return fmt.Errorf("balance: relative_rate must be < 1, got %g: %w", c.RelativeRate, errdefs.ErrInvalidArgument)
	}
	return nil
}

// endpointURL checks that u is scheme://host[:port] and returns a clean copy.
func endpointURL(u *url.URL) (*url.URL, error) {
	switch {
	case u == nil:
		return nil, fmt.Errorf("no URL: %w", errdefs.ErrInvalidArgument)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%s: scheme must be http or https: %w", u.Redacted(), errdefs.ErrInvalidArgument)
	case u.Host == "":
		return nil, fmt.Errorf("%s: no host: %w", u.Redacted(), errdefs.ErrInvalidArgument)
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%s: must be scheme://host[:port] only: %w", u.Redacted(), errdefs.ErrInvalidArgument)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

func defaultTransport(dial time.Duration) *http.Transport {
	return &http.Transport{
		// The masters are reached directly; that is the point.
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: dial,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		// Transparent gzip would make body offsets useless for resuming.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
}

// RoundTrip sends req to an endpoint, as described in the package documentation.
// The response's Request is req.
func (b *Balancer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		closeBody(req)
		return nil, fmt.Errorf("balance: request without URL: %w", errdefs.ErrInvalidArgument)
	}
	if b.cfg.Host != "" && !strings.EqualFold(req.URL.Host, b.cfg.Host) {
		return b.transport.RoundTrip(req)
	}
	b.metrics.clientRequest(classOf(req))
	b.use()
	b.budget.earn()
	var (
		resp *http.Response
		a    *attempt
		err  error
	)
	noBody := req.Body == nil || req.Body == http.NoBody
	if (req.Method == http.MethodGet || req.Method == http.MethodHead) && noBody {
		resp, a, err = b.race(req, make(map[*endpoint]bool), nil)
	} else {
		resp, a, err = b.once(req)
	}
	if err != nil {
		return nil, err
	}
	resp.Request = req
	b.wrapBody(req, resp, a)
	return resp, nil
}

// once sends a request that may not be repeated to a single endpoint. A 5xx of the
// master's own counts against it but is returned to the caller as is.
func (b *Balancer) once(req *http.Request) (*http.Response, *attempt, error) {
	t := b.pick(nil, false)
	if t.ep == nil {
		closeBody(req)
		return nil, nil, b.allDown(nil, 0)
	}
	a := b.newAttempt(req, t)
	resp, err := a.roundTrip()
	if v, err := a.judge(resp, err, true); v != verdictOK {
		a.finish()
		return nil, nil, err
	}
	return resp, a, nil
}

// result is the end of one attempt's wait for response headers.
type result struct {
	a    *attempt
	resp *http.Response
	v    verdict
	err  error
}

// race sends a GET or HEAD to one endpoint after another, never to one in tried
// (and adds each one it uses), until an attempt answers in a way that accept (if
// set) takes:
//   - after the hedge delay of the request's class, if the budget has a token, the
//     same request goes to the next endpoint as well; without a token the request
//     waits on the endpoints it was sent to;
//   - after a failure it moves on to the next endpoint at once;
//   - an answer that passes on the upstream's failure is tried on one more
//     endpoint (budget permitting, and never for a throttling 429) and is then
//     the request's answer, as an *UpstreamError.
//
// It returns the winner's response and attempt; or the last upstream failure or
// refused answer; or *AllDownError when no endpoint is left.
func (b *Balancer) race(req *http.Request, tried map[*endpoint]bool, accept func(*http.Response) error) (*http.Response, *attempt, error) {
	ctx := req.Context()
	class := classOf(req)
	results := make(chan result, len(b.eps))
	stalled := make(chan *attempt, len(b.eps)) // one attempt per endpoint at most
	var (
		mu              sync.Mutex // guards done against late results
		done            bool
		inflight        []*attempt
		errs            = make(map[*endpoint]error)
		launched        int
		answer          error // an upstream failure or a refused answer
		upstreamRetried bool
	)
	launch := func(hedged bool) bool {
		t := b.pick(tried, hedged)
		if t.ep == nil {
			return false
		}
		tried[t.ep] = true
		launched++
		a := b.newAttempt(req, t)
		a.hedged, a.stalled = hedged, stalled
		inflight = append(inflight, a)
		go func() {
			resp, err := a.roundTrip()
			v, err := a.judge(resp, err, false)
			if v == verdictOK && accept != nil {
				if err = accept(resp); err != nil {
					resp.Body.Close()
					v, err = verdictRefused, fmt.Errorf("%s: %w", a.desc, err)
				}
			}
			if v != verdictOK {
				a.finish()
				resp = nil
			}
			mu.Lock()
			defer mu.Unlock()
			if done {
				if resp != nil {
					resp.Body.Close()
					a.finish()
				}
				return
			}
			results <- result{a: a, resp: resp, v: v, err: err}
		}()
		return true
	}
	// end stops the race: the losers are cancelled, or, if there is a winner and a
	// hedge had overtaken them, left to their own deadline; answers still queued are
	// thrown away.
	end := func(winner *attempt) {
		mu.Lock()
		done = true
		mu.Unlock()
		for _, a := range inflight {
			switch {
			case a == winner:
			case winner == nil:
				a.cancel(errLost)
			default:
				a.abandon()
			}
		}
		for {
			select {
			case r := <-results:
				if r.resp != nil {
					r.resp.Body.Close()
					r.a.finish()
				}
			default:
				return
			}
		}
	}
	lost := func() error {
		end(nil)
		if answer != nil {
			return answer
		}
		return b.allDown(errs, launched)
	}

	if !launch(false) {
		return nil, nil, b.allDown(errs, 0)
	}
	hedge := time.NewTimer(b.hedge.delay(class))
	defer hedge.Stop()
	for {
		select {
		case r := <-results:
			inflight = removeAttempt(inflight, r.a)
			switch r.v {
			case verdictOK:
				end(r.a)
				if r.a.hedged {
					b.metrics.hedgeWon()
				}
				return r.resp, r.a, nil
			case verdictUpstream:
				answer = r.err
				var ue *UpstreamError
				retry := errors.As(r.err, &ue) && ue.Status != http.StatusTooManyRequests && !upstreamRetried
				if ctx.Err() == nil && retry && b.budget.take() {
					upstreamRetried = true
					if launch(false) {
						hedge.Reset(b.hedge.delay(class))
						continue
					}
					b.budget.refund()
				}
				if len(inflight) == 0 {
					return nil, nil, lost()
				}
				continue
			case verdictRefused:
				answer = r.err
			}
			errs[r.a.t.ep] = r.err
			if ctx.Err() != nil {
				continue // the ctx.Done case reports it
			}
			if launch(false) {
				b.budget.spend()
				hedge.Reset(b.hedge.delay(class))
			} else if len(inflight) == 0 {
				return nil, nil, lost()
			}
		case a := <-stalled:
			// Its endpoint failed an active check. The request moves on if an
			// endpoint is left to try; the last one is waited on to its own
			// deadline, as a stream proxy would: when every master fails a check
			// in turn, a node too busy to get the checks answered in time is
			// likelier than all of them frozen at once.
			if slices.Contains(inflight, a) && b.untried(tried) {
				a.abortWaiting() // its result moves the request on
			}
		case <-hedge.C:
			// The endpoints still waited on are checked now, with a bound of
			// twice the hedge delay: a frozen one is then out within that, for
			// every request, whatever the budget allows.
			for _, a := range inflight {
				b.probe(a.t.ep, b.probeTimeout(class))
			}
			// Moving off an endpoint that is stuck already (an attempt of another
			// request there was overtaken and still waits) to one that is not is
			// no extra load on slow masters, and is free; any other hedge needs a
			// token.
			free := b.stuck(inflight, tried)
			if !free && !b.budget.take() {
				b.metrics.budgetExhausted()
				continue
			}
			overtaken := inflight
			if !launch(true) {
				if !free {
					b.budget.refund()
				}
				continue
			}
			for _, a := range overtaken {
				a.markOvertaken()
			}
			b.metrics.hedge()
			d := b.hedge.delay(class)
			b.log.Debug("hedged a slow request", "path", req.URL.Path, "after", d)
			hedge.Reset(d)
		case <-ctx.Done():
			end(nil)
			return nil, nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), context.Cause(ctx))
		}
	}
}

// minProbeTimeout is the least an on-demand check waits, however small the hedge
// delay: a busy node or master may take that long to answer a GET /v2/.
const minProbeTimeout = 200 * time.Millisecond

// probeTimeout bounds an on-demand check: twice the class's hedge delay, at least
// minProbeTimeout and at most HealthTimeout. A serving master answers GET /v2/ in a
// few milliseconds; one that does not within that is not serving now.
func (b *Balancer) probeTimeout(class string) time.Duration {
	return min(max(2*b.hedge.delay(class), minProbeTimeout), b.cfg.HealthTimeout)
}

func removeAttempt(as []*attempt, a *attempt) []*attempt {
	for i := range as {
		if as[i] == a {
			return append(as[:i], as[i+1:]...)
		}
	}
	return as
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}
