// Package server is registryd's serving core: distribution v3 embedded as a
// read-only pull-through cache behind our path alias, health endpoints, access log
// and metrics, with TLS and graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/auth"
	"github.com/distribution/distribution/v3/registry/handlers"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/certreload"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/registryd/upstream"
)

// Limits of the HTTP servers. There is no ReadTimeout: net/http keeps it armed
// while the response is written and then cancels the request's context, which would
// cut every blob download that takes longer. registryd reads no bodies on /v2/ (it
// is read-only); the API's bodies are bounded in size and time by boundBody.
const (
	readHeaderTimeout = 10 * time.Second
	// idleTimeout closes a keep-alive connection that carries no request this long.
	idleTimeout = 2 * time.Minute
	// maxHeaderBytes bounds a request's headers; a bearer token fits many times.
	maxHeaderBytes = 64 << 10
	// bodyTimeout bounds the reading of an API request's body.
	bodyTimeout = 30 * time.Second
	// maxBodyBytes bounds an API request's body.
	maxBodyBytes = 1 << 20
)

// Server is one registryd instance. Create it with New and start it with Run.
type Server struct {
	cfg     *conf.Registryd
	log     *slog.Logger
	metrics *metrics.Metrics
	tls     *tls.Config // nil when serving plain HTTP
	app     *handlers.App
	// access is the client auth of the routes served beside distribution (tag
	// lists, referrers): the same access controller as distribution's, nil without
	// client auth.
	access    auth.AccessController
	handler   http.Handler
	store     *store.Store
	filler    *fill.Filler
	upstreams []*upstream.Client
	cache     *cache.Cache
	peers     *peers.Set
	api       *api.API
	bg        context.Context
	cancelBG  context.CancelFunc
	wg        sync.WaitGroup

	started   atomic.Bool
	listening chan struct{}
	addr      net.Addr
	metricsAt net.Addr
	pprofAt   net.Addr

	closeOnce sync.Once
	closeErr  error
}

// Option changes a Server's defaults.
type Option func(*options)

type options struct {
	log     *slog.Logger
	metrics *metrics.Metrics
	now     func() time.Time
}

// WithLogger sets the logger. The default writes JSON to stderr at the configured level.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// WithMetrics sets the metrics to record into. The default is metrics.New().
func WithMetrics(m *metrics.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// WithClock sets the clock of the tag TTL, access times and eviction. The default is
// time.Now.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.now = now }
}

// New builds a Server from a validated configuration: the store, the fill engine, a
// client per upstream, the peers, the cache middleware and distribution on top. It
// does not listen yet and does not contact any upstream.
func New(ctx context.Context, cfg *conf.Registryd, opts ...Option) (s *Server, err error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slogLevel(cfg.Log.Level)}))
	}
	if o.metrics == nil {
		o.metrics = metrics.New()
	}
	if o.now == nil {
		o.now = time.Now
	}
	s = &Server{
		cfg:       cfg,
		log:       o.log,
		metrics:   o.metrics,
		listening: make(chan struct{}),
	}
	if !cfg.Server.Insecure {
		// A renewed certificate (cert-manager, a Secret's update) is served
		// without a restart.
		cr, err := certreload.New(cfg.Server.TLSCert, cfg.Server.TLSKey, s.log)
		if err != nil {
			return nil, fmt.Errorf("loading server %w", err)
		}
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cr.GetCertificate}
	}

	st, err := store.New(ctx, cfg.Storage, store.WithLogger(s.log), store.WithMetrics(s.metrics), store.WithClock(o.now),
		store.WithMaxPinSources(cfg.API.MaxPinSources))
	if err != nil {
		return nil, fmt.Errorf("opening storage: %w", err)
	}
	s.store = st
	// Not s.store: an error return has set s to nil.
	defer func() {
		if err != nil {
			_ = st.Close()
		}
	}()
	for i, u := range cfg.Upstream {
		// Zero timeouts (a configuration not loaded from a file) keep the defaults.
		opts := []upstream.Option{upstream.WithLogger(s.log), upstream.WithMetrics(s.metrics),
			upstream.WithTimeouts(u.Timeouts.Dial.Duration, u.Timeouts.ResponseHeader.Duration)}
		if stall := u.Timeouts.Stall.Duration; stall > 0 {
			opts = append(opts, upstream.WithStallTimeout(stall))
		}
		c, err := upstream.New(u, opts...)
		if err != nil {
			return nil, fmt.Errorf("upstream[%d] %s: %w", i, redact(u.URL), err)
		}
		s.upstreams = append(s.upstreams, c)
	}
	if len(cfg.Peers.Endpoints) > 0 || cfg.Peers.DNS != "" {
		s.peers, err = peers.New(cfg.Peers, peers.WithLogger(s.log), peers.WithMetrics(s.metrics))
		if err != nil {
			return nil, fmt.Errorf("peers: %w", err)
		}
	}
	var apiToken, nodeKey string
	if cfg.API.TokenFile != "" {
		if apiToken, err = conf.ReadToken(cfg.API.TokenFile); err != nil {
			return nil, fmt.Errorf("api.token_file: %w", err)
		}
	}
	if cfg.API.NodeKeyFile != "" {
		if nodeKey, err = conf.ReadToken(cfg.API.NodeKeyFile); err != nil {
			return nil, fmt.Errorf("api.node_key_file: %w", err)
		}
		if len(nodeKey) < nodetoken.MinKeyBytes {
			return nil, fmt.Errorf("api.node_key_file: %s holds %d bytes, want at least %d", cfg.API.NodeKeyFile, len(nodeKey), nodetoken.MinKeyBytes)
		}
	}
	s.filler = fill.New(s.store, fill.WithLogger(s.log), fill.WithMetrics(s.metrics),
		fill.WithRetries(cfg.Cache.FillRetries, cfg.Cache.FillBackoff.Duration))
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.bg, s.cancelBG = bg, cancel
	s.cache = cache.New(bg, cache.Config{
		Store: s.store, Filler: s.filler, Upstreams: s.upstreams, Router: route.New(cfg.Upstream), Peers: s.peers,
		Log: s.log, Metrics: s.metrics, TagTTL: cfg.Cache.TagTTL.Duration, MaxManifest: int64(cfg.Cache.MaxManifestBytes),
		StaleAfter: cfg.Cache.StaleAfter.Duration, NegativeTTL: cfg.Cache.NegativeTTL.Duration,
		Now: o.now,
	})
	s.api = api.New(bg, api.Config{Cache: s.cache, Store: s.store, Peers: s.peers, Token: apiToken, Log: s.log, Metrics: s.metrics,
		PrefetchWorkers: cfg.Cache.PrefetchWorkers, NodeKey: []byte(nodeKey), PinTTL: cfg.API.PinTTL.Duration, Now: o.now})

	configureDistributionLogging(cfg.Log.Level)
	dc := distributionConfig(cfg, s.cache)
	s.app, err = newApp(bg, dc)
	if err == nil {
		s.access, err = accessController(dc)
	}
	if err != nil {
		cancel()
		s.filler.Close()
		s.closeUpstreams()
		return nil, fmt.Errorf("starting distribution: %w", err)
	}
	s.handler = s.routes(s.app)

	for _, f := range cfg.PlainHTTP() {
		s.log.Warn("TLS is off by configuration: plain http", "setting", f)
	}
	for i, u := range cfg.Upstream {
		s.log.Info("upstream configured", "index", i, "url", redact(u.URL), "local_prefix", u.LocalPrefix, "path", u.Path,
			"ns", u.NS, "ca", u.TLS.CA, "auth", u.Auth.CredentialsFile != "")
	}
	s.log.Info("registryd configured", "storage", cfg.Storage.Driver, "root", cfg.Storage.Root, "spool", cfg.Storage.Spool,
		"max_bytes", s.store.MaxBytes(), "ttl", cfg.Storage.TTL.String(), "tag_ttl", cfg.Cache.TagTTL.String(),
		"peers", s.peers != nil, "client_auth", cfg.Auth.Htpasswd != "" || cfg.Auth.Token.Realm != "", "api", apiToken != "", "pins", nodeKey != "", "pin_ttl", cfg.API.PinTTL.String())
	return s, nil
}

// background runs the peer health checks and the eviction loop until ctx ends.
func (s *Server) background(ctx context.Context) {
	if s.peers != nil {
		s.wg.Go(func() { s.peers.Run(ctx) })
	}
	s.wg.Go(func() { s.store.RunEviction(ctx) })
	s.wg.Go(func() { s.store.RunScrub(ctx) })
}

// Run listens on Server.Listen and, when set, Metrics.Listen, and serves until ctx is
// done. Then it stops accepting, lets in-flight requests finish within
// Server.ShutdownTimeout, stops the cache and returns nil. Run may be called once.
func (s *Server) Run(ctx context.Context) (err error) {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("server is already running")
	}
	defer func() {
		err = errors.Join(err, s.Close())
	}()

	servers, err := s.listen()
	if err != nil {
		return err
	}
	close(s.listening)
	s.background(s.bg)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(servers))
	for _, b := range servers {
		go func() {
			err := b.serve()
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("serving %s on %s: %w", b.name, b.ln.Addr(), err)
				cancel()
			}
			errc <- err
		}()
	}

	<-ctx.Done()
	s.log.Info("shutting down", "timeout", s.cfg.Server.ShutdownTimeout.String())
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Server.ShutdownTimeout.Duration)
	defer scancel()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, b := range servers {
		wg.Go(func() {
			if err := b.srv.Shutdown(sctx); err != nil {
				_ = b.srv.Close()
				mu.Lock()
				errs = append(errs, fmt.Errorf("shutting down %s on %s: %w", b.name, b.ln.Addr(), err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for range servers {
		if err := <-errc; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		s.log.Info("stopped")
	}
	return errors.Join(errs...)
}

// Listening is closed once Run has bound its listeners; Addr and MetricsAddr are
// valid from then on.
func (s *Server) Listening() <-chan struct{} { return s.listening }

// Addr is the bound address of the client listener, or nil before Listening is closed.
func (s *Server) Addr() net.Addr {
	select {
	case <-s.listening:
		return s.addr
	default:
		return nil
	}
}

// MetricsAddr is the bound address of the metrics listener, or nil before Listening
// is closed or when metrics are off.
func (s *Server) MetricsAddr() net.Addr {
	select {
	case <-s.listening:
		return s.metricsAt
	default:
		return nil
	}
}

// PprofAddr is the bound address of the debug.pprof_listen listener, or nil before
// Listening is closed or when it is off.
func (s *Server) PprofAddr() net.Addr {
	select {
	case <-s.listening:
		return s.pprofAt
	default:
		return nil
	}
}

// Close stops the background work and running fills and saves the store's index. Run
// calls it on return; call it directly only for a Server that was never run. It is
// safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancelBG()
		s.wg.Wait()
		s.api.Close()
		s.cache.Close()
		s.filler.Close()
		s.closeUpstreams()
		if err := s.app.Shutdown(); err != nil {
			s.closeErr = fmt.Errorf("stopping distribution: %w", err)
		}
		if err := s.store.Close(); err != nil {
			s.closeErr = errors.Join(s.closeErr, fmt.Errorf("closing the store: %w", err))
		}
	})
	return s.closeErr
}

func (s *Server) closeUpstreams() {
	for _, u := range s.upstreams {
		_ = u.Close()
	}
}

type boundServer struct {
	name string
	srv  *http.Server
	ln   net.Listener
	tls  bool
}

func (b boundServer) serve() error {
	if b.tls {
		// The certificate is already in srv.TLSConfig.
		return b.srv.ServeTLS(b.ln, "", "")
	}
	return b.srv.Serve(b.ln)
}

// listen binds the client and metrics listeners; on failure neither stays open.
func (s *Server) listen() ([]boundServer, error) {
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	ln, err := net.Listen("tcp", s.cfg.Server.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", s.cfg.Server.Listen, err)
	}
	s.addr = ln.Addr()
	servers := []boundServer{{
		name: "registry",
		ln:   ln,
		tls:  s.tls != nil,
		srv: &http.Server{
			Handler:           s.handler,
			TLSConfig:         s.tls,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          errLog,
		},
	}}

	if s.cfg.Metrics.Listen != "" {
		mln, err := net.Listen("tcp", s.cfg.Metrics.Listen)
		if err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("listening for metrics on %s: %w", s.cfg.Metrics.Listen, err)
		}
		s.metricsAt = mln.Addr()
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", s.metrics.Handler())
		servers = append(servers, boundServer{
			name: "metrics",
			ln:   mln,
			srv: &http.Server{
				Handler:           mux,
				ReadHeaderTimeout: readHeaderTimeout,
				// Metrics responses are short: a whole-request bound cuts nothing.
				ReadTimeout:    readHeaderTimeout,
				WriteTimeout:   readHeaderTimeout,
				IdleTimeout:    idleTimeout,
				MaxHeaderBytes: maxHeaderBytes,
				ErrorLog:       errLog,
			},
		})
	}
	if a := s.cfg.Debug.PprofListen; a != "" {
		pln, err := net.Listen("tcp", a)
		if err != nil {
			for _, b := range servers {
				_ = b.ln.Close()
			}
			return nil, fmt.Errorf("listening for pprof on %s: %w", a, err)
		}
		s.pprofAt = pln.Addr()
		servers = append(servers, boundServer{
			name: "pprof",
			ln:   pln,
			// No WriteTimeout: a CPU profile or trace takes its ?seconds to answer.
			srv: &http.Server{
				Handler:           pprofHandler(),
				ReadHeaderTimeout: readHeaderTimeout,
				IdleTimeout:       idleTimeout,
				MaxHeaderBytes:    maxHeaderBytes,
				ErrorLog:          errLog,
			},
		})
	}
	for _, b := range servers {
		s.log.Info("listening", "server", b.name, "addr", b.ln.Addr().String(), "tls", b.tls)
	}
	return servers, nil
}

// boundBody bounds the body of a request that has one: at most maxBodyBytes, read
// within bodyTimeout. The read deadline is lifted once the body has been read, so
// that it cannot cut the response.
func boundBody(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(bodyTimeout)) != nil {
		// The writer cannot bound reads; the size bound still holds.
		rc = nil
	}
	r.Body = &boundedBody{ReadCloser: http.MaxBytesReader(w, r.Body, maxBodyBytes), rc: rc}
}

type boundedBody struct {
	io.ReadCloser
	rc *http.ResponseController // nil: no read deadline to lift
}

func (b *boundedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && b.rc != nil {
		_ = b.rc.SetReadDeadline(time.Time{})
		b.rc = nil
	}
	return n, err
}

func slogLevel(level string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// redact hides any user info in a URL before it is logged.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable URL>"
	}
	return u.Redacted()
}
