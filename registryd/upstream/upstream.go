// Package upstream is the HTTP client registryd uses to fetch content from one
// upstream registry over the OCI distribution API. It replaces distribution's proxy
// client, which hides range requests, resumption and error classes behind its own
// store interfaces.
//
// The design, in short:
//
//   - One Client per upstream, one http.Transport per Client, HTTP/1.1. The transport never takes
//     a proxy from the environment (a cache must not be redirected elsewhere), bounds the
//     dial, TLS handshake and response-header waits, and does not negotiate compression,
//     so that the bytes read are the bytes of the blob. When tls.ca is set the upstream is
//     verified against that CA plus the system roots: the system roots stay because blob
//     redirects commonly go to object stores and CDNs with public certificates.
//   - An https upstream is https only: a plain http request, redirect or token realm is
//     refused at the transport. At most 3 redirects are followed.
//   - Authentication is go-containerregistry's transport package: anonymous, Basic, or
//     Bearer tokens exchanged with the credentials from auth.credentials_file, which is read
//     once in New. The challenge comes from GET /v2/, asked once per Client (again only
//     after a failure), or from a request that fails with a Bearer challenge although
//     /v2/ did not ask for one. Each repository gets its own round tripper with the scope
//     "repository:<repo>:pull", cached until 90% of its token's lifetime. Building one
//     runs detached from the caller, so callers waiting for the same repository share it
//     and one caller giving up does not fail the others.
//   - Repository names, tags and digests are validated before they reach a URL.
//   - Every error says what was being done and wraps an errdefs class: ErrNotFound (404),
//     ErrPermissionDenied (401/403 after authenticating), ErrUnavailable (5xx, 429,
//     transport errors, timeouts, stalled bodies, nonsense answers) and ErrInvalidArgument
//     (bad names, oversized manifests, digest mismatches). The caller's own cancellation
//     stays a context error; its deadline is both context.DeadlineExceeded and
//     ErrUnavailable. Every ErrUnavailable that is the upstream's own failure is also
//     an *Error, which says what the upstream did (its status, or why there was no
//     answer) and carries its Retry-After, so that registryd can pass the failure on as
//     the upstream's (see internal/upstreamerr).
//   - Back-pressure: a 429 or 503 with a Retry-After opens a window, capped by
//     upstream.max_retry_after, in which no request is sent to the upstream: each fails
//     at once with the same *Error and the Retry-After that is left. At most
//     upstream.max_concurrent round trips are in flight (a body holds its slot until
//     closed); more wait for a slot, bounded by their context.
//   - Every round trip, including pings, token requests and redirects, is counted in
//     UpstreamRequests; blob and manifest body bytes are counted in UpstreamBytes as they
//     are read.
package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

const (
	defaultDialTimeout           = conf.DefaultUpstreamDial
	defaultResponseHeaderTimeout = conf.DefaultUpstreamResponseHeader
	defaultStallTimeout          = conf.DefaultUpstreamStall
	maxRedirects                 = 3
	// maxScopes bounds the per-repository round trippers a Client keeps.
	maxScopes = 1024
)

// Client fetches blobs and manifests from one upstream registry. It is safe for
// concurrent use.
type Client struct {
	host     string // host[:port] as written in the URL: the metrics label
	scheme   string
	insecure bool // a plain http upstream: http is allowed for redirects and realms
	reg      name.Registry
	auth     authn.Authenticator
	log      *slog.Logger
	metrics  *metrics.Metrics
	stall    time.Duration
	// tagPage is the page size asked for when listing tags; tests make it small.
	tagPage int
	// authTimeout bounds one detached ping or token exchange.
	authTimeout time.Duration
	http        *http.Transport
	rt          http.RoundTripper // http, refusing plain http and counting requests
	now         func() time.Time
	// slots is the concurrency cap (upstream.max_concurrent): a round trip holds a
	// slot until its response body is closed. nil: unbounded.
	slots chan struct{}
	// maxRetryAfter caps the Retry-After window (upstream.max_retry_after).
	maxRetryAfter time.Duration
	hold          holdOff
	// waitHook, when set (by tests), is called when a round trip has to wait for a slot.
	waitHook func()

	// realm is the token endpoint (host and path) of the last Bearer challenge, so that
	// token requests made inside go-containerregistry are counted as kind "token".
	realm atomic.Pointer[string]

	mu     sync.Mutex
	ping   *flight[*transport.Challenge]
	scopes map[string]*flight[*scope]
}

// Option configures a Client.
type Option func(*options)

type options struct {
	log                  *slog.Logger
	metrics              *metrics.Metrics
	dial, responseHeader time.Duration
	stall                time.Duration
	now                  func() time.Time
}

// WithLogger sets the logger. The default discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithMetrics counts requests and bytes in m.UpstreamRequests and m.UpstreamBytes.
func WithMetrics(m *metrics.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// WithTimeouts bounds the TCP and TLS handshakes (dial, default 2s) and the wait for
// response headers (default 4s), as upstream.timeouts.dial and response_header do. A
// value <= 0 keeps the default.
func WithTimeouts(dial, responseHeader time.Duration) Option {
	return func(o *options) {
		if dial > 0 {
			o.dial = dial
		}
		if responseHeader > 0 {
			o.responseHeader = responseHeader
		}
	}
}

// WithStallTimeout fails a body read that receives no byte for d (default 3s, as
// upstream.timeouts.stall), so that
// a frozen upstream cannot hold a fill forever. Only time spent inside Read counts: a
// caller that reads slowly is not a stalled upstream. d <= 0 disables the check.
func WithStallTimeout(d time.Duration) Option {
	return func(o *options) { o.stall = d }
}

// New returns a client for the upstream u. It reads the TLS files and the credentials
// file but does not contact the upstream.
func New(u conf.Upstream, opts ...Option) (*Client, error) {
	o := options{
		log:            slog.New(slog.DiscardHandler),
		dial:           defaultDialTimeout,
		responseHeader: defaultResponseHeaderTimeout,
		stall:          defaultStallTimeout,
		now:            time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}

	base, err := url.Parse(u.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing upstream URL: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	switch {
	case base.Scheme != "https" && base.Scheme != "http":
		return nil, fmt.Errorf("upstream URL %q: scheme must be https: %w", u.URL, errdefs.ErrInvalidArgument)
	case base.Scheme == "http" && !u.TLS.Insecure:
		return nil, fmt.Errorf("upstream URL %q: plain http needs tls.insecure: %w", u.URL, errdefs.ErrInvalidArgument)
	case base.Host == "" || base.User != nil || (base.Path != "" && base.Path != "/") || base.RawQuery != "" || base.Fragment != "":
		// Credentials in the URL would end up in logs and errors.
		return nil, fmt.Errorf("upstream URL %q: want scheme://host[:port] only: %w", u.URL, errdefs.ErrInvalidArgument)
	}
	insecure := base.Scheme == "http"

	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	reg, err := name.NewRegistry(base.Host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream URL %q: %v: %w", u.URL, err, errdefs.ErrInvalidArgument)
	}
	// go-containerregistry attaches credentials only to requests for RegistryStr, which
	// it rewrites for Docker Hub's legacy names.
	if reg.RegistryStr() != base.Host {
		return nil, fmt.Errorf("upstream URL %q: use host %q: %w", u.URL, reg.RegistryStr(), errdefs.ErrInvalidArgument)
	}

	auth := authn.Anonymous
	if f := u.Auth.CredentialsFile; f != "" {
		user, pass, err := conf.ReadCredentials(f)
		if err != nil {
			return nil, fmt.Errorf("reading upstream credentials: %w", err)
		}
		auth = authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})
	}

	tlsConf, err := tlsConfig(u.TLS)
	if err != nil {
		return nil, err
	}
	ht := &http.Transport{
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   o.dial,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   o.dial,
		ResponseHeaderTimeout: o.responseHeader,
		ExpectContinueTimeout: time.Second,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		// HTTP/1.1 only (a transport with its own dialer and TLS config does not
		// attempt HTTP/2). Blobs are long sequential streams: Go's HTTP/2 client
		// spends more CPU per byte on them (framing, flow control, a copy through
		// its pipe), and its per-stream window, 4 MiB, caps a blob at one window per
		// round trip from a distant upstream; HTTP/1.1 is bounded by TCP's buffers
		// only. Concurrent requests take a connection each, at most max_concurrent.
		DisableCompression: true,
	}

	c := &Client{
		host:        base.Host,
		scheme:      base.Scheme,
		insecure:    insecure,
		reg:         reg,
		auth:        auth,
		log:         o.log.With("upstream", base.Host),
		metrics:     o.metrics,
		stall:       o.stall,
		authTimeout: 2 * (o.dial + o.responseHeader),
		http:        ht,
		now:         o.now,
		scopes:      make(map[string]*flight[*scope]),
		tagPage:     defaultTagPage,

		maxRetryAfter: u.MaxRetryAfter.Duration,
	}
	if c.maxRetryAfter <= 0 {
		// A configuration not loaded from a file keeps the default.
		c.maxRetryAfter = conf.DefaultUpstreamMaxRetryAfter
	}
	if u.MaxConcurrent > 0 {
		c.slots = make(chan struct{}, u.MaxConcurrent)
	}
	c.rt = &guard{c: c, next: ht}
	return c, nil
}

// Host is the upstream's host[:port], the value of the metrics' upstream label.
func (c *Client) Host() string { return c.host }

// Close closes idle connections. Requests in flight are not affected.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func tlsConfig(t conf.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("reading upstream CA: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream CA %s: no PEM certificates found: %w", t.CA, errdefs.ErrInvalidArgument)
		}
		tc.RootCAs = pool
	}
	switch {
	case (t.Cert == "") != (t.Key == ""):
		return nil, fmt.Errorf("upstream client certificate: cert and key must be set together: %w", errdefs.ErrInvalidArgument)
	case t.Cert != "":
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("loading upstream client certificate %s: %w", t.Cert, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// checkRedirect follows at most maxRedirects redirects, and only over https unless the
// upstream itself is plain http. The Authorization header is not carried to another
// host: net/http drops it and go-containerregistry only adds it for the upstream.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return answerError(fmt.Sprintf("stopped after %d redirects", maxRedirects))
	}
	if req.URL.Scheme != "https" && !c.insecure {
		return answerError(fmt.Sprintf("refusing redirect to %s: not https", redactURL(req.URL)))
	}
	return nil
}

// guard is the bottom of every round tripper chain: it refuses plain http for an https
// upstream, counts each request and logs it.
type guard struct {
	c    *Client
	next http.RoundTripper
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	c := g.c
	if req.URL.Scheme != "https" && !c.insecure {
		return nil, answerError(fmt.Sprintf("refusing plain http request to %s: upstream %s is https only", req.URL.Host, c.host))
	}
	kind := kindOf(req.Context())
	if r := c.realm.Load(); r != nil && req.URL.Host+req.URL.Path == *r {
		kind = kindToken
	}
	// More requests than the cap wait here for a slot rather than open connections.
	if err := c.acquire(req.Context()); err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := g.next.RoundTrip(req)
	if c.slots != nil {
		if err != nil {
			c.release()
		} else {
			resp.Body = &slotBody{ReadCloser: resp.Body, release: sync.OnceFunc(c.release)}
		}
	}
	code := "error"
	if err == nil {
		code = strconv.Itoa(resp.StatusCode)
	}
	if c.metrics != nil {
		c.metrics.UpstreamRequests.WithLabelValues(c.host, kind, code).Inc()
	}
	c.log.Debug("upstream request", "method", req.Method, "kind", kind, "host", req.URL.Host,
		"path", req.URL.Path, "code", code, "duration", time.Since(start))
	return resp, err
}

// redactURL drops the query, which on redirects to object stores carries signatures.
func redactURL(u *url.URL) string {
	r := *u
	r.User = nil
	if r.RawQuery != "" {
		r.RawQuery = "REDACTED"
	}
	r.Fragment = ""
	return r.String()
}

// redactError rewrites the URL of a *url.Error in err the same way.
func redactError(err error) {
	for err != nil {
		if ue, ok := err.(*url.Error); ok {
			if u, perr := url.Parse(ue.URL); perr == nil {
				ue.URL = redactURL(u)
			} else {
				ue.URL = strings.SplitN(ue.URL, "?", 2)[0]
			}
			return
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return
		}
		err = u.Unwrap()
	}
}
