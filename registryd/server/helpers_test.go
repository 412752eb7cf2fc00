package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
)

// fakeUpstream is a plain-HTTP upstream that answers the base endpoint, which
// distribution pings at startup, and hands every other request to h (404 if nil).
func fakeUpstream(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.WriteHeader(http.StatusOK)
			return
		}
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// testConfig is a plain-HTTP registryd on a free loopback port in front of upstreamURL.
func testConfig(t *testing.T, upstreamURL string) *conf.Registryd {
	t.Helper()
	return &conf.Registryd{
		Server: conf.Server{
			Listen:          "127.0.0.1:0",
			Insecure:        true,
			ShutdownTimeout: conf.Duration{Duration: 5 * time.Second},
		},
		Storage: conf.Storage{Root: t.TempDir()},
		Upstream: []conf.Upstream{{
			URL:         upstreamURL,
			LocalPrefix: conf.DefaultLocalPrefix,
			Path:        "deckhouse/ce",
			TTL:         conf.Duration{Duration: time.Hour},
			TLS:         conf.TLS{Insecure: true},
		}},
		Log: conf.Log{Level: "debug"},
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewJSONHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestServer builds a Server that is closed when the test ends.
func newTestServer(t *testing.T, cfg *conf.Registryd) *Server {
	t.Helper()
	s, err := New(t.Context(), cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// running is a Server whose Run is in progress.
type running struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
	// checked is set once the test has looked at Run's result itself.
	checked atomic.Bool
}

// stop cancels Run's context and returns Run's result for the test to check.
func (r *running) stop() error {
	r.checked.Store(true)
	return r.wait()
}

func (r *running) wait() error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(10 * time.Second):
			r.err = errors.New("Run did not return within 10s of cancel")
		}
	})
	return r.err
}

// start runs s until the test ends or stop is called, failing the test if s does not
// start listening.
func start(t *testing.T, s *Server) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	select {
	case <-s.Listening():
	case err := <-r.done:
		cancel()
		t.Fatalf("Run returned before listening: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("server did not start listening")
	}
	t.Cleanup(func() {
		if err := r.wait(); err != nil && !r.checked.Load() {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}
