package peers

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	token := writeFile(t, dir, "token", testToken+"\n", 0o600)
	open := writeFile(t, dir, "open-token", testToken+"\n", 0o644)
	badCA := writeFile(t, dir, "bad-ca.pem", "not a certificate", 0o644)
	ep := func(url string, w int) conf.Endpoint { return conf.Endpoint{URL: url, Weight: w} }

	tests := []struct {
		name        string
		cfg         conf.Peers
		wantSelf    Peer
		wantHealthy []Peer
		wantErr     []string // substrings of the error; nil means success
	}{
		{
			name:     "no peers needs no self nor token",
			cfg:      conf.Peers{},
			wantSelf: Peer{},
		},
		{
			name: "static peers, self weighted, URLs canonical",
			cfg: conf.Peers{
				Self:      "https://M1:5001/",
				Endpoints: []conf.Endpoint{ep("https://m1:5001", 3), ep("HTTPS://M2:5001", 0), ep("https://m3", 2)},
				TokenFile: token,
			},
			wantSelf:    Peer{URL: "https://m1:5001", Weight: 3},
			wantHealthy: []Peer{{URL: "https://m2:5001", Weight: 1}, {URL: "https://m3:443", Weight: 2}},
		},
		{
			name: "self not listed weighs 1",
			cfg: conf.Peers{
				Self: "https://[::ffff:10.0.0.1]:5001", Endpoints: []conf.Endpoint{ep("https://10.0.0.2:5001", 1)}, TokenFile: token,
			},
			wantSelf:    Peer{URL: "https://10.0.0.1:5001", Weight: 1},
			wantHealthy: []Peer{{URL: "https://10.0.0.2:5001", Weight: 1}},
		},
		{
			name: "plain http with tls.insecure",
			cfg: conf.Peers{
				Self: "http://m1", Endpoints: []conf.Endpoint{ep("http://m2:5001", 1)}, TokenFile: token, TLS: conf.TLS{Insecure: true},
			},
			wantSelf:    Peer{URL: "http://m1:80", Weight: 1},
			wantHealthy: []Peer{{URL: "http://m2:5001", Weight: 1}},
		},
		{
			name:    "plain http without tls.insecure",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("http://m2:5001", 1)}, TokenFile: token},
			wantErr: []string{"peers.endpoint[0].url", "tls.insecure"},
		},
		{
			name:    "endpoint with a path",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("https://m2/v2/", 1)}, TokenFile: token},
			wantErr: []string{"peers.endpoint[0].url", "scheme://host[:port] only"},
		},
		{
			name:    "endpoint listed twice",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("https://m2", 1), ep("https://M2:443", 1)}, TokenFile: token},
			wantErr: []string{"peers.endpoint[1].url", "listed twice"},
		},
		{
			name:    "negative weight",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("https://m2", -1)}, TokenFile: token},
			wantErr: []string{"peers.endpoint[0].weight"},
		},
		{
			name:    "peers without self",
			cfg:     conf.Peers{Endpoints: []conf.Endpoint{ep("https://m2", 1)}, TokenFile: token},
			wantErr: []string{"peers.self: required"},
		},
		{
			name:    "peers without token",
			cfg:     conf.Peers{Self: "https://m1", DNS: "peers.svc"},
			wantErr: []string{"peers.token_file: required"},
		},
		{
			name:    "dns and endpoints",
			cfg:     conf.Peers{Self: "https://m1", DNS: "peers.svc", Endpoints: []conf.Endpoint{ep("https://m2", 1)}, TokenFile: token},
			wantErr: []string{"exclusive"},
		},
		{
			name:    "dns with a bad port",
			cfg:     conf.Peers{Self: "https://m1", DNS: "peers.svc", Port: 70000, TokenFile: token},
			wantErr: []string{"peers.port"},
		},
		{
			name:    "token file readable by others",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("https://m2", 1)}, TokenFile: open},
			wantErr: []string{"peers.token_file", open, "0644"},
		},
		{
			name:    "bad CA",
			cfg:     conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{ep("https://m2", 1)}, TokenFile: token, TLS: conf.TLS{CA: badCA}},
			wantErr: []string{"peers.tls", badCA},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := New(tt.cfg)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatal("New succeeded, want an error")
				}
				if !errdefs.IsInvalidArgument(err) {
					t.Errorf("error %v is not InvalidArgument", err)
				}
				for _, want := range tt.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q lacks %q", err, want)
					}
				}
				if strings.Contains(err.Error(), testToken) {
					t.Errorf("error %q quotes the token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if s.self != tt.wantSelf {
				t.Errorf("self = %+v, want %+v", s.self, tt.wantSelf)
			}
			if got := s.Healthy(); !reflect.DeepEqual(got, tt.wantHealthy) {
				t.Errorf("Healthy() = %+v, want %+v", got, tt.wantHealthy)
			}
		})
	}
}

func TestNewMissingTokenFile(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := New(conf.Peers{Self: "https://m1", Endpoints: []conf.Endpoint{{URL: "https://m2"}}, TokenFile: missing})
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("New error = %v, want one that names %s and wraps fs.ErrNotExist", err, missing)
	}
}

// TestTokenNeverLogged drives every path that logs (ejection, health transitions, DNS
// changes and failures, logging the Set itself) and checks the token is in none of it.
func TestTokenNeverLogged(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	var sick atomic.Bool
	srv, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == healthPath && sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == healthPath {
			return
		}
		// A peer that echoes what it got must not get it logged either.
		http.Error(w, r.Header.Get("Authorization"), http.StatusInternalServerError)
	}))
	s := mustNew(t, cfg, WithLogger(logger))
	ctx := t.Context()
	p := Peer{URL: srv.URL, Weight: 1}
	_, _, err := s.Blob(ctx, p, "registry.example", "deckhouse/ce", digest.FromString("x"), 0)
	if err == nil {
		t.Fatal("Blob succeeded against a failing peer")
	}
	s.checkAll(ctx) // up again
	sick.Store(true)
	s.checkAll(ctx)
	s.checkAll(ctx) // down
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Authorization", "Bearer "+testToken+"x")
	s.Authenticate(req)
	logger.Info("set", "set", s)
	logger.Info(fmt.Sprint(s))

	dcfg := cfg
	dcfg.Endpoints = nil
	dcfg.DNS = "peers.svc"
	var fail bool
	d := mustNew(t, dcfg, WithLogger(logger), WithLookup(func(context.Context, string) ([]string, error) {
		if fail {
			return nil, errors.New("no such host")
		}
		return []string{"10.0.0.9"}, nil
	}))
	d.refresh(ctx)
	fail = true
	d.refresh(ctx)

	out := logs.String()
	for _, want := range []string{"peer ejected", "peer up", "peer down", "peers changed", "resolving peers failed", "self="} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, testToken) {
		t.Errorf("the token was logged:\n%s", out)
	}
}

func TestRunReturnsWhenDone(t *testing.T) {
	t.Parallel()
	_, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cfg.HealthInterval = conf.Duration{Duration: 10 * time.Millisecond}
	s := mustNew(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		s.Run(ctx)
		close(done)
	}()
	time.Sleep(30 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

// TestTimeouts checks that peers.response_header and peers.stall reach the client,
// with their defaults when unset.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	_, cfg := tlsPeer(t, http.NotFoundHandler())
	for _, tt := range []struct {
		responseHeader, stall         time.Duration
		wantResponseHeader, wantStall time.Duration
	}{
		{0, 0, conf.DefaultPeerResponseHeader, conf.DefaultPeerStall},
		{7 * time.Second, 6 * time.Second, 7 * time.Second, 6 * time.Second},
	} {
		cfg.ResponseHeader = conf.Duration{Duration: tt.responseHeader}
		cfg.Stall = conf.Duration{Duration: tt.stall}
		s := mustNew(t, cfg)
		tr := s.client.Transport.(*http.Transport)
		if tr.ResponseHeaderTimeout != tt.wantResponseHeader || tr.TLSHandshakeTimeout != dialTimeout || s.stall != tt.wantStall {
			t.Errorf("response_header %s, stall %s: transport waits %s for headers, %s for TLS, stall %s; want %s, %s, %s",
				tt.responseHeader, tt.stall, tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout, s.stall,
				tt.wantResponseHeader, dialTimeout, tt.wantStall)
		}
	}
}
