package cri

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/hopless/hopless/plugin/config"
)

// fixture is one containerd's answers to Plugins and Server, as testdata/README.md
// says how they were captured.
type fixture struct {
	plugins *introspection.PluginsResponse
	server  *introspection.ServerResponse
}

func loadFixture(t *testing.T, name string) fixture {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct{ Plugins, Server json.RawMessage }
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	f := fixture{new(introspection.PluginsResponse), new(introspection.ServerResponse)}
	if err := protojson.Unmarshal(raw.Plugins, f.plugins); err != nil {
		t.Fatalf("%s: plugins: %v", name, err)
	}
	if err := protojson.Unmarshal(raw.Server, f.server); err != nil {
		t.Fatalf("%s: server: %v", name, err)
	}
	return f
}

func TestHoplessPluginMatchesPluginConfig(t *testing.T) {
	if HoplessType != config.Type || HoplessID != config.ID {
		t.Fatalf("HoplessType.HoplessID = %s.%s, plugin/config registers %s.%s", HoplessType, HoplessID, config.Type, config.ID)
	}
}

func TestNewReportFixtures(t *testing.T) {
	const defaultPath = "/etc/containerd/certs.d:/etc/docker/certs.d"
	tests := []struct {
		fixture string
		want    Report
	}{
		{"stock-default.json", Report{
			Images:     Plugin{Listed: true, Exports: map[string]string{exportConfigPath: defaultPath, exportDiscard: "false"}},
			ConfigPath: defaultPath, ConfigPathReported: true, PullMode: PullUnknown, NRI: NRIUnknown,
		}},
		{"stock-localpull.json", Report{
			Images:     Plugin{Listed: true, Exports: map[string]string{exportConfigPath: "", exportDiscard: "true"}},
			ConfigPath: "", ConfigPathReported: true, PullMode: PullLocal,
			LocalPull: []string{"discard_unpacked_layers = true", "registry.mirrors", "registry.configs"},
			NRI:       NRIDisabled,
		}},
		{"hopless.json", Report{
			Images:     Plugin{Listed: true, Exports: map[string]string{exportConfigPath: "/etc/containerd/certs.d", exportDiscard: "false"}},
			ConfigPath: "/etc/containerd/certs.d", ConfigPathReported: true, PullMode: PullUnknown, NRI: NRIUnknown,
			HoplessBuild: true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			f := loadFixture(t, tt.fixture)
			got := newReport("/run/c.sock", f.plugins.GetPlugins(), f.server.GetDeprecations())
			tt.want.Socket = "/run/c.sock"
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("newReport =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestNewReportPluginStates(t *testing.T) {
	status := func(msg string) *introspection.Plugin {
		p := &introspection.Plugin{}
		if msg != "" {
			p.InitErr = &rpcstatus.Status{Message: msg}
		}
		return p
	}
	tests := []struct {
		name    string
		plugins map[[2]string]string // type, ID -> init error
		check   func(Report) bool
	}{
		{"no plugins", nil, func(r Report) bool {
			return !r.Images.Listed && !r.ConfigPathReported && r.NRI == NRIDisabled && !r.HoplessBuild && r.PullMode == PullUnknown
		}},
		{"images failed", map[[2]string]string{{imagesType, imagesID}: "snapshotter \"overlayfs\" not found"}, func(r Report) bool {
			return r.Images.Listed && r.Images.InitErr != "" && !r.Images.Loaded() && !r.ConfigPathReported
		}},
		{"images of another type is not CRI's", map[[2]string]string{{"io.containerd.grpc.v1", imagesID}: ""}, func(r Report) bool {
			return !r.Images.Listed
		}},
		{"nri failed", map[[2]string]string{{nriType, nriID}: "failed to initialize NRI interface"}, func(r Report) bool {
			return r.NRI == NRIFailed && r.NRIError == "failed to initialize NRI interface"
		}},
		{"hopless skipped is still our build", map[[2]string]string{{HoplessType, HoplessID}: "skip plugin"}, func(r Report) bool {
			return r.HoplessBuild
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ps []*introspection.Plugin
			for k, msg := range tt.plugins {
				p := status(msg)
				p.Type, p.ID = k[0], k[1]
				ps = append(ps, p)
			}
			if r := newReport("/run/c.sock", ps, nil); !tt.check(r) {
				t.Fatalf("newReport = %+v", r)
			}
		})
	}
}

func TestNewReportDeprecations(t *testing.T) {
	images := &introspection.Plugin{Type: imagesType, ID: imagesID, Exports: map[string]string{exportConfigPath: "/d"}}
	tests := []struct {
		ids  []string
		want []string
	}{
		{nil, nil},
		{[]string{"io.containerd.deprecation/cgroup-v1"}, nil},
		{[]string{"io.containerd.deprecation/cri-registry-auths"}, []string{"registry.auths"}},
		{[]string{"io.containerd.deprecation/cri-registry-configs", "io.containerd.deprecation/cri-registry-mirrors"},
			[]string{"registry.mirrors", "registry.configs"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.ids, ","), func(t *testing.T) {
			var ws []*introspection.DeprecationWarning
			for _, id := range tt.ids {
				ws = append(ws, &introspection.DeprecationWarning{ID: id})
			}
			r := newReport("/run/c.sock", []*introspection.Plugin{images}, ws)
			if !reflect.DeepEqual(r.LocalPull, tt.want) || (r.PullMode == PullLocal) != (tt.want != nil) {
				t.Fatalf("LocalPull = %v, PullMode = %s; want %v", r.LocalPull, r.PullMode, tt.want)
			}
		})
	}
}

func TestProblems(t *testing.T) {
	const dir = "/etc/containerd/certs.d"
	loaded := Plugin{Listed: true}
	rep := func(path string, mode PullMode) Report {
		return Report{Socket: "/run/c.sock", Images: loaded, ConfigPath: path, ConfigPathReported: true, PullMode: mode}
	}
	tests := []struct {
		name string
		r    Report
		dir  string
		// want is the Setting of the one problem, or "" for none; why is part of
		// its Why.
		want, why string
	}{
		{"the dir", rep(dir, PullUnknown), dir, "", ""},
		{"the dir, cleaned", rep(dir+"/", PullUnknown), dir + "/./", "", ""},
		{"the dir, local pull", rep(dir, PullLocal), dir, "", ""},
		{"another dir", rep("/etc/docker/certs.d", PullUnknown), dir, configPathKey, "not from " + dir},
		{"containerd's default list", rep(dir+":/etc/docker/certs.d", PullUnknown), dir, configPathKey, "2 directories"},
		{"a list, local pull, dir first", rep(dir+":/etc/docker/certs.d", PullLocal), dir, "", ""},
		{"a list, local pull, dir second", rep("/etc/docker/certs.d:"+dir, PullLocal), dir, configPathKey, "is not the first"},
		{"empty", rep("", PullLocal), dir, configPathKey, "registry.mirrors"},
		{"not reported", Report{Images: loaded}, dir, configPathKey, "does not export"},
		{"images not loaded", Report{Images: Plugin{Listed: true, InitErr: "boom"}}, dir, imagesSection, "boom"},
		{"no images plugin", Report{}, dir, imagesSection, "disabled_plugins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.r.Problems(tt.dir)
			if tt.want == "" {
				if len(got) != 0 {
					t.Fatalf("Problems = %v; want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("Problems = %v; want one", got)
			}
			p, ok := errors.AsType[*Problem](got[0])
			if !ok || p.Setting != tt.want || !strings.Contains(p.Why, tt.why) || p.Fix == "" {
				t.Fatalf("Problems = %#v; want setting %s, why with %q", got[0], tt.want, tt.why)
			}
		})
	}
}

func TestProblemsFixNamesTheSetting(t *testing.T) {
	r := Report{Images: Plugin{Listed: true}, ConfigPath: "/etc/containerd/certs.d:/etc/docker/certs.d", ConfigPathReported: true, PullMode: PullUnknown}
	got := r.Problems("/etc/containerd/certs.d")
	if len(got) != 1 {
		t.Fatalf("Problems = %v", got)
	}
	const want = `set plugins.'io.containerd.cri.v1.images'.registry.config_path = "/etc/containerd/certs.d"`
	if msg := got[0].Error(); !strings.Contains(msg, want) || !strings.Contains(msg, `"/etc/containerd/certs.d:/etc/docker/certs.d"`) {
		t.Fatalf("Problems = %q; want the value and %q", msg, want)
	}
}
