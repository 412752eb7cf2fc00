// Package server is registryd's serving core: distribution v3 embedded as a
// read-only pull-through cache behind our path alias, health endpoints, access log
// and metrics, with TLS and graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/distribution/distribution/v3/registry/handlers"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

const readHeaderTimeout = 10 * time.Second

// Server is one registryd instance. Create it with New and start it with Run.
type Server struct {
	cfg       *conf.Registryd
	log       *slog.Logger
	metrics   *metrics.Metrics
	tls       *tls.Config // nil when serving plain HTTP
	app       *handlers.App
	cancelApp context.CancelFunc
	handler   http.Handler

	started   atomic.Bool
	listening chan struct{}
	addr      net.Addr
	metricsAt net.Addr

	closeOnce sync.Once
	closeErr  error
}

// Option changes a Server's defaults.
type Option func(*options)

type options struct {
	log     *slog.Logger
	metrics *metrics.Metrics
}

// WithLogger sets the logger. The default writes JSON to stderr at the configured level.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// WithMetrics sets the metrics to record into. The default is metrics.New().
func WithMetrics(m *metrics.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// New builds a Server from a validated configuration. It does not listen yet.
//
// When the upstream has a CA or client certificate, New replaces http.DefaultTransport
// with one that uses them for the upstream's origin only: distribution's proxy always
// dials through http.DefaultTransport. The next step replaces distribution's proxy
// with our own client, and this goes away.
func New(ctx context.Context, cfg *conf.Registryd, opts ...Option) (*Server, error) {
	switch {
	case len(cfg.Upstream) == 0:
		return nil, errors.New("upstream: exactly one [[upstream]] is required")
	case len(cfg.Upstream) > 1:
		return nil, fmt.Errorf("upstream[1] (%s): this version supports exactly one upstream", cfg.Upstream[1].URL)
	}
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
	s := &Server{
		cfg:       cfg,
		log:       o.log,
		metrics:   o.metrics,
		listening: make(chan struct{}),
	}

	if !cfg.Server.Insecure {
		cert, err := tls.LoadX509KeyPair(cfg.Server.TLSCert, cfg.Server.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("loading server certificate %s and key %s: %w", cfg.Server.TLSCert, cfg.Server.TLSKey, err)
		}
		s.tls = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	if err := os.MkdirAll(cfg.Storage.Root, 0o755); err != nil {
		return nil, fmt.Errorf("creating storage root: %w", err)
	}

	up := cfg.Upstream[0]
	var user, pass string
	if up.Auth.CredentialsFile != "" {
		var err error
		if user, pass, err = conf.ReadCredentials(up.Auth.CredentialsFile); err != nil {
			return nil, fmt.Errorf("reading credentials for upstream[0] %s: %w", up.URL, err)
		}
	}
	prev := http.DefaultTransport
	rt, replaced, err := upstreamTransport(prev, up)
	if err != nil {
		return nil, fmt.Errorf("configuring TLS for upstream[0] %s: %w", up.URL, err)
	}
	// Before NewApp: it already contacts the upstream.
	if replaced {
		http.DefaultTransport = rt
	}

	configureDistributionLogging(cfg.Log.Level)
	appCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	app, err := newApp(appCtx, distributionConfig(cfg, user, pass))
	if err != nil {
		cancel()
		if replaced {
			http.DefaultTransport = prev
		}
		return nil, fmt.Errorf("starting the cache for upstream[0] %s: %w", up.URL, err)
	}
	s.app, s.cancelApp = app, cancel
	s.handler = s.routes(app)

	s.log.Info("registryd configured",
		"upstream", redact(up.URL),
		"local_prefix", up.LocalPrefix,
		"path", up.Path,
		"ttl", up.TTL.String(),
		"upstream_ca", up.TLS.CA,
		"upstream_auth", user != "",
		"storage", cfg.Storage.Root)
	return s, nil
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

// Close stops the cache: its TTL scheduler saves its state. Run calls it on return;
// call it directly only for a Server that was never run. It is safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if err := s.app.Shutdown(); err != nil {
			s.closeErr = fmt.Errorf("stopping the cache: %w", err)
		}
		s.cancelApp()
	})
	return s.closeErr
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
				ErrorLog:          errLog,
			},
		})
	}
	for _, b := range servers {
		s.log.Info("listening", "server", b.name, "addr", b.ln.Addr().String(), "tls", b.tls)
	}
	return servers, nil
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
