package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"

	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/crilocal"
)

// criDefault is CRI's default images config as JSON, from the real registration: the
// JSON tags that localPullTriggers reads are containerd's own.
func criDefault(t *testing.T) map[string]any {
	t.Helper()
	i := slices.IndexFunc(registry.Graph(nil), func(r plugin.Registration) bool {
		return r.Type == plugins.CRIServicePlugin && r.ID == CRIImagesID
	})
	if i < 0 {
		t.Fatal("CRI's images plugin is not registered")
	}
	b, err := json.Marshal(registry.Graph(nil)[i].Config)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// criJSON is CRI's default images config with the changes of set applied.
func criJSON(t *testing.T, set func(m map[string]any)) []byte {
	t.Helper()
	m := criDefault(t)
	if set != nil {
		set(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func registryKey(key string, v any) func(map[string]any) {
	return func(m map[string]any) {
		r, _ := m["registry"].(map[string]any)
		if r == nil {
			r = map[string]any{}
			m["registry"] = r
		}
		r[key] = v
	}
}

func TestLocalPullTriggers(t *testing.T) {
	t.Parallel()
	set := func(key string, v any) func(map[string]any) {
		return func(m map[string]any) { m[key] = v }
	}
	for _, tc := range []struct {
		name string
		goos string
		set  func(map[string]any)
		want []string // "setting = value"
	}{
		{name: "default", goos: "linux"},
		{name: "use_local_image_pull", goos: "linux", set: set("useLocalImagePull", true),
			want: []string{"use_local_image_pull = true"}},
		{name: "snapshot annotations on linux", goos: "linux", set: set("disableSnapshotAnnotations", false),
			want: []string{"disable_snapshot_annotations = false"}},
		{name: "snapshot annotations disabled on windows", goos: "windows", set: set("disableSnapshotAnnotations", true),
			want: []string{"disable_snapshot_annotations = true"}},
		{name: "snapshot annotations enabled on windows", goos: "windows", set: set("disableSnapshotAnnotations", false)},
		{name: "discard_unpacked_layers", goos: "linux", set: set("discardUnpackedLayers", true),
			want: []string{"discard_unpacked_layers = true"}},
		{name: "mirrors", goos: "linux", set: registryKey("mirrors", map[string]any{"docker.io": map[string]any{"endpoint": []string{"https://m"}}}),
			want: []string{`registry.mirrors = {"docker.io"}`}},
		{name: "configs", goos: "linux", set: registryKey("configs", map[string]any{"b.example": map[string]any{}, "a.example": map[string]any{}}),
			want: []string{`registry.configs = {"a.example", "b.example"}`}},
		{name: "auths", goos: "linux", set: registryKey("auths", map[string]any{"https://a.example": map[string]any{"username": "u"}}),
			want: []string{`registry.auths = {"https://a.example"}`}},
		{name: "empty mirrors", goos: "linux", set: registryKey("mirrors", map[string]any{})},
		{name: "config_path alone", goos: "linux", set: registryKey("configPath", "/etc/containerd/certs.d")},
		{name: "max_concurrent_downloads", goos: "linux", set: set("maxConcurrentDownloads", 5),
			want: []string{"max_concurrent_downloads = 5 (not 3)"}},
		{name: "max_concurrent_downloads zero", goos: "linux", set: set("maxConcurrentDownloads", 0),
			want: []string{"max_concurrent_downloads = 0 (not 3)"}},
		{name: "image_pull_with_sync_fs", goos: "linux", set: set("imagePullWithSyncFs", true),
			want: []string{"image_pull_with_sync_fs = true"}},
		{name: "several, in order", goos: "linux", set: func(m map[string]any) {
			m["imagePullWithSyncFs"] = true
			m["discardUnpackedLayers"] = true
			m["useLocalImagePull"] = true
		}, want: []string{"use_local_image_pull = true", "discard_unpacked_layers = true", "image_pull_with_sync_fs = true"}},
		{name: "fields missing", goos: "linux", set: func(m map[string]any) { clear(m) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := localPullTriggers(criJSON(t, tc.set), tc.goos)
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, tr := range got {
				s = append(s, tr.String())
			}
			if !slices.Equal(s, tc.want) {
				t.Errorf("triggers %q, want %q", s, tc.want)
			}
		})
	}
	if _, err := localPullTriggers([]byte("[1]"), "linux"); err == nil {
		t.Error("no error for JSON that is no object")
	}
}

// criInit is what initCRI saw: the result, whether CRI's own InitFn ran, and what was
// logged.
type criInit struct {
	v    any
	err  error
	ran  bool
	logs string
}

// initCRI runs the wrapped CRI images InitFn with CRI config cfg after a hopless
// plugin that returned (instance, err).
func initCRI(t *testing.T, m *metrics, cfg []byte, instance any, herr error) criInit {
	t.Helper()
	var logs bytes.Buffer
	l := logrus.New()
	l.Out = &logs
	l.Formatter = &logrus.JSONFormatter{}
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(l))
	set := pluginSet(t, ctx, instance, herr)
	ran := false
	r := wrapCRIImages(plugin.Registration{Type: plugins.CRIServicePlugin, ID: CRIImagesID,
		InitFn: func(*plugin.InitContext) (any, error) { ran = true; return "cri images", nil }}, m)
	ic := plugin.NewContext(ctx, set, nil)
	ic.Config = json.RawMessage(cfg)
	v, err := r.InitFn(ic)
	return criInit{v: v, err: err, ran: ran, logs: logs.String()}
}

func TestCRICheck(t *testing.T) {
	t.Parallel()
	discard := criJSON(t, func(m map[string]any) {
		m["discardUnpackedLayers"] = true
		registryKey("mirrors", map[string]any{"docker.io": map[string]any{}})(m)
	})
	gauge := func(m *metrics, setting string) float64 {
		var d dto.Metric
		if err := m.cri.WithLabelValues(setting).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetGauge().GetValue()
	}

	t.Run("refuse", func(t *testing.T) {
		t.Parallel()
		m := newMetrics(prometheus.NewRegistry())
		in := newInstance(t, config.CRILocalPullRefuse)
		got := initCRI(t, m, discard, in, nil)
		v, err, ran := got.v, got.err, got.ran
		if v != nil || ran || !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("got %v, %v (CRI's InitFn ran: %v); want a failed precondition before CRI's InitFn", v, err, ran)
		}
		for _, want := range []string{"discard_unpacked_layers = true", `registry.mirrors = {"docker.io"}`, "bypasses hopless", `cri_local_pull = "warn"`, config.Section} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if c := in.criCheck(); !c.Checked || !c.Refused || !slices.Equal(c.Settings, []string{"discard_unpacked_layers", "registry.mirrors"}) {
			t.Errorf("check %+v", c)
		}
		if gauge(m, "discard_unpacked_layers") != 1 || gauge(m, "registry.mirrors") != 1 || gauge(m, "use_local_image_pull") != 0 {
			t.Errorf("gauges: discard %v, mirrors %v, use_local %v; want 1, 1, 0", gauge(m, "discard_unpacked_layers"),
				gauge(m, "registry.mirrors"), gauge(m, "use_local_image_pull"))
		}
	})
	t.Run("warn", func(t *testing.T) {
		t.Parallel()
		m := newMetrics(prometheus.NewRegistry())
		in := newInstance(t, config.CRILocalPullWarn)
		got := initCRI(t, m, discard, in, nil)
		v, err, ran, logs := got.v, got.err, got.ran, got.logs
		if v != "cri images" || err != nil || !ran {
			t.Fatalf("got %v, %v (CRI's InitFn ran: %v); want CRI's own result", v, err, ran)
		}
		var lines []string
		for l := range strings.Lines(logs) {
			lines = append(lines, l)
		}
		if len(lines) != 1 || !strings.Contains(lines[0], `"level":"error"`) ||
			!strings.Contains(lines[0], "discard_unpacked_layers") || !strings.Contains(lines[0], "registry.mirrors") {
			t.Errorf("logged %q, want one error line naming both settings", lines)
		}
		if c := in.criCheck(); !c.Checked || c.Refused || len(c.Settings) != 2 {
			t.Errorf("check %+v", c)
		}
		if gauge(m, "discard_unpacked_layers") != 1 {
			t.Error("gauge not set")
		}
	})
	t.Run("clean config", func(t *testing.T) {
		t.Parallel()
		m := newMetrics(prometheus.NewRegistry())
		in := newInstance(t, config.CRILocalPullRefuse)
		got := initCRI(t, m, criJSON(t, nil), in, nil)
		v, err, ran, logs := got.v, got.err, got.ran, got.logs
		if v != "cri images" || err != nil || !ran || logs != "" {
			t.Fatalf("got %v, %v (ran %v), logged %q; want CRI's own result, silently", v, err, ran, logs)
		}
		if c := in.criCheck(); !c.Checked || len(c.Settings) != 0 {
			t.Errorf("check %+v", c)
		}
		for _, s := range crilocal.Settings() {
			if gauge(m, s) != 0 {
				t.Errorf("gauge %s = %v, want 0", s, gauge(m, s))
			}
		}
	})
	t.Run("hopless not configured", func(t *testing.T) {
		t.Parallel()
		m := newMetrics(prometheus.NewRegistry())
		got := initCRI(t, m, discard, nil, plugin.ErrSkipPlugin)
		v, err, ran := got.v, got.err, got.ran
		if v != "cri images" || err != nil || !ran {
			t.Fatalf("got %v, %v (ran %v); want CRI's own result", v, err, ran)
		}
		ch := make(chan prometheus.Metric, 16)
		m.cri.Collect(ch)
		if n := len(ch); n != 0 {
			t.Errorf("%d gauges set without hopless, want none", n)
		}
	})
}
