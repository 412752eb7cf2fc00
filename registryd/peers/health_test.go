package peers

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
)

// flakyPeer is a TLS peer whose /healthz answers 200, 503, or nothing until the client
// gives up, as its mode says.
type flakyPeer struct {
	mode   atomic.Int32
	checks atomic.Int32 // health checks received
	fails  atomic.Int32 // health checks answered with a failure
}

const (
	alive int32 = iota
	dead
	frozen
)

func (f *flakyPeer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != healthPath {
		http.NotFound(w, r)
		return
	}
	f.checks.Add(1)
	switch f.mode.Load() {
	case dead:
		f.fails.Add(1)
		http.Error(w, "dead", http.StatusServiceUnavailable)
	case frozen:
		f.fails.Add(1)
		<-r.Context().Done()
		// Should the answer still reach the client, it is not a success.
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		_, _ = w.Write([]byte("ok"))
	}
}

// TestHealthTransitions steps the checks by hand: two failures mark a peer down, one
// success marks it up, and an ejection holds until a check started after it succeeds.
func TestHealthTransitions(t *testing.T) {
	t.Parallel()
	type step struct {
		mode   int32
		eject  bool // eject instead of checking
		stale  bool // report a success from a check that started before the last ejection
		wantUp bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{name: "two failures mark down, one success up", steps: []step{
			{mode: alive, wantUp: true},
			{mode: dead, wantUp: true},
			{mode: dead, wantUp: false},
			{mode: dead, wantUp: false},
			{mode: alive, wantUp: true},
		}},
		{name: "a success resets the failure count", steps: []step{
			{mode: dead, wantUp: true},
			{mode: alive, wantUp: true},
			{mode: dead, wantUp: true},
			{mode: dead, wantUp: false},
		}},
		{name: "frozen peer times out", steps: []step{
			{mode: frozen, wantUp: true},
			{mode: frozen, wantUp: false},
			{mode: alive, wantUp: true},
		}},
		{name: "ejection lasts until a later check succeeds", steps: []step{
			{eject: true, wantUp: false},
			{stale: true, wantUp: false},
			{mode: alive, wantUp: true},
		}},
		{name: "ejected peer stays down while checks fail", steps: []step{
			{eject: true, wantUp: false},
			{mode: dead, wantUp: false},
			{mode: alive, wantUp: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			peer := &flakyPeer{}
			srv, cfg := tlsPeer(t, peer)
			// The interval is also the check timeout: long enough for a loaded -race run.
			cfg.HealthInterval = conf.Duration{Duration: 500 * time.Millisecond}
			s := mustNew(t, cfg)
			for i, st := range tt.steps {
				switch {
				case st.eject:
					s.eject(Peer{URL: srv.URL}, errors.New("test"))
				case st.stale:
					s.report(srv.URL, 0, nil)
				default:
					peer.mode.Store(st.mode)
					s.checkAll(t.Context())
				}
				if got := isUp(s, srv.URL); got != st.wantUp {
					s.mu.RLock()
					m := *s.peers[srv.URL]
					s.mu.RUnlock()
					t.Fatalf("step %d (%+v): up = %v, want %v; member %+v, checks %d, fails %d", i, st, got, st.wantUp, m, peer.checks.Load(), peer.fails.Load())
				}
			}
		})
	}
}

// countingTransport counts the consecutive failed health checks as the client sees
// them, which is what Run acts on: under load a check may time out before the server
// sees it.
type countingTransport struct {
	next  http.RoundTripper
	fails atomic.Int32
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	switch {
	case r.URL.Path != healthPath:
	case err != nil || resp.StatusCode/100 != 2:
		c.fails.Add(1)
	default:
		c.fails.Store(0)
	}
	return resp, err
}

// TestRunHealth lets Run find a dead peer and its return.
func TestRunHealth(t *testing.T) {
	t.Parallel()
	peer := &flakyPeer{}
	srv, cfg := tlsPeer(t, peer)
	cfg.HealthInterval = conf.Duration{Duration: 50 * time.Millisecond}
	ct := &countingTransport{next: srv.Client().Transport}
	s := mustNew(t, cfg, WithHTTPClient(&http.Client{Transport: ct}))
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	waitFor(t, "a first check", func() bool { return peer.checks.Load() > 0 && isUp(s, srv.URL) })
	peer.mode.Store(dead)
	waitFor(t, "the dead peer to go down", func() bool { return !isUp(s, srv.URL) })
	if n := ct.fails.Load(); n < downAfter {
		t.Errorf("down after %d failed checks, want %d", n, downAfter)
	}
	peer.mode.Store(alive)
	waitFor(t, "the peer to come back", func() bool { return isUp(s, srv.URL) })
}

func TestDNSRefresh(t *testing.T) {
	t.Parallel()
	type step struct {
		addrs []string
		err   error
		want  []Peer
	}
	p := func(u string) Peer { return Peer{URL: u, Weight: 1} }
	tests := []struct {
		name  string
		self  string
		port  int
		steps []step
	}{
		{
			name: "add, keep on error, remove",
			self: "https://10.0.0.1:5001",
			steps: []step{
				{addrs: []string{"10.0.0.3", "10.0.0.1", "10.0.0.2", "10.0.0.2"}, want: []Peer{p("https://10.0.0.2:5001"), p("https://10.0.0.3:5001")}},
				{err: errors.New("no such host"), want: []Peer{p("https://10.0.0.2:5001"), p("https://10.0.0.3:5001")}},
				{addrs: []string{"10.0.0.1", "10.0.0.3"}, want: []Peer{p("https://10.0.0.3:5001")}},
				{addrs: []string{"10.0.0.1"}, want: nil},
			},
		},
		{
			name: "IPv6 and port from config",
			self: "https://[fd00::1]:5001",
			port: 6001,
			steps: []step{
				{addrs: []string{"FD00:0::2", "::ffff:10.0.0.9", "not-an-ip"}, want: []Peer{p("https://10.0.0.9:6001"), p("https://[fd00::2]:6001")}},
			},
		},
		{
			name: "scheme follows self",
			self: "http://10.0.0.1:5001",
			steps: []step{
				{addrs: []string{"10.0.0.2"}, want: []Peer{p("http://10.0.0.2:5001")}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var cur step
			s := mustNew(t, conf.Peers{
				Self:      tt.self,
				DNS:       "peers.hopless.svc",
				Port:      tt.port,
				TokenFile: writeFile(t, t.TempDir(), "token", testToken, 0o600),
				TLS:       conf.TLS{Insecure: true},
			}, WithLookup(func(_ context.Context, host string) ([]string, error) {
				if host != "peers.hopless.svc" {
					t.Errorf("lookup of %q", host)
				}
				return cur.addrs, cur.err
			}))
			if got := s.Healthy(); got != nil {
				t.Fatalf("peers before the first lookup: %+v", got)
			}
			for i, st := range tt.steps {
				cur = st
				s.refresh(t.Context())
				if got := s.Healthy(); !reflect.DeepEqual(got, st.want) {
					t.Fatalf("step %d: Healthy() = %+v, want %+v", i, got, st.want)
				}
			}
		})
	}
}

// TestRunDNS lets Run resolve, check and drop a peer found through DNS.
func TestRunDNS(t *testing.T) {
	t.Parallel()
	peer := &flakyPeer{}
	srv, cfg := tlsPeer(t, peer)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = nil
	cfg.DNS = "peers.hopless.svc"
	cfg.Self = "https://127.0.0.2:" + port
	cfg.HealthInterval = conf.Duration{Duration: 25 * time.Millisecond}
	var addrs atomic.Pointer[[]string]
	addrs.Store(&[]string{host, "127.0.0.2"})
	s := mustNew(t, cfg, WithLookup(func(context.Context, string) ([]string, error) { return *addrs.Load(), nil }))

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	waitFor(t, "the resolved peer to be checked", func() bool { return peer.checks.Load() > 0 && isUp(s, srv.URL) })
	addrs.Store(&[]string{"127.0.0.2"})
	waitFor(t, "the peer to leave", func() bool { return len(s.Healthy()) == 0 })
}
