package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
)

// TestShutdownFinishesInFlight cancels Run's context while a request is waiting on
// the upstream, then lets the upstream answer: the request completes, new
// connections are refused and Run returns nil.
func TestShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{})
	release := make(chan struct{})
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		// t.Context ends before cleanups run, so a failed test does not hang in
		// the upstream's Close.
		select {
		case <-release:
		case <-t.Context().Done():
		}
		http.NotFound(w, r)
	})
	cfg := testConfig(t, up.URL)
	cfg.Metrics.Listen = "127.0.0.1:0"
	s := newTestServer(t, cfg)
	run := start(t, s)
	addr := s.Addr().String()

	type result struct {
		code int
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + addr + "/v2/system/deckhouse/install/blobs/sha256:" + strings.Repeat("a", 64))
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
		t.Fatal("request did not reach the upstream")
	}

	stopped := make(chan error, 1)
	go func() { stopped <- run.stop() }()
	waitRefused(t, addr)
	waitRefused(t, s.MetricsAddr().String())
	select {
	case err := <-stopped:
		t.Fatalf("Run returned %v while a request was in flight", err)
	default:
	}

	close(release)
	if r := <-got; r.err != nil || r.code != http.StatusNotFound {
		t.Errorf("in-flight request: code %d err %v, want 404 from the upstream", r.code, r.err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Run after a clean shutdown: %v, want nil", err)
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
	arrived := make(chan struct{}, 1)
	up := fakeUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-t.Context().Done()
	})
	cfg := testConfig(t, up.URL)
	cfg.Server.ShutdownTimeout = conf.Duration{Duration: 100 * time.Millisecond}
	s := newTestServer(t, cfg)
	run := start(t, s)
	go func() {
		resp, err := http.Get("http://" + s.Addr().String() + "/v2/install/manifests/v1")
		if err == nil {
			_ = resp.Body.Close()
		}
	}()
	<-arrived
	err := run.stop()
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
		{"metrics listener", func(cfg *conf.Registryd, busy string) {
			cfg.Server.Listen = "127.0.0.1:0"
			cfg.Metrics.Listen = busy
		}, "listening for metrics on %s"},
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
			cfg := testConfig(t, fakeUpstream(t, nil).URL)
			tt.set(cfg, busy)
			s := newTestServer(t, cfg)

			err = s.Run(context.Background())
			want := fmt.Sprintf(tt.wantMsg, busy)
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "address already in use") {
				t.Fatalf("Run = %v, want an error containing %q", err, want)
			}
			if s.Addr() != nil {
				t.Errorf("Addr() = %v after a failed Run, want nil", s.Addr())
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		change  func(t *testing.T, cfg *conf.Registryd)
		wantMsg string
	}{
		{
			name: "second upstream",
			change: func(t *testing.T, cfg *conf.Registryd) {
				cfg.Upstream = append(cfg.Upstream, conf.Upstream{URL: "https://second.example", LocalPrefix: "other"})
			},
			wantMsg: "upstream[1] (https://second.example): this version supports exactly one upstream",
		},
		{
			name: "no upstream",
			change: func(t *testing.T, cfg *conf.Registryd) {
				cfg.Upstream = nil
			},
			wantMsg: "exactly one [[upstream]] is required",
		},
		{
			name: "missing server certificate",
			change: func(t *testing.T, cfg *conf.Registryd) {
				cfg.Server.Insecure = false
				cfg.Server.TLSCert = "/nonexistent/tls.crt"
				cfg.Server.TLSKey = "/nonexistent/tls.key"
			},
			wantMsg: "loading server certificate /nonexistent/tls.crt",
		},
		{
			name: "upstream down",
			change: func(t *testing.T, cfg *conf.Registryd) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				cfg.Upstream[0].URL = "http://" + ln.Addr().String()
				_ = ln.Close()
			},
			wantMsg: "starting the cache for upstream[0] http://127.0.0.1:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, fakeUpstream(t, nil).URL)
			tt.change(t, cfg)
			s, err := New(t.Context(), cfg, WithLogger(testLogger(t)))
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
