package balance

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestEjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		bad      func(t *testing.T) (*url.URL, *backend)
		wantErr  string
		wantKind string
	}{
		{
			name: "500",
			bad: func(t *testing.T) (*url.URL, *backend) {
				be := newBackend(t, false, status(http.StatusInternalServerError))
				return be.url(t), be
			},
			wantErr: "status 500 Internal Server Error: injected failure", wantKind: kindStatus,
		},
		{
			name: "503",
			bad: func(t *testing.T) (*url.URL, *backend) {
				be := newBackend(t, false, status(http.StatusServiceUnavailable))
				return be.url(t), be
			},
			wantErr: "status 503", wantKind: kindStatus,
		},
		{
			name:    "connection refused",
			bad:     func(t *testing.T) (*url.URL, *backend) { return refused(t), nil },
			wantErr: "connection refused", wantKind: kindTransport,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			badURL, bad := tt.bad(t)
			good := newBackend(t, false, ok("good"))
			clock := newFakeClock()
			reg := prometheus.NewRegistry()
			b := newBalancer(t, Config{Endpoints: endpoints(badURL, good.url(t)), Now: clock.Now, Metrics: NewMetrics(reg)})

			// The first pick is the bad endpoint; the GET is retried on the good one.
			if got := mustGet(t, b, "/v2/x/manifests/v1"); got != "good" {
				t.Fatalf("body %q, want good", got)
			}
			st := statusOf(b, badURL)
			if st.Healthy {
				t.Fatal("bad endpoint still healthy")
			}
			if st.LastError == nil {
				t.Fatal("no last error")
			}
			contains(t, "last error", st.LastError.Error(), tt.wantErr, badURL.Host, "/v2/x/manifests/v1")
			if want := clock.Now().Add(backoffMin); !st.RetryAt.Equal(want) {
				t.Errorf("RetryAt %v, want %v", st.RetryAt, want)
			}
			for range 5 {
				if got := mustGet(t, b, "/v2/"); got != "good" {
					t.Fatalf("body %q from an ejected endpoint", got)
				}
			}
			if bad != nil && bad.hits.Load() != 1 {
				t.Errorf("ejected endpoint got %d requests, want 1", bad.hits.Load())
			}
			if got := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": badURL.String(), "kind": tt.wantKind}); got != 1 {
				t.Errorf("errors_total{kind=%s} = %v, want 1", tt.wantKind, got)
			}
			if got := metric(t, reg, "hopless_plugin_endpoint_healthy", map[string]string{"endpoint": badURL.String()}); got != 0 {
				t.Errorf("endpoint_healthy = %v, want 0", got)
			}
		})
	}
}

func TestNotFoundDoesNotEject(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, status(http.StatusNotFound))
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t))})
	for range 3 {
		resp, _, err := get(t, b, "/v2/x/manifests/missing")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %s, want 404", resp.Status)
		}
	}
	if st := b.Status()[0]; !st.Healthy || st.LastError != nil {
		t.Errorf("a 404 changed the endpoint: healthy %v, last error %v", st.Healthy, st.LastError)
	}
}

func TestRecovery(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"trial request", "active check"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			flaky := newBackend(t, false, status(http.StatusInternalServerError))
			good := newBackend(t, false, ok("good"))
			clock := newFakeClock()
			b := newBalancer(t, Config{Endpoints: endpoints(flaky.url(t), good.url(t)), Now: clock.Now, HealthTimeout: time.Second})
			mustGet(t, b, "/v2/")
			if statusOf(b, flaky.url(t)).Healthy {
				t.Fatal("not ejected by a 500")
			}
			flaky.set(ok("flaky"))

			// Before the backoff ends neither a passing check nor traffic brings it back.
			b.checkAll(t.Context())
			for range 3 {
				if got := mustGet(t, b, "/v2/"); got != "good" {
					t.Fatalf("body %q before the backoff ended", got)
				}
			}
			if statusOf(b, flaky.url(t)).Healthy {
				t.Fatal("back before the backoff ended")
			}

			clock.Advance(backoffMin)
			switch via {
			case "trial request":
				var bodies []string
				for range 3 {
					bodies = append(bodies, mustGet(t, b, "/v2/"))
				}
				if bodies[0] != "flaky" && bodies[1] != "flaky" {
					t.Errorf("bodies %q: the half-open endpoint got no trial", bodies)
				}
			case "active check":
				b.checkAll(t.Context())
			}
			if !statusOf(b, flaky.url(t)).Healthy {
				t.Fatal("not healthy again")
			}
			seen := make(map[string]int)
			for range 4 {
				seen[mustGet(t, b, "/v2/")]++
			}
			if seen["flaky"] != 2 || seen["good"] != 2 {
				t.Errorf("after recovery got %v, want an even split", seen)
			}
		})
	}
}

// TestBackoff checks the ejection lengths: doubling from 1 s to 30 s while trials
// fail, and back to 1 s after a success. Meanwhile the other endpoint takes every
// request, so the ejected one sees exactly its trials.
func TestBackoff(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, status(http.StatusBadGateway))
	good := newBackend(t, false, ok("good"))
	clock := newFakeClock()
	// Weights 100:1 make SWRR pick the half-open endpoint first whenever it may be.
	b := newBalancer(t, Config{Endpoints: []Endpoint{{URL: be.url(t), Weight: 100}, {URL: good.url(t), Weight: 1}}, Now: clock.Now})
	if got := mustGet(t, b, "/v2/"); got != "good" {
		t.Fatalf("first GET: body %q, want good after the retry", got)
	}
	for i, d := range []time.Duration{1, 2, 4, 8, 16, 30, 30} {
		d *= time.Second
		if st := statusOf(b, be.url(t)); st.State != StateEjected || !st.RetryAt.Equal(clock.Now().Add(d)) {
			t.Fatalf("round %d: %s until %v, want ejected for %v", i, st.State, st.RetryAt.Sub(clock.Now()), d)
		}
		hits := be.hits.Load()
		clock.Advance(d - time.Millisecond)
		if got := mustGet(t, b, "/v2/"); got != "good" || be.hits.Load() != hits {
			t.Fatalf("round %d: a request reached the endpoint before its backoff ended", i)
		}
		clock.Advance(time.Millisecond)
		mustGet(t, b, "/v2/") // the trial fails over to the good endpoint
		if be.hits.Load() != hits+1 {
			t.Fatalf("round %d: %d requests reached the half-open endpoint, want its one trial", i, be.hits.Load()-hits)
		}
	}
	be.set(ok("back"))
	clock.Advance(backoffMax)
	if got := mustGet(t, b, "/v2/"); got != "back" {
		t.Fatalf("trial body %q", got)
	}
	be.set(status(http.StatusBadGateway))
	for statusOf(b, be.url(t)).State == StateUp {
		mustGet(t, b, "/v2/")
	}
	if st := statusOf(b, be.url(t)); !st.RetryAt.Equal(clock.Now().Add(backoffMin)) {
		t.Errorf("after a success the backoff is %v, want it reset to %v", st.RetryAt.Sub(clock.Now()), backoffMin)
	}
}

// TestSingleTrial checks that a half-open endpoint takes exactly one request: while
// its trial is in flight, the next request goes to the other endpoint.
func TestSingleTrial(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, status(http.StatusInternalServerError))
	good := newBackend(t, false, ok("good"))
	clock := newFakeClock()
	// Weights 100:1 make SWRR pick the half-open endpoint first whenever it may be.
	b := newBalancer(t, Config{Endpoints: []Endpoint{{URL: be.url(t), Weight: 100}, {URL: good.url(t), Weight: 1}}, Now: clock.Now})
	mustGet(t, b, "/v2/")
	if statusOf(b, be.url(t)).Healthy {
		t.Fatal("not ejected by a 500")
	}

	entered, release := make(chan struct{}), make(chan struct{})
	be.set(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Write([]byte("trial"))
	})
	clock.Advance(backoffMin)
	type res struct {
		body string
		err  error
	}
	done := make(chan res, 1)
	go func() {
		_, body, err := get(t, b, "/v2/")
		done <- res{body, err}
	}()
	select {
	case <-entered:
	case <-time.After(testTimeout):
		t.Fatal("the trial request never arrived")
	}
	for range 3 {
		if got := mustGet(t, b, "/v2/"); got != "good" {
			t.Fatalf("a request during the trial got %q, want the good endpoint", got)
		}
	}
	close(release)
	select {
	case r := <-done:
		if r.err != nil || r.body != "trial" {
			t.Fatalf("trial: body %q, err %v", r.body, r.err)
		}
	case <-time.After(testTimeout):
		t.Fatal("trial did not finish")
	}
	if !statusOf(b, be.url(t)).Healthy {
		t.Error("a successful trial did not bring the endpoint back")
	}
}

func TestActiveCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(be *backend) http.HandlerFunc
		refused bool
		healthy bool
		wantErr string
	}{
		{name: "200", handler: func(*backend) http.HandlerFunc { return ok("{}") }, healthy: true},
		{name: "401 asks for a token", handler: func(*backend) http.HandlerFunc { return status(http.StatusUnauthorized) }, healthy: true},
		{name: "404", handler: func(*backend) http.HandlerFunc { return status(http.StatusNotFound) }, wantErr: "status 404"},
		{name: "500", handler: func(*backend) http.HandlerFunc { return status(http.StatusInternalServerError) }, wantErr: "status 500"},
		{name: "no answer", handler: func(be *backend) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) { be.block(r) }
		}, wantErr: "no answer within 200ms"},
		{name: "refused", refused: true, wantErr: "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var u *url.URL
			if tt.refused {
				u = refused(t)
			} else {
				be := newBackend(t, false, nil)
				h := tt.handler(be)
				be.set(func(w http.ResponseWriter, r *http.Request) {
					if r.Method != http.MethodGet || r.URL.Path != "/v2/" {
						http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
						return
					}
					h(w, r)
				})
				u = be.url(t)
			}
			b := newBalancer(t, Config{Endpoints: endpoints(u), HealthTimeout: 200 * time.Millisecond})
			b.checkAll(t.Context())
			st := b.Status()[0]
			if st.Healthy != tt.healthy {
				t.Fatalf("healthy %v, want %v (last error %v)", st.Healthy, tt.healthy, st.LastError)
			}
			if tt.wantErr != "" {
				contains(t, "last error", st.LastError.Error(), "health check GET "+u.String()+"/v2/", tt.wantErr)
			}
		})
	}
}

// TestRun checks the check loop end to end: a failing /v2/ ejects, a passing one
// revives after the backoff, and Run returns when its context ends.
func TestRun(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, status(http.StatusServiceUnavailable))
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), HealthInterval: 20 * time.Millisecond, HealthTimeout: time.Second})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		b.Run(ctx)
		close(done)
	}()
	eventually(t, "ejection by the active check", func() bool { return !b.Status()[0].Healthy })
	be.set(ok("{}"))
	eventually(t, "recovery by the active check", func() bool { return b.Status()[0].Healthy })
	cancel()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Run did not return after its context ended")
	}
}
