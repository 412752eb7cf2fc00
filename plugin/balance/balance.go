package balance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// Defaults for the zero values of Config: conf's, so that a node.toml that leaves a
// timeout out and a Config that leaves it zero behave alike.
const (
	DefaultDial           = conf.DefaultDial
	DefaultResponseHeader = conf.DefaultResponseHeader
	DefaultStall          = conf.DefaultStall
	DefaultHealthInterval = conf.DefaultHealthInterval
	DefaultHealthTimeout  = conf.DefaultHealthTimeout
	DefaultHedgeMin       = conf.DefaultHedgeMin
	DefaultHedgeMax       = conf.DefaultHedgeMax
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

// Config configures a Balancer. Zero durations take the defaults above.
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
	// ResponseHeader bounds the wait for response headers; an endpoint that misses
	// it is ejected.
	ResponseHeader time.Duration
	// Stall aborts, and resumes elsewhere, a body that delivers no byte for this long.
	Stall time.Duration
	// HealthInterval and HealthTimeout are the period and the bound of the active
	// checks that Run performs.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	// HedgeMin and HedgeMax clamp the adaptive hedge delay.
	HedgeMin time.Duration
	HedgeMax time.Duration
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

	mu  sync.Mutex // guards the state fields of every endpoint
	eps []*endpoint
}

var _ http.RoundTripper = (*Balancer)(nil)

// New validates cfg, applies the defaults and returns a Balancer with every endpoint
// up. Call Run to start the active checks.
func New(cfg Config) (*Balancer, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("balance: no endpoints: %w", errdefs.ErrInvalidArgument)
	}
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"dial", &cfg.Dial, DefaultDial},
		{"response_header", &cfg.ResponseHeader, DefaultResponseHeader},
		{"stall", &cfg.Stall, DefaultStall},
		{"health_interval", &cfg.HealthInterval, DefaultHealthInterval},
		{"health_timeout", &cfg.HealthTimeout, DefaultHealthTimeout},
		{"hedge_min", &cfg.HedgeMin, DefaultHedgeMin},
		{"hedge_max", &cfg.HedgeMax, DefaultHedgeMax},
	}
	for _, f := range durations {
		switch {
		case *f.d < 0:
			return nil, fmt.Errorf("balance: %s: must not be negative, got %s: %w", f.name, *f.d, errdefs.ErrInvalidArgument)
		case *f.d == 0:
			*f.d = f.def
		}
	}
	if cfg.HedgeMin > cfg.HedgeMax {
		return nil, fmt.Errorf("balance: hedge_min %s exceeds hedge_max %s: %w", cfg.HedgeMin, cfg.HedgeMax, errdefs.ErrInvalidArgument)
	}

	b := &Balancer{
		cfg:       cfg,
		transport: cfg.Transport,
		now:       cfg.Now,
		metrics:   cfg.Metrics,
		log:       cfg.Logger,
		hedge:     newHedger(cfg.HedgeMin, cfg.HedgeMax),
	}
	if b.transport == nil {
		b.transport = defaultTransport(cfg.Dial)
	}
	if b.now == nil {
		b.now = time.Now
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	seen := make(map[string]bool)
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
		b.eps = append(b.eps, &endpoint{url: u, name: name, weight: w, local: ep.Local, up: true, backoff: backoffMin})
		b.metrics.setHealthy(name, true)
	}
	return b, nil
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

// once sends a request that may not be repeated to a single endpoint. A 5xx ejects
// the endpoint but is returned to the caller as is.
func (b *Balancer) once(req *http.Request) (*http.Response, *attempt, error) {
	t := b.pick(nil)
	if t.ep == nil {
		closeBody(req)
		return nil, nil, b.allDown(nil)
	}
	a := b.newAttempt(req, t)
	resp, err := a.roundTrip()
	if err = a.judge(resp, err, true); err != nil {
		a.finish()
		return nil, nil, err
	}
	return resp, a, nil
}

// result is the end of one attempt's wait for response headers.
type result struct {
	a    *attempt
	resp *http.Response
	err  error
}

// race sends a GET or HEAD to one endpoint after another, never to one in tried
// (and adds each one it uses), hedging after the hedge delay and moving on at once
// after a failure, until an attempt answers with headers and a status below 500
// that accept (if set) takes. It returns the winner's response and attempt, or
// *AllDownError when no endpoint is left.
func (b *Balancer) race(req *http.Request, tried map[*endpoint]bool, accept func(*http.Response) error) (*http.Response, *attempt, error) {
	ctx := req.Context()
	results := make(chan result, len(b.eps))
	var (
		mu       sync.Mutex // guards done against late results
		done     bool
		inflight []*attempt
		errs     = make(map[*endpoint]error)
	)
	launch := func() bool {
		t := b.pick(tried)
		if t.ep == nil {
			return false
		}
		tried[t.ep] = true
		a := b.newAttempt(req, t)
		inflight = append(inflight, a)
		go func() {
			resp, err := a.roundTrip()
			err = a.judge(resp, err, false)
			if err == nil && accept != nil {
				if err = accept(resp); err != nil {
					resp.Body.Close()
					err = fmt.Errorf("%s: %w", a.desc, err)
				}
			}
			if err != nil {
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
			results <- result{a: a, resp: resp, err: err}
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

	if !launch() {
		return nil, nil, b.allDown(errs)
	}
	hedge := time.NewTimer(b.hedge.get())
	defer hedge.Stop()
	for {
		select {
		case r := <-results:
			inflight = removeAttempt(inflight, r.a)
			if r.err == nil {
				end(r.a)
				return r.resp, r.a, nil
			}
			errs[r.a.t.ep] = r.err
			if ctx.Err() != nil {
				continue // the ctx.Done case reports it
			}
			if launch() {
				hedge.Reset(b.hedge.get())
			} else if len(inflight) == 0 {
				end(nil)
				return nil, nil, b.allDown(errs)
			}
		case <-hedge.C:
			overtaken := inflight
			if launch() {
				for _, a := range overtaken {
					a.markOvertaken()
				}
				b.metrics.hedge()
				b.log.Debug("hedged a slow request", "path", req.URL.Path, "after", b.hedge.get())
				hedge.Reset(b.hedge.get())
			}
		case <-ctx.Done():
			end(nil)
			return nil, nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), context.Cause(ctx))
		}
	}
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
