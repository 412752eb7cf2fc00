package balance

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/prometheus/client_golang/prometheus"
)

// TestFrozenEndpoint is the failure this package exists for: a master that accepts
// TCP and never answers. The GET must be served by another endpoint after at most one
// hedge (never after the ResponseHeader deadline), the frozen one must be taken out of
// rotation, and later GETs must need no hedge at all.
func TestFrozenEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tls  bool
		warm bool // the hedge window is full of fast answers: the delay is HedgeMin
	}{
		{name: "http, cold"},
		{name: "https, cold", tls: true},
		{name: "http, warm", warm: true},
		{name: "https, warm", tls: true, warm: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			scheme := "http"
			var tr http.RoundTripper
			if tt.tls {
				scheme, tr = "https", tlsTransport(t)
			}
			stuck := frozen(t, scheme)
			good := newBackend(t, tt.tls, ok("good"))
			reg := prometheus.NewRegistry()
			b := newBalancer(t, Config{
				Endpoints:      endpoints(stuck, good.url(t)),
				Transport:      tr,
				ResponseHeader: 1500 * time.Millisecond,
				Metrics:        NewMetrics(reg),
			})
			if tt.warm {
				for range ttfbMinSamples {
					b.hedge.observe(classBlob, time.Millisecond)
				}
				if d := b.hedge.delay(classBlob); d != DefaultHedgeMin {
					t.Fatalf("hedge delay with a window of fast answers: %v, want HedgeMin %v", d, DefaultHedgeMin)
				}
			} else if d := b.hedge.delay(classBlob); d > DefaultHedgeMax {
				t.Fatalf("cold hedge delay %v above HedgeMax %v", d, DefaultHedgeMax)
			}

			if got := mustGet(t, b, "/v2/x/blobs/sha256:aa"); got != "good" {
				t.Fatalf("body %q", got)
			}
			hedges := metric(t, reg, "hopless_plugin_hedges_total", nil)
			if hedges > 1 || metric(t, reg, "hopless_plugin_hedges_won_total", nil) != hedges {
				t.Errorf("%v hedges, %v won, for one GET with a frozen endpoint: want at most one, and it won", hedges,
					metric(t, reg, "hopless_plugin_hedges_won_total", nil))
			}
			if n := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": stuck.String(), "kind": kindTimeout}); n != 0 {
				t.Errorf("the GET waited for the frozen endpoint's ResponseHeader deadline (%v timeouts)", n)
			}

			// The hedge's on-demand check finds the endpoint frozen, well before the
			// attempt's own ResponseHeader deadline.
			eventually(t, "the frozen endpoint out of rotation", func() bool { return !statusOf(b, stuck).Healthy })
			if st := statusOf(b, stuck); !strings.Contains(st.Reason, "no response headers") && !strings.Contains(st.Reason, "active check failed") {
				t.Errorf("frozen endpoint: %s (%s), want it out for no response headers or a failed check", st.State, st.Reason)
			}

			for range 3 {
				mustGet(t, b, "/v2/x/blobs/sha256:aa")
			}
			if n := metric(t, reg, "hopless_plugin_hedges_total", nil); n != hedges {
				t.Errorf("GETs after the ejection sent %v more hedges, want none", n-hedges)
			}
		})
	}
}

// TestHedgeLoserCancelled checks that once a winner answers, a hedge still waiting
// is cancelled, and the server sees it.
func TestHedgeLoserCancelled(t *testing.T) {
	t.Parallel()
	slow := newBackend(t, false, nil)
	slow.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return // alive: the on-demand check passes
		}
		select {
		case <-time.After(300 * time.Millisecond):
			io.WriteString(w, "slow")
		case <-r.Context().Done():
		}
	})
	hedged := make(chan bool, 1)
	loser := newBackend(t, false, nil)
	loser.set(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		hedged <- loser.block(r)
	})

	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints:      endpoints(slow.url(t), loser.url(t)),
		HedgeMin:       50 * time.Millisecond,
		HedgeMax:       50 * time.Millisecond,
		ResponseHeader: testTimeout,
		Metrics:        NewMetrics(reg),
	})
	if got := mustGet(t, b, "/v2/x/manifests/v1"); got != "slow" {
		t.Fatalf("body %q, want slow", got)
	}
	select {
	case cancelled := <-hedged:
		if !cancelled {
			t.Error("the hedged request was not cancelled")
		}
	case <-time.After(2 * time.Second):
		t.Error("the hedged request is still running")
	}
	if got := metric(t, reg, "hopless_plugin_hedges_total", nil); got != 1 {
		t.Errorf("hedges_total = %v, want 1", got)
	}
	eventually(t, "the loser counted as canceled", func() bool {
		return metric(t, reg, "hopless_plugin_requests_total", map[string]string{"endpoint": loser.URL, "code": "canceled"}) == 1
	})
	for _, s := range b.Status() {
		if !s.Healthy {
			t.Errorf("%s ejected: a cancelled loser is not a failure", s.URL)
		}
	}
}

func TestPostNotRetried(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		first      func(t *testing.T, got chan<- string) *url.URL
		wantStatus int
		wantErr    string
	}{
		{
			name: "500 is returned",
			first: func(t *testing.T, got chan<- string) *url.URL {
				be := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) {
					p, _ := io.ReadAll(r.Body)
					got <- string(p)
					http.Error(w, "broken", http.StatusInternalServerError)
				})
				return be.url(t)
			},
			wantStatus: http.StatusInternalServerError,
		},
		{
			name:    "connection refused is returned",
			first:   func(t *testing.T, _ chan<- string) *url.URL { return refused(t) },
			wantErr: "connection refused",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan string, 1)
			first := tt.first(t, got)
			other := newBackend(t, false, ok("other"))
			b := newBalancer(t, Config{Endpoints: endpoints(first, other.url(t))})
			resp, err := b.RoundTrip(request(t, http.MethodPost, "/v2/x/blobs/uploads/", strings.NewReader("payload")))
			switch {
			case tt.wantErr != "":
				if err == nil {
					resp.Body.Close()
					t.Fatal("POST succeeded")
				}
				contains(t, "error", err.Error(), "POST", first.Host, tt.wantErr)
			case err != nil:
				t.Fatal(err)
			default:
				resp.Body.Close()
				if resp.StatusCode != tt.wantStatus {
					t.Errorf("status %s, want %d", resp.Status, tt.wantStatus)
				}
				if body := <-got; body != "payload" {
					t.Errorf("server got body %q", body)
				}
			}
			if n := other.hits.Load(); n != 0 {
				t.Errorf("the POST was retried: the other endpoint got %d requests", n)
			}
			if statusOf(b, first).Healthy {
				t.Error("the failing endpoint was not ejected")
			}
		})
	}
}

func TestAllDown(t *testing.T) {
	t.Parallel()
	broken := newBackend(t, false, status(http.StatusServiceUnavailable))
	gone := refused(t)
	stuck := frozen(t, "http")
	b := newBalancer(t, Config{
		Endpoints:      endpoints(broken.url(t), gone, stuck),
		ResponseHeader: 300 * time.Millisecond,
		HedgeMin:       50 * time.Millisecond,
		HedgeMax:       50 * time.Millisecond,
	})
	want := map[string]string{
		broken.URL:     "status 503",
		gone.String():  "connection refused",
		stuck.String(): "no response headers",
	}
	check := func(err error) {
		t.Helper()
		var all *AllDownError
		if !errors.As(err, &all) {
			t.Fatalf("error %v, want *AllDownError", err)
		}
		if !errors.Is(err, errdefs.ErrUnavailable) || !errdefs.IsUnavailable(err) {
			t.Error("not errdefs.ErrUnavailable")
		}
		if len(all.Errors) != len(want) {
			t.Errorf("%d endpoint errors, want %d", len(all.Errors), len(want))
		}
		for u, sub := range want {
			if e := all.Errors[u]; e == nil {
				t.Errorf("no error for %s", u)
			} else {
				contains(t, "error of "+u, e.Error(), sub)
			}
			contains(t, "message", err.Error(), u)
		}
	}

	_, _, err := get(t, b, "/v2/x/manifests/v1")
	check(err)
	// Every endpoint is now out of rotation. Panic routing still tries each of
	// them, best first, rather than failing without asking.
	hits := broken.hits.Load()
	_, _, err = get(t, b, "/v2/x/manifests/v1")
	check(err)
	if broken.hits.Load() != hits+1 {
		t.Errorf("with every endpoint out, the broken one got %d requests, want 1 (panic routing)", broken.hits.Load()-hits)
	}
}

// TestRewrite checks that only scheme and host change, and that requests for
// another host pass through when Config.Host is set.
func TestRewrite(t *testing.T) {
	t.Parallel()
	echo := func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host+" "+r.RequestURI+" "+r.Header.Get("Authorization"))
	}
	master := newBackend(t, false, echo)
	elsewhere := newBackend(t, false, echo)
	tests := []struct {
		name string
		host string // Config.Host
		url  string
		want string
	}{
		{
			name: "balanced",
			url:  "http://" + virtualHost + "/v2/system/deckhouse/manifests/v1?ns=registry.example%3A5001",
			want: master.Listener.Addr().String() + " /v2/system/deckhouse/manifests/v1?ns=registry.example%3A5001 Bearer t",
		},
		{
			name: "balanced with Host set",
			host: virtualHost,
			url:  "http://" + virtualHost + "/v2/a%2Fb/tags/list?n=10",
			want: master.Listener.Addr().String() + " /v2/a%2Fb/tags/list?n=10 Bearer t",
		},
		{
			name: "another host passes through",
			host: virtualHost,
			url:  elsewhere.URL + "/blob?sig=x",
			want: elsewhere.Listener.Addr().String() + " /blob?sig=x Bearer t",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBalancer(t, Config{Endpoints: endpoints(master.url(t)), Host: tt.host})
			ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer t")
			resp, err := b.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			p, _ := io.ReadAll(resp.Body)
			if string(p) != tt.want {
				t.Errorf("server saw %q, want %q", p, tt.want)
			}
			if req.URL.String() != tt.url {
				t.Errorf("the caller's request was modified: %s", req.URL)
			}
		})
	}
}

// TestCallerCancel checks that a caller giving up neither waits nor ejects.
func TestCallerCancel(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, nil)
	be.set(func(w http.ResponseWriter, r *http.Request) { be.block(r) })
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), ResponseHeader: testTimeout})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+virtualHost+"/v2/", nil)
	start := time.Now()
	_, err := b.RoundTrip(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the caller's deadline", err)
	}
	// The only other way out is the endpoint's ResponseHeader deadline.
	if d := time.Since(start); d >= testTimeout {
		t.Errorf("returned after %v: it waited for the endpoint's ResponseHeader deadline, not the caller's", d)
	}
	eventually(t, "no request outstanding", func() bool { return b.Status()[0].Outstanding == 0 })
	if st := b.Status()[0]; !st.Healthy {
		t.Errorf("ejected because the caller gave up: %v", st.LastError)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	bad := newBackend(t, false, status(http.StatusInternalServerError))
	good := newBackend(t, false, ok(strings.Repeat("x", 1000)))
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{Endpoints: endpoints(bad.url(t), good.url(t)), Metrics: NewMetrics(reg), Now: newFakeClock().Now})
	mustGet(t, b, "/v2/")
	mustGet(t, b, "/v2/")
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"hopless_plugin_requests_total", map[string]string{"endpoint": bad.URL, "code": "500"}, 1},
		{"hopless_plugin_requests_total", map[string]string{"endpoint": good.URL, "code": "200"}, 2},
		{"hopless_plugin_bytes_total", map[string]string{"endpoint": good.URL}, 2000},
		{"hopless_plugin_errors_total", map[string]string{"endpoint": bad.URL, "kind": kindStatus}, 1},
		{"hopless_plugin_endpoint_healthy", map[string]string{"endpoint": bad.URL}, 0},
		{"hopless_plugin_endpoint_healthy", map[string]string{"endpoint": good.URL}, 1},
		{"hopless_plugin_hedges_total", nil, 0},
		{"hopless_plugin_resumes_total", nil, 0},
	}
	for _, tt := range tests {
		if got := metric(t, reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}
