package hostsync

import (
	"bytes"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/nri/hosts"
	"github.com/hopless/hopless/plugin/balance"
)

const host = "registry.example:5001"

func endpoints(weights ...int) []conf.Endpoint {
	var eps []conf.Endpoint
	for i, w := range weights {
		eps = append(eps, conf.Endpoint{URL: fmt.Sprintf("https://127.0.1.%d:5001", i+1), Weight: w})
	}
	return eps
}

func TestOrder(t *testing.T) {
	t.Parallel()
	eps := endpoints(3, 1, 1)
	all := []bool{true, true, true}
	for _, tc := range []struct {
		name    string
		healthy []bool
	}{
		{"all healthy", all},
		{"the first choice down", nil}, // filled below per node
		{"all down", []bool{false, false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for n := range 200 {
				node := fmt.Sprintf("node-%d", n)
				base := Order(node, eps, all)
				healthy := tc.healthy
				if healthy == nil {
					healthy = []bool{true, true, true}
					for i, e := range eps {
						if e.URL == base[0].URL {
							healthy[i] = false
						}
					}
				}
				got := Order(node, eps, healthy)
				if len(got) != len(eps) {
					t.Fatalf("%s: %d endpoints, want all %d kept", node, len(got), len(eps))
				}
				// Healthy first, each group in the node's own order.
				var want []conf.Endpoint
				for _, pass := range []bool{true, false} {
					for _, e := range base {
						for i := range eps {
							if eps[i].URL == e.URL && healthy[i] == pass {
								want = append(want, e)
							}
						}
					}
				}
				for i := range want {
					if got[i].URL != want[i].URL {
						t.Fatalf("%s: order %v, want %v", node, got, want)
					}
				}
			}
		})
	}
}

// TestOrderFollowsWeights: over 10,000 node names, first choices follow weights
// 3:1:1 within 1.5 points.
func TestOrderFollowsWeights(t *testing.T) {
	t.Parallel()
	eps := endpoints(3, 1, 1)
	all := []bool{true, true, true}
	first := map[string]int{}
	const nodes = 10000
	for n := range nodes {
		first[Order(fmt.Sprintf("node-%d", n), eps, all)[0].URL]++
	}
	for i, want := range []float64{60, 20, 20} {
		got := 100 * float64(first[eps[i].URL]) / nodes
		if got < want-1.5 || got > want+1.5 {
			t.Errorf("%s is first on %.2f%% of nodes, want %.0f%% ± 1.5", eps[i].URL, got, want)
		}
	}
}

// health is a registry's masters' state as the test sets it.
type health struct {
	mu      sync.Mutex
	healthy []bool
}

func (h *health) set(healthy ...bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.healthy = healthy
}

func (h *health) Status() []balance.EndpointStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]balance.EndpointStatus, len(h.healthy))
	for i, ok := range h.healthy {
		out[i] = balance.EndpointStatus{Healthy: ok}
		if !ok {
			out[i].Reason = "health check failed: connection refused"
		}
	}
	return out
}

func (h *health) Close() error { return nil }

// countingWriter counts the writes that reach a real Manager.
type countingWriter struct {
	m      *hosts.Manager
	writes int
	fail   error
}

func (w *countingWriter) Write(host string, content []byte) (bool, error) {
	if w.fail != nil {
		return false, w.fail
	}
	wrote, err := w.m.Write(host, content)
	if wrote {
		w.writes++
	}
	return wrote, err
}

func newSyncer(t *testing.T, reg conf.Registry, h *health) (*Syncer, *countingWriter, string) {
	t.Helper()
	cfgPath := t.TempDir()
	m, err := hosts.Open(cfgPath, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := &countingWriter{m: m}
	s, err := New(Config{Node: "node-7", Registries: []conf.Registry{reg}, Writer: w,
		Health: func(conf.Registry) (Health, error) { return h, nil }})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range s.cfg.Registries {
		hh, _ := s.cfg.Health(r)
		s.state[r.Host] = &hostState{reg: r, health: hh}
	}
	return s, w, filepath.Join(cfgPath, host, hosts.FileName)
}

// mirrors returns the [host."…"] URLs of a hosts.toml, in file order.
func mirrors(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, `[host."`); ok && !strings.Contains(rest, "].") {
			out = append(out, rest[:strings.Index(rest, `"`)])
		}
	}
	return out
}

func TestSyncerWritesOnChange(t *testing.T) {
	t.Parallel()
	reg := conf.Registry{Host: host, Endpoints: endpoints(1, 1, 1), Timeouts: conf.Timeouts{Dial: conf.Duration{Duration: time.Second}}}
	h := &health{}
	h.set(true, true, true)
	s, w, path := newSyncer(t, reg, h)

	s.SyncOnce()
	initial := mirrors(t, path)
	if len(initial) != 3 || w.writes != 1 {
		t.Fatalf("first sync: %d writes, mirrors %v; want one write of 3", w.writes, initial)
	}
	s.SyncOnce()
	if w.writes != 1 {
		t.Fatalf("an unchanged order was written again: %d writes", w.writes)
	}

	// The node's first choice fails: it moves to the end, the rest keep their order.
	down := make([]bool, 3)
	for i, e := range reg.Endpoints {
		down[i] = e.URL != initial[0]
	}
	h.set(down...)
	s.SyncOnce()
	got := mirrors(t, path)
	want := append(append([]string{}, initial[1:]...), initial[0])
	if strings.Join(got, " ") != strings.Join(want, " ") || w.writes != 2 {
		t.Fatalf("after %s failed: mirrors %v (%d writes), want %v", initial[0], got, w.writes, want)
	}

	// It comes back when healthy.
	h.set(true, true, true)
	s.SyncOnce()
	if got := mirrors(t, path); strings.Join(got, " ") != strings.Join(initial, " ") || w.writes != 3 {
		t.Fatalf("after recovery: mirrors %v (%d writes), want %v", got, w.writes, initial)
	}
}

func TestSyncerWriteFailureKeepsTrying(t *testing.T) {
	t.Parallel()
	reg := conf.Registry{Host: host, Endpoints: endpoints(1, 1), Timeouts: conf.Timeouts{Dial: conf.Duration{Duration: time.Second}}}
	h := &health{}
	h.set(true, true)
	s, w, path := newSyncer(t, reg, h)
	var logs bytes.Buffer
	s.log = newTextLogger(&logs)
	w.fail = fmt.Errorf("%s: %w", path, hosts.ErrForeign)
	s.SyncOnce()
	s.SyncOnce()
	if n := strings.Count(logs.String(), "writing hosts.toml failed"); n != 1 {
		t.Errorf("the same failure was logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), path) {
		t.Errorf("the log does not name %s:\n%s", path, logs.String())
	}
	w.fail = nil
	s.SyncOnce()
	if got := mirrors(t, path); len(got) != 2 {
		t.Errorf("after the failure cleared: mirrors %v, want both masters", got)
	}
}

// TestBalancedHealth runs the real checks of plugin/balance against two TLS
// masters: one that serves, one that answers its own 503; the failing one goes last.
func TestBalancedHealth(t *testing.T) {
	t.Parallel()
	ok := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer ok.Close()
	bad := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	var pemBuf bytes.Buffer
	for _, srv := range []*httptest.Server{ok, bad} {
		pemBuf.Write(certPEM(srv))
	}
	if err := os.WriteFile(ca, pemBuf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := conf.DecodeNode("node.toml", fmt.Sprintf(`[[registry]]
host = %q
[registry.tls]
ca = %q
[registry.timeouts]
health_interval = "100ms"
health_timeout = "100ms"
[[registry.endpoint]]
url = %q
[[registry.endpoint]]
url = %q
`, host, ca, bad.URL, ok.URL), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h, err := Balanced(balance.NewMetrics(nil))(n.Registries[0])
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := h.Status()
		if !st[0].Healthy && st[1].Healthy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %+v, want the 503 master unhealthy and the other healthy", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	order := Order("node-1", n.Registries[0].Endpoints, []bool{false, true})
	if order[0].URL != ok.URL {
		t.Errorf("order %v, want the healthy master first", order)
	}
}

func newTextLogger(w *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}

// certPEM is srv's certificate, which is its own CA.
func certPEM(srv *httptest.Server) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}
