package balance

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testTimeout bounds every wait of a test.
const testTimeout = 10 * time.Second

// virtualHost is the host the resolver would talk to.
const virtualHost = "registry.test:5001"

// fakeClock is a Config.Now that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// backend is an httptest server whose handler can be swapped, counting requests.
type backend struct {
	*httptest.Server
	hits    atomic.Int64
	handler atomic.Pointer[http.HandlerFunc]
	// stop is closed before the server is, to release handlers that block.
	stop chan struct{}
}

func newBackend(t *testing.T, tlsOn bool, h http.HandlerFunc) *backend {
	t.Helper()
	be := &backend{stop: make(chan struct{})}
	be.set(h)
	serve := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		be.hits.Add(1)
		(*be.handler.Load())(w, r)
	})
	if tlsOn {
		be.Server = httptest.NewTLSServer(serve)
	} else {
		be.Server = httptest.NewServer(serve)
	}
	t.Cleanup(be.Close)
	t.Cleanup(func() { close(be.stop) }) // runs first: cleanups are LIFO
	return be
}

func (be *backend) set(h http.HandlerFunc) { be.handler.Store(&h) }

// block waits until the request is cancelled or the test ends; it reports whether
// the request was cancelled.
func (be *backend) block(r *http.Request) bool {
	select {
	case <-r.Context().Done():
		return true
	case <-be.stop:
	case <-time.After(testTimeout):
	}
	return false
}

func (be *backend) url(t *testing.T) *url.URL { return mustURL(t, be.URL) }

func ok(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { http.Error(w, "injected failure", code) }
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// frozen is a listener that accepts connections and never reads or writes: a
// master stopped with SIGSTOP, whose kernel still completes the handshake.
func frozen(t *testing.T, scheme string) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return mustURL(t, scheme+"://"+ln.Addr().String())
}

// refused is the URL of a port nobody listens on.
func refused(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return mustURL(t, "http://"+addr)
}

// tlsTransport trusts httptest's certificate, which every TLS test server shares.
func tlsTransport(t *testing.T) *http.Transport {
	t.Helper()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	tr := srv.Client().Transport.(*http.Transport).Clone()
	srv.Close()
	tr.DisableCompression = true
	tr.TLSClientConfig = tr.TLSClientConfig.Clone()
	tr.TLSClientConfig.MinVersion = tls.VersionTLS12
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func endpoints(us ...*url.URL) []Endpoint {
	eps := make([]Endpoint, len(us))
	for i, u := range us {
		eps[i] = Endpoint{URL: u, Weight: 1}
	}
	return eps
}

// newBalancer builds a balancer for a test. Unless the test sets them, one failure
// ejects (the tests of other mechanics are clearer with one strike; the outlier
// tests set their thresholds) and an endpoint comes back at its full weight (the
// slow start tests set it). Ejections and check periods are not jittered.
func newBalancer(t *testing.T, cfg Config) *Balancer {
	t.Helper()
	if cfg.ConsecutiveFailures == 0 {
		cfg.ConsecutiveFailures = 1
	}
	if cfg.Consecutive5xx == 0 {
		cfg.Consecutive5xx = 1
	}
	if cfg.SlowStart == 0 {
		cfg.SlowStart = -1
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.jitter = func(d time.Duration) time.Duration { return d }
	b.spread = func(d time.Duration, _ float64) time.Duration { return d }
	if tr, ok := b.transport.(*http.Transport); ok {
		t.Cleanup(tr.CloseIdleConnections)
	}
	return b
}

// checkAll checks every endpoint at once, whatever its schedule, and waits for the
// checks.
func (b *Balancer) checkAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, e := range b.eps {
		wg.Go(func() {
			err := b.check(ctx, e, b.cfg.HealthTimeout)
			if ctx.Err() == nil {
				b.checked(e, err)
			}
		})
	}
	wg.Wait()
}

// request builds a request for the virtual host, bounded by testTimeout.
func request(t *testing.T, method, path string, body io.Reader) *http.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, "http://"+virtualHost+path, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// get sends a GET through b and reads the whole body.
func get(t *testing.T, b *Balancer, path string) (*http.Response, string, error) {
	t.Helper()
	resp, err := b.RoundTrip(request(t, http.MethodGet, path, nil))
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	p, err := io.ReadAll(resp.Body)
	return resp, string(p), err
}

// mustGet is get that expects a 200.
func mustGet(t *testing.T, b *Balancer, path string) string {
	t.Helper()
	resp, body, err := get(t, b, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %s", path, resp.Status)
	}
	return body
}

// eventually polls cond until it holds or testTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func statusOf(b *Balancer, u *url.URL) EndpointStatus {
	for _, s := range b.Status() {
		if s.URL == u.String() {
			return s
		}
	}
	return EndpointStatus{}
}

// metric returns the value of the sample of name whose labels include want; a sample
// never created counts as 0.
func metric(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := make(map[string]string)
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func contains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not contain %q", what, s, sub)
		}
	}
}
