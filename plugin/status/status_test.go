package status

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRender(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	host := Host{Host: "registry.d8-system.svc:5001", Endpoints: []Endpoint{
		{URL: "https://10.0.0.1:5001", State: "up", Healthy: true, Since: now.Add(-5 * time.Minute), Share: 0.667,
			HeadersP95Ms: map[string]float64{"manifest": 12.3, "blob": 0.42, "other": 2000}, ThroughputBps: 12.5 * (1 << 20), Outstanding: 2},
		{URL: "https://10.0.0.2:5001", State: "ejected", Reason: "3 consecutive failures", Since: now.Add(-1500 * time.Millisecond), Share: 0.333},
	}}
	for _, tc := range []struct {
		name string
		r    Report
		want string
	}{
		{"not configured", Report{}, `hopless: not configured: every pull takes containerd's own path
reload: none since containerd started
cri local pull: not checked (CRI's images plugin has not loaded)
`},
		{"failed", Report{Configured: true, Error: "registry[0].host: bad"}, `hopless: FAILED: registry[0].host: bad
reload: none since containerd started
cri local pull: not checked (CRI's images plugin has not loaded)
`},
		{"serving", Report{Configured: true, Hosts: []Host{host},
			Reload:       Reload{Time: now.Add(-3 * time.Second), Result: "ok", Files: []string{"/etc/hopless/ca.pem"}},
			CRILocalPull: CRICheck{Checked: true, Mode: "refuse", Settings: []string{}}},
			`hopless: 1 image host(s)
reload: ok 3s ago (/etc/hopless/ca.pem)
cri local pull: none

HOST                         ENDPOINT               STATE    REASON                  SINCE  P95 HEADERS                                   SHARE  THROUGHPUT  OUTSTANDING
registry.d8-system.svc:5001  https://10.0.0.1:5001  up       -                       5m0s   manifest 12ms, blob 420µs, token -, other 2s  67%    12.5 MiB/s  2
registry.d8-system.svc:5001  https://10.0.0.2:5001  ejected  3 consecutive failures  2s     -                                             33%    -           0
`},
		{"reload error, CRI refused", Report{Configured: true, Hosts: []Host{{Host: "h:5001"}},
			Reload:       Reload{Time: now.Add(-time.Minute), Result: "error", Error: "registry h:5001: tls.ca: no PEM certificate in /ca.pem\nsecond"},
			CRILocalPull: CRICheck{Checked: true, Mode: "refuse", Settings: []string{"discard_unpacked_layers"}, Refused: true}},
			`hopless: 1 image host(s)
reload: error 1m0s ago: registry h:5001: tls.ca: no PEM certificate in /ca.pem; second
cri local pull: discard_unpacked_layers: REFUSED, CRI's images plugin failed to load (cri_local_pull = "refuse")

HOST    ENDPOINT  STATE        REASON  SINCE  P95 HEADERS  SHARE  THROUGHPUT  OUTSTANDING
h:5001  -         (no status)  -       -      -            -      -           -
`},
		{"CRI warned", Report{Configured: true, CRILocalPull: CRICheck{Checked: true, Mode: "warn", Settings: []string{"registry.mirrors", "use_local_image_pull"}}},
			`hopless: 0 image host(s)
reload: none since containerd started
cri local pull: registry.mirrors, use_local_image_pull: CRI pulls past hopless (cri_local_pull = "warn")
`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var b bytes.Buffer
			if err := Render(&b, tc.r, now); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tc.want)
			}
		})
	}
}

func TestThroughput(t *testing.T) {
	t.Parallel()
	for in, want := range map[float64]string{0: "-", 512: "512 B/s", 1536: "1.5 KiB/s", 3 << 30: "3.0 GiB/s", 5 << 40: "5120.0 GiB/s"} {
		if got := throughput(in); got != want {
			t.Errorf("throughput(%v) = %q, want %q", in, got, want)
		}
	}
}

// serve serves Mux on a unix socket and returns its path.
func serve(t *testing.T, report Report) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hs") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "debug.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Mux(http.NotFoundHandler(), func() Report { return report })}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func TestCommand(t *testing.T) {
	t.Parallel()
	report := Report{Configured: true, Hosts: []Host{{Host: "h:5001", Endpoints: []Endpoint{{URL: "https://10.0.0.1", State: "up", Healthy: true}}}}}
	sock := serve(t, report)
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"table", []string{"--debug-address", sock}, []string{"HOST", "h:5001  https://10.0.0.1  up"}},
		{"unix URL", []string{"--debug-address", "unix://" + sock}, []string{"h:5001"}},
		{"json", []string{"--debug-address", sock, "--json"}, []string{`"host": "h:5001"`, `"state": "up"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			cmd := Command()
			cmd.Writer = &out
			if err := cmd.Run(context.Background(), append([]string{"hopless-status"}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output\n%s\nlacks %q", out.String(), w)
				}
			}
		})
	}
	t.Run("json round trip", func(t *testing.T) {
		t.Parallel()
		raw, err := Fetch(context.Background(), sock)
		if err != nil {
			t.Fatal(err)
		}
		var got Report
		if err := json.Unmarshal(raw, &got); err != nil || got.Hosts[0].Endpoints[0].URL != "https://10.0.0.1" {
			t.Errorf("got %+v, %v", got, err)
		}
	})
}

func TestFetchErrors(t *testing.T) {
	t.Parallel()
	plain := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		name, addr, want string
	}{
		{"no socket", plain, "is [debug] address set"},
		{"bad address", "not-an-address", "want a unix socket path or host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Fetch(context.Background(), tc.addr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("not hopless", func(t *testing.T) {
		t.Parallel()
		dir, err := os.MkdirTemp("", "hs")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		sock := filepath.Join(dir, "debug.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.NotFoundHandler()}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		if _, err := Fetch(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "not a containerd with hopless") {
			t.Errorf("error %v", err)
		}
	})
}
