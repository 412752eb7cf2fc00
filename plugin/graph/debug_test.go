package graph

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/status"
	"github.com/hopless/hopless/plugin/transfer"
)

// statusRT is a RoundTripper that reports endpoint status as the balancer does.
type statusRT struct{ st []balance.EndpointStatus }

func (statusRT) RoundTrip(*http.Request) (*http.Response, error) { return nil, errors.New("unused") }
func (s statusRT) Status() []balance.EndpointStatus              { return s.st }

// initDebug runs the wrapped pprof InitFn after a hopless plugin that returned
// (instance, err), and returns its handler.
func initDebug(t *testing.T, instance any, herr error) http.Handler {
	t.Helper()
	ctx := context.Background()
	set := pluginSet(t, ctx, instance, herr)
	pprof := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "pprof "+r.URL.Path) })
	r := wrapDebug(plugin.Registration{Type: plugins.HTTPHandler, ID: PprofID,
		InitFn: func(*plugin.InitContext) (any, error) { return &http.Server{Handler: pprof}, nil }})
	v, err := r.InitFn(plugin.NewContext(ctx, set, nil))
	if err != nil {
		t.Fatal(err)
	}
	return v.(*http.Server).Handler
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestDebugStatus(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	eps := []balance.EndpointStatus{
		{URL: "https://10.0.0.1:5001", Weight: 2, State: "up", Healthy: true, Since: since, Share: 0.75,
			HeadersP95: map[string]time.Duration{"manifest": 12 * time.Millisecond, "blob": 1500 * time.Microsecond},
			Throughput: 1 << 20, Outstanding: 3},
		{URL: "https://10.0.0.2:5001", Weight: 1, Local: true, State: "ejected", Reason: "3 consecutive failures",
			Since: since, RetryAt: since.Add(2 * time.Second), LastError: errors.New("connection refused"), Share: 0.25},
	}
	hosts, err := transfer.NewHosts(context.Background(), transfer.HostsConfig{
		Load:  transfer.Static(&conf.Node{Registries: []conf.Registry{{Host: "registry.invalid:5001", Fallback: true}}}),
		NewRT: func(conf.Registry) (http.RoundTripper, error) { return statusRT{eps}, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	in := &Instance{Hosts: hosts, Settings: config.Settings{CRILocalPull: config.CRILocalPullWarn}}
	in.setCRICheck(status.CRICheck{Checked: true, Mode: config.CRILocalPullWarn, Settings: []string{"discard_unpacked_layers"}})
	h := initDebug(t, in, nil)

	if code, body := get(t, h, "/debug/pprof/"); code != 200 || body != "pprof /debug/pprof/" {
		t.Errorf("GET /debug/pprof/: %d %q, want the original handler", code, body)
	}
	code, body := get(t, h, status.Path)
	if code != 200 {
		t.Fatalf("GET %s: %d %s", status.Path, code, body)
	}
	var r status.Report
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if !r.Configured || r.Error != "" || len(r.Hosts) != 1 || r.Hosts[0].Host != "registry.invalid:5001" || !r.Hosts[0].Fallback {
		t.Fatalf("report %+v", r)
	}
	if r.CRILocalPull.Mode != "warn" || len(r.CRILocalPull.Settings) != 1 || r.Reload.Result != "" {
		t.Errorf("CRI check %+v, reload %+v", r.CRILocalPull, r.Reload)
	}
	got := r.Hosts[0].Endpoints
	if len(got) != 2 {
		t.Fatalf("endpoints %+v", got)
	}
	up, out := got[0], got[1]
	if up.State != "up" || !up.Healthy || up.Weight != 2 || up.Share != 0.75 || up.Outstanding != 3 ||
		up.HeadersP95Ms["manifest"] != 12 || up.HeadersP95Ms["blob"] != 1.5 || up.ThroughputBps != 1<<20 || !up.Since.Equal(since) {
		t.Errorf("up endpoint %+v", up)
	}
	if out.State != "ejected" || out.Healthy || !out.Local || out.Reason != "3 consecutive failures" ||
		out.LastError != "connection refused" || !out.RetryAt.Equal(since.Add(2*time.Second)) {
		t.Errorf("ejected endpoint %+v", out)
	}
}

func TestDebugStatusWithoutHopless(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		err        error
		configured bool
		msg        string
	}{
		{"not configured", plugin.ErrSkipPlugin, false, ""},
		{"failed", errors.New("registry[0].host: bad"), true, "registry[0].host: bad"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, body := get(t, initDebug(t, nil, tc.err), status.Path)
			var r status.Report
			if err := json.Unmarshal([]byte(body), &r); err != nil || code != 200 {
				t.Fatalf("%d %q: %v", code, body, err)
			}
			if r.Configured != tc.configured || r.Error != tc.msg || r.Hosts == nil {
				t.Errorf("report %+v, want configured %v, error %q, hosts []", r, tc.configured, tc.msg)
			}
		})
	}
}
