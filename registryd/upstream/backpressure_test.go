package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/upstreamerr"
)

// fakeClock is a clock that moves only when told to.
type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newFakeClock() *fakeClock { return &fakeClock{base: time.Now()} }

func (f *fakeClock) now() time.Time          { return f.base.Add(time.Duration(f.off.Load())) }
func (f *fakeClock) advance(d time.Duration) { f.off.Add(int64(d)) }

// TestRetryAfterHoldsOff checks that a 429 with Retry-After keeps every further
// request from the upstream until the window ends, failing each at once with the
// same failure and the seconds left, and that the window is capped by
// max_retry_after.
func TestRetryAfterHoldsOff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		retryAfter string
		maxRetry   time.Duration
		// steps: how far the clock is moved before each request held off, and the
		// Retry-After that request carries.
		held []struct {
			advance time.Duration
			want    string
		}
		// open is how far the clock is moved after the held steps, when the
		// upstream is asked again.
		open time.Duration
	}{
		{
			name: "seconds", retryAfter: "2",
			held: []struct {
				advance time.Duration
				want    string
			}{{0, "2"}, {500 * time.Millisecond, "2"}, {time.Second, "1"}},
			open: 500 * time.Millisecond,
		},
		{
			name: "capped", retryAfter: "120", maxRetry: 5 * time.Second,
			held: []struct {
				advance time.Duration
				want    string
			}{{0, "5"}, {4 * time.Second, "1"}},
			open: time.Second,
		},
		{
			name: "date, passed on unchanged", retryAfter: "Wed, 21 Oct 2037 07:28:00 GMT",
			held: []struct {
				advance time.Duration
				want    string
			}{{0, "Wed, 21 Oct 2037 07:28:00 GMT"}, {29 * time.Second, "Wed, 21 Oct 2037 07:28:00 GMT"}},
			open: time.Second, // the default cap of 30s
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var hits atomic.Int32
			srv := httptest.NewTLSServer(fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					w.Header().Set("Retry-After", tt.retryAfter)
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				http.NotFound(w, r)
			}))
			t.Cleanup(srv.Close)
			clk := newFakeClock()
			c := newTestClient(t, srv, conf.Upstream{MaxRetryAfter: conf.Duration{Duration: tt.maxRetry}}, WithClock(clk.now))
			ctx := testContext(t)

			err := manifestOp(ctx, c.Client)
			var first *Error
			if !errors.As(err, &first) || first.Status != http.StatusTooManyRequests || first.RetryAfter != tt.retryAfter {
				t.Fatalf("first request: %v; want a 429 *Error with Retry-After %q", err, tt.retryAfter)
			}
			for i, st := range tt.held {
				clk.advance(st.advance)
				for _, op := range []func(context.Context, *Client) error{manifestOp, statOp, headOp} {
					err := op(ctx, c.Client)
					var e *Error
					if !errors.As(err, &e) || !errdefs.IsUnavailable(err) {
						t.Fatalf("held request %d: %v; want an unavailable *Error", i, err)
					}
					if e.Failure() != first.Failure() || e.RetryAfter != st.want {
						t.Errorf("held request %d: failure %q Retry-After %q; want %q and %q", i, e.Failure(), e.RetryAfter, first.Failure(), st.want)
					}
					if got := upstreamerr.WireStatus(e.Failure()); got != http.StatusTooManyRequests {
						t.Errorf("held request %d: wire status %d, want 429", i, got)
					}
				}
				if n := hits.Load(); n != 1 {
					t.Fatalf("held request %d reached the upstream: %d manifest requests, want 1", i, n)
				}
			}
			clk.advance(tt.open)
			if err := manifestOp(ctx, c.Client); !errdefs.IsNotFound(err) {
				t.Errorf("after the window: %v; want the upstream's 404", err)
			}
			if n := hits.Load(); n != 2 {
				t.Errorf("after the window: %d manifest requests, want 2", n)
			}
		})
	}
}

// TestRetryAfterOnlyFor429And503 checks that other failures, and a 429 without
// Retry-After, open no window.
func TestRetryAfterOnlyFor429And503(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status     int
		retryAfter string
	}{{http.StatusTooManyRequests, ""}, {http.StatusInternalServerError, "7"}, {http.StatusServiceUnavailable, "soon"}} {
		var hits atomic.Int32
		srv := httptest.NewTLSServer(fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			if tt.retryAfter != "" {
				w.Header().Set("Retry-After", tt.retryAfter)
			}
			w.WriteHeader(tt.status)
		}))
		c := newTestClient(t, srv, conf.Upstream{})
		for range 2 {
			_ = manifestOp(testContext(t), c.Client)
		}
		if n := hits.Load(); n != 2 {
			t.Errorf("%d with Retry-After %q: %d requests reached the upstream, want 2", tt.status, tt.retryAfter, n)
		}
		srv.Close()
	}
}

// TestMaxConcurrent checks that with max_concurrent 2 a third request waits for a
// slot until one of two held bodies is closed, and that a waiting request gives up
// with its context.
func TestMaxConcurrent(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 8)
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewTLSServer(fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Length", "4")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ab"))
		w.(http.Flusher).Flush()
		arrived <- struct{}{}
		select {
		case <-release:
			_, _ = w.Write([]byte("cd"))
		case <-r.Context().Done():
		}
	}, nil))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	c := newTestClient(t, srv, conf.Upstream{MaxConcurrent: 2})
	waiting := make(chan struct{}, 8)
	c.waitHook = func() { waiting <- struct{}{} }
	ctx := testContext(t)
	d := digest.FromString("blob")

	open := func() (func() error, error) {
		b, _, err := c.Blob(ctx, "a/b", d, 0)
		if err != nil {
			return nil, err
		}
		return b.Close, nil
	}
	close1, err := open()
	if err != nil {
		t.Fatal(err)
	}
	<-arrived
	close2, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = close2() }()
	<-arrived

	// A request that gives up while waiting fails with its context.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() {
		_, _, err := c.Blob(cctx, "a/b", d, 0)
		gaveUp <- err
	}()
	<-waiting
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) || errdefs.IsUnavailable(err) {
		t.Errorf("request cancelled while waiting: %v; want canceled", err)
	}

	third := make(chan error, 1)
	go func() {
		closeFn, err := open()
		if err == nil {
			err = closeFn()
		}
		third <- err
	}()
	select {
	case <-waiting:
	case <-arrived:
		t.Fatal("a third request reached the upstream while two bodies were held")
	}
	if n := hits.Load(); n != 2 {
		t.Fatalf("%d blob requests reached the upstream with two held, want 2", n)
	}
	if err := close1(); err != nil {
		t.Fatal(err)
	}
	<-arrived
	if err := <-third; err != nil {
		t.Errorf("third request: %v", err)
	}
	if n := hits.Load(); n != 3 {
		t.Errorf("%d blob requests reached the upstream, want 3", n)
	}
}
