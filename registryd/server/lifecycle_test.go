package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/test/registrytest"
)

// TestShutdownFinishesInFlight cancels Run's context while a blob request waits on
// the upstream, then lets the upstream answer: the request completes, new
// connections are refused meanwhile and Run returns nil.
func TestShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	blockBlobs(up, arrived, release)
	env := registrytest.NewEnv(t, "", up)
	env.Config.Metrics.Listen = "127.0.0.1:0"
	s, _ := newServer(t, env.Config)
	run := registrytest.Start(t, s)
	addr := s.Addr().String()
	client := env.Cert.Client(t)

	type result struct {
		code int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := client.Get(baseURL(s) + "/v2/system/deckhouse/install/blobs/sha256:" + strings.Repeat("a", 64))
		if err != nil {
			got <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		got <- result{code: resp.StatusCode}
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}

	stopped := make(chan error, 1)
	go func() { stopped <- run.Stop() }()
	waitRefused(t, addr)
	waitRefused(t, s.MetricsAddr().String())
	select {
	case err := <-stopped:
		t.Fatalf("Run returned %v while a request was in flight", err)
	default:
	}

	close(release)
	if r := <-got; r.err != nil || r.code != http.StatusNotFound {
		t.Errorf("in-flight request: code %d err %v, want 404 from the upstream's answer", r.code, r.err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Run after a clean shutdown: %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
	}
}

func waitRefused(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		_ = c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s still accepts connections after shutdown began", addr)
}

func TestShutdownTimeout(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	arrived := make(chan struct{}, 1)
	blockBlobs(up, arrived, nil)
	env := registrytest.NewEnv(t, "", up)
	env.Config.Server.ShutdownTimeout = conf.Duration{Duration: 100 * time.Millisecond}
	s, _ := newServer(t, env.Config)
	run := registrytest.Start(t, s)
	client := env.Cert.Client(t)
	go func() {
		resp, err := client.Get(baseURL(s) + "/v2/system/deckhouse/install/manifests/v1")
		if err == nil {
			_ = resp.Body.Close()
		}
	}()
	<-arrived
	// The request never ends by itself: Run returns only because the shutdown
	// timeout gave up on it, which its error says.
	err := run.Stop()
	if err == nil || !strings.Contains(err.Error(), "shutting down registry on "+s.Addr().String()) ||
		!strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		t.Errorf("Run = %v, want a shutdown deadline error naming the address", err)
	}
}

func TestBusyPort(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		set     func(cfg *conf.Registryd, busy string)
		wantMsg string
	}{
		{"client listener", func(cfg *conf.Registryd, busy string) { cfg.Server.Listen = busy }, "listening on %s"},
		{"metrics listener", func(cfg *conf.Registryd, busy string) { cfg.Metrics.Listen = busy }, "listening for metrics on %s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			busy := ln.Addr().String()
			env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
			tt.set(env.Config, busy)
			s, _ := newServer(t, env.Config)

			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err = s.Run(ctx)
			want := fmt.Sprintf(tt.wantMsg, busy)
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("Run = %v, want an error containing %q", err, want)
			}
			if s.Addr() != nil {
				t.Errorf("Addr() = %v after a failed Run, want nil", s.Addr())
			}
			if s.addr != nil {
				// The client listener was bound before the metrics listener failed.
				if c, err := net.DialTimeout("tcp", s.addr.String(), time.Second); err == nil {
					_ = c.Close()
					t.Errorf("the client listener %s stayed open after the metrics listener failed", s.addr)
				}
			}
		})
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	if err := s.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run = %v, want an already-running error", err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		change  func(t *testing.T, env *registrytest.Env)
		wantMsg string
	}{
		{
			name: "missing server certificate",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.Server.TLSCert = "/nonexistent/tls.crt"
			},
			wantMsg: "loading server certificate /nonexistent/tls.crt",
		},
		{
			name: "missing upstream CA",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.Upstream[0].TLS.CA = "/nonexistent/ca.pem"
			},
			wantMsg: "upstream[0] https://127.0.0.1:",
		},
		{
			name: "missing API token file",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.API.TokenFile = filepath.Join(env.Dir, "nope")
			},
			wantMsg: "api.token_file: token file ",
		},
		{
			name: "API token file readable by others",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.API.TokenFile = filepath.Join(env.Dir, "api-token")
				if err := os.WriteFile(env.Config.API.TokenFile, []byte("secret\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantMsg: "mode 0644 is too open",
		},
		{
			name: "empty API token file",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.API.TokenFile = filepath.Join(env.Dir, "api-token")
				registrytest.WriteSecret(t, env.Config.API.TokenFile, "")
			},
			wantMsg: "api-token: empty",
		},
		{
			name: "peers without a token",
			change: func(t *testing.T, env *registrytest.Env) {
				env.Config.Peers = conf.Peers{
					Self:      "https://127.0.0.1:5001",
					Endpoints: []conf.Endpoint{{URL: "https://127.0.0.1:5001", Weight: 1}, {URL: "https://127.0.0.2:5001", Weight: 1}},
				}
			},
			wantMsg: "peers: ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
			tt.change(t, env)
			log, _ := registrytest.Logger(t)
			s, err := New(t.Context(), env.Config, WithLogger(log))
			if err == nil {
				_ = s.Close()
				t.Fatal("New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("New = %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

// TestNewOffline checks that New and readiness do not depend on the upstream: a
// master must come up while its upstream is down.
func TestNewOffline(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	env := registrytest.NewEnv(t, "", up)
	up.Close()
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	resp, body := registrytest.Do(t, env.Cert.Client(t), http.MethodGet, baseURL(s)+"/readyz", nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz with the upstream down: %d %s, want 200", resp.StatusCode, body)
	}
	resp, body = registrytest.Do(t, env.Cert.Client(t), http.MethodGet, baseURL(s)+"/v2/system/deckhouse/install/manifests/v1", nil)
	if resp.StatusCode != http.StatusGatewayTimeout || registrytest.Errors(t, body)[0].Code != "UNAVAILABLE" ||
		resp.Header.Get("Hopless-Upstream-Error") != "upstream="+up.Host+"; reason=unreachable" {
		t.Errorf("uncached tag with the upstream down: %d %s (%q), want 504 UNAVAILABLE as the upstream's failure",
			resp.StatusCode, body, resp.Header.Get("Hopless-Upstream-Error"))
	}
}

func TestMetricsListener(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	env.Config.Metrics.Listen = "127.0.0.1:0"
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	client := env.Cert.Client(t)
	if resp, body := registrytest.Do(t, client, http.MethodGet, baseURL(s)+"/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: %d %s", resp.StatusCode, body)
	}
	// The metrics listener is plain HTTP.
	metrics := "http://" + s.MetricsAddr().String()
	resp, body := registrytest.Do(t, http.DefaultClient, http.MethodGet, metrics+"/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{
		`hopless_registryd_http_requests_total{code="200",kind="base",method="GET"} 1`,
		`go_goroutines`,
		`process_cpu_seconds_total`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(string(body), "registry_") && !strings.Contains(string(body), "hopless_registryd_") {
		t.Errorf("metrics include distribution's default-registry collectors")
	}
	for _, path := range []string{"/", "/v2/", "/healthz"} {
		if resp, _ := registrytest.Do(t, http.DefaultClient, http.MethodGet, metrics+path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("metrics listener GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
	if resp, _ := registrytest.Do(t, http.DefaultClient, http.MethodPost, metrics+"/metrics", nil); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("metrics listener POST /metrics: %d, want 405", resp.StatusCode)
	}
}

func TestPprofListener(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	if a := s.PprofAddr(); a != nil {
		t.Fatalf("PprofAddr = %v without debug.pprof_listen, want nil", a)
	}

	env = registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	env.Config.Debug.PprofListen = "127.0.0.1:0"
	s, _ = newServer(t, env.Config)
	registrytest.Start(t, s)
	base := "http://" + s.PprofAddr().String()
	resp, body := registrytest.Do(t, http.DefaultClient, http.MethodGet, base+"/debug/pprof/goroutine?debug=1", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile:") {
		t.Errorf("GET goroutine profile: %d %.200s", resp.StatusCode, body)
	}
	for path, want := range map[string]int{
		"/debug/pprof/nosuch":              http.StatusNotFound,
		"/debug/pprof/profile?seconds=0":   http.StatusBadRequest,
		"/debug/pprof/trace?seconds=x":     http.StatusBadRequest,
		"/debug/pprof/profile?seconds=301": http.StatusBadRequest,
		"/v2/":                             http.StatusNotFound,
	} {
		if resp, _ := registrytest.Do(t, http.DefaultClient, http.MethodGet, base+path, nil); resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
