package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/balance"
)

// RoundTripperFactory builds the RoundTripper that sends one registry's requests to
// its endpoints. The RoundTripper receives requests addressed to
// https://<registry host>/v2/... and chooses the endpoint that serves each one.
//
// It reports that every endpoint is down with an error that wraps
// errdefs.ErrUnavailable: that error, and only that one, triggers the registry's
// fallback. If it implements io.Closer, it is closed when containerd stops, and when
// a reload replaces it, once the requests it carries have finished. If it has a
// Status() []balance.EndpointStatus method, the status endpoint reports it.
type RoundTripperFactory func(conf.Registry) (http.RoundTripper, error)

// HostsConfig is what NewHosts builds the image hosts from.
type HostsConfig struct {
	// Load returns the registries to serve, validated. NewHosts calls it once and
	// Reload again whenever a watched file changed.
	Load func() (*conf.Node, error)
	// Files are watched besides each registry's TLS and credentials files: node_config.
	Files []string
	// NewRT builds each registry's RoundTripper.
	NewRT RoundTripperFactory
	// Metrics, if set, counts reloads.
	Metrics *Metrics
	// ReloadInterval is the period of the goroutine that checks the watched files
	// and reloads; 0 starts none (Reload can still be called).
	ReloadInterval time.Duration
}

// Static is a HostsConfig.Load that always returns n.
func Static(n *conf.Node) func() (*conf.Node, error) {
	return func() (*conf.Node, error) { return n, nil }
}

// Hosts are the image hosts whose pulls hopless serves, each with the HTTP client
// that reaches its endpoints. It is what the hopless plugin serves pulls with.
type Hosts struct {
	cfg HostsConfig

	mu     sync.RWMutex // guards byHost
	byHost map[string]*host

	reload reloader

	stopWatch func()
}

// host is one configured image host. Its client stays the same for the life of the
// host; the generation behind it is swapped when a reload rebuilds it.
type host struct {
	name   string
	client *http.Client
	cur    atomic.Pointer[generation]
}

// generation is one build of a host: its settings, the RoundTripper to its
// endpoints, the transport for everything else, and the credentials read when it was
// built. It is closed once it was replaced and its last request has finished.
type generation struct {
	cfg        conf.Registry
	balanced   http.RoundTripper
	direct     *http.Transport
	user, pass string
	// authorizer answers the image host's challenges for every pull of this
	// generation, and re-authorizes a resumed body whose token expired.
	authorizer docker.Authorizer

	mu      sync.Mutex
	refs    int  // requests in flight, bodies being read included
	retired bool // replaced or removed: close when refs drops to 0
	closed  bool
}

// NewHosts builds a client for every registry that cfg.Load returns, and starts
// watching their files when cfg.ReloadInterval is set.
func NewHosts(ctx context.Context, cfg HostsConfig) (*Hosts, error) {
	h := &Hosts{cfg: cfg, byHost: map[string]*host{}}
	// Files are stat'ed before they are read, so that a change in between is seen
	// by the next reload.
	seen := statFiles(cfg.Files)
	node, err := cfg.Load()
	if err != nil {
		return nil, err
	}
	maps.Copy(seen, statFiles(registryFiles(node.Registries)))
	for i, r := range node.Registries {
		g, err := h.build(r)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("registry[%d] (%s): %w", i, r.Host, err)
		}
		h.byHost[strings.ToLower(r.Host)] = newHost(r.Host, g)
		log.G(ctx).WithFields(log.Fields{
			"host":      r.Host,
			"endpoints": len(r.Endpoints),
			"fallback":  r.Fallback,
		}).Info("hopless serves image host")
	}
	for _, f := range node.PlainHTTP() {
		log.G(ctx).WithField("setting", f).Warn("TLS to the masters is off by configuration: plain http")
	}
	h.reload.seen = seen
	h.reload.desired = node.Registries
	if cfg.ReloadInterval > 0 {
		h.watch(ctx, cfg.ReloadInterval)
	}
	return h, nil
}

func newHost(name string, g *generation) *host {
	x := &host{name: name}
	x.cur.Store(g)
	x.client = &http.Client{Transport: x}
	return x
}

// build makes a generation of r. It reads r's files, so that a bad file fails here
// and a reload keeps the previous generation.
func (h *Hosts) build(r conf.Registry) (*generation, error) {
	// Redirects (e.g. to object storage) and token realms on other hosts are not the
	// endpoints' business: they go out directly, trusting the registry's CA too.
	tc, err := r.TLS.ClientConfig(true)
	if err != nil {
		return nil, err
	}
	g := &generation{cfg: r, direct: docker.DefaultHTTPTransport(tc)}
	if f := r.Auth.CredentialsFile; f != "" {
		if g.user, g.pass, err = conf.ReadCredentials(f); err != nil {
			return nil, fmt.Errorf("auth.credentials_file: %w", err)
		}
	}
	if g.balanced, err = h.cfg.NewRT(r); err != nil {
		g.direct.CloseIdleConnections()
		return nil, err
	}
	g.authorizer = docker.NewDockerAuthorizer(
		docker.WithAuthClient(&http.Client{Transport: roundTripperFunc(g.roundTrip)}),
		docker.WithAuthCreds(g.credentials),
	)
	if rs, ok := g.balanced.(interface {
		SetReauthorize(func(context.Context, *http.Request, *http.Response) error)
	}); ok {
		rs.SetReauthorize(g.reauthorize)
	}
	return g, nil
}

// lookup returns the configured host of an image reference's host, or nil.
func (h *Hosts) lookup(imageHost string) *host {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.byHost[strings.ToLower(imageHost)]
}

// Close stops watching and closes every host's RoundTrippers.
func (h *Hosts) Close() error {
	if h.stopWatch != nil {
		h.stopWatch()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for _, x := range h.byHost {
		errs = append(errs, x.cur.Load().close())
	}
	return errors.Join(errs...)
}

// HostStatus is one image host as the status endpoint reports it.
type HostStatus struct {
	Host     string
	Fallback bool
	// Endpoints are the balancer's view of each endpoint; nil when the
	// RoundTripper does not report one.
	Endpoints []balance.EndpointStatus
}

// Status reports every image host, sorted by host.
func (h *Hosts) Status() []HostStatus {
	h.mu.RLock()
	hosts := make([]*host, 0, len(h.byHost))
	for _, x := range h.byHost {
		hosts = append(hosts, x)
	}
	h.mu.RUnlock()
	slices.SortFunc(hosts, func(a, b *host) int { return strings.Compare(a.name, b.name) })
	out := make([]HostStatus, 0, len(hosts))
	for _, x := range hosts {
		g := x.cur.Load()
		s := HostStatus{Host: g.cfg.Host, Fallback: g.cfg.Fallback}
		if st, ok := g.balanced.(interface {
			Status() []balance.EndpointStatus
		}); ok {
			s.Endpoints = st.Status()
		}
		out = append(out, s)
	}
	return out
}

// config returns the host's current settings.
func (x *host) config() conf.Registry {
	return x.cur.Load().cfg
}

// RoundTrip sends req through the current generation, which stays open until the
// response body is closed or read to its end, even if a reload replaces it.
func (x *host) RoundTrip(req *http.Request) (*http.Response, error) {
	g := x.acquire()
	if g == nil {
		// The host was removed by a reload while a pull of it was running.
		return nil, fmt.Errorf("image host %s was removed from the hopless configuration: %w", x.name, errdefs.ErrAborted)
	}
	resp, err := g.roundTrip(req)
	if err != nil || resp == nil {
		g.release()
		return resp, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: g.release}
	return resp, nil
}

// acquire returns the current generation with a reference taken, or nil if the
// host was removed.
func (x *host) acquire() *generation {
	for {
		g := x.cur.Load()
		g.mu.Lock()
		if !g.retired {
			g.refs++
			g.mu.Unlock()
			return g
		}
		g.mu.Unlock()
		// Retired and still current: the host was removed. Otherwise it was
		// replaced between Load and Lock, and the new one is in x.cur already.
		if x.cur.Load() == g {
			return nil
		}
	}
}

// credentials answers the authorizer's challenge for the image host from the
// credentials file as it was read when the generation was built (at start and after
// each change of the file). Without a file, requests stay anonymous.
func (g *generation) credentials(name string) (string, string, error) {
	if g.cfg.Auth.CredentialsFile == "" || !strings.EqualFold(name, g.cfg.Host) {
		return "", "", nil
	}
	return g.user, g.pass, nil
}

// reauthorize lets the authorizer take a 401 to a resumed body (its token expired)
// and sets fresh credentials on the resume request.
func (g *generation) reauthorize(ctx context.Context, req *http.Request, resp *http.Response) error {
	if err := g.authorizer.AddResponses(ctx, []*http.Response{resp}); err != nil {
		return fmt.Errorf("re-authorizing with %s: %w", g.cfg.Host, err)
	}
	return g.authorizer.Authorize(ctx, req)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// registryHosts are the docker resolver's hosts for x: the image host itself, reached
// through x's client. Any other host (there is none in a pull of an image of x) is
// refused.
func (x *host) registryHosts() docker.RegistryHosts {
	authorizer := x.cur.Load().authorizer
	return func(name string) ([]docker.RegistryHost, error) {
		if !strings.EqualFold(name, x.name) {
			return nil, fmt.Errorf("hopless source for %s asked for host %s", x.name, name)
		}
		return []docker.RegistryHost{{
			Client:       x.client,
			Authorizer:   authorizer,
			Host:         x.name,
			Scheme:       "https",
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}}, nil
	}
}

// roundTrip hands the requests for the image host to the balanced RoundTripper and
// sends all others directly.
func (g *generation) roundTrip(req *http.Request) (*http.Response, error) {
	if !strings.EqualFold(req.URL.Host, g.cfg.Host) {
		return g.direct.RoundTrip(req)
	}
	resp, err := g.balanced.RoundTrip(req)
	if resp != nil {
		// The docker authorizer keys its state by resp.Request.URL.Host: it must be
		// the image host, not the endpoint that answered.
		resp.Request = req
	}
	return resp, err
}

func (g *generation) release() {
	g.mu.Lock()
	g.refs--
	last := g.retired && g.refs == 0
	g.mu.Unlock()
	if last {
		_ = g.close()
	}
}

// retire marks g replaced; it is closed now if idle, else by its last release.
func (g *generation) retire() {
	g.mu.Lock()
	g.retired = true
	idle := g.refs == 0
	g.mu.Unlock()
	if idle {
		_ = g.close()
	}
}

// close stops g's background work (the balancer's health checks) and closes its
// idle connections. Connections in use, and the bodies on them, are not touched.
func (g *generation) close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	g.mu.Unlock()
	g.direct.CloseIdleConnections()
	if c, ok := g.balanced.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// releasingBody releases its generation once, at the first of Close and the end of
// the body.
type releasingBody struct {
	io.ReadCloser
	release func()
	once    sync.Once
}

func (b *releasingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.release)
	}
	return n, err
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}
