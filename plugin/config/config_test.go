package config

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/errdefs"
)

// load decodes the hopless section of a containerd config.toml the way containerd's
// server does: the whole file, then the plugin's section into its registered config.
func load(t *testing.T, text string) *Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var sc srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &sc); err != nil {
		t.Fatalf("containerd cannot load the config: %v", err)
	}
	v, err := sc.Decode(context.Background(), Type+"."+ID, DefaultConfig())
	if err != nil {
		t.Fatalf("containerd cannot decode the section: %v", err)
	}
	return v.(*Config)
}

func TestNode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("not parsed here"), 0o644); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "creds")
	if err := os.WriteFile(creds, []byte("u:p\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := load(t, `version = 4
[plugins.'io.containerd.hopless.v1.hopless']
  [[plugins.'io.containerd.hopless.v1.hopless'.registry]]
    host = "registry.d8-system.svc:5001"
    fallback = true
    endpoint = [{url = "https://10.0.0.1:5001", weight = 3}, {url = "https://10.0.0.2:5001"}]
    [plugins.'io.containerd.hopless.v1.hopless'.registry.tls]
      ca = "`+ca+`"
    [plugins.'io.containerd.hopless.v1.hopless'.registry.auth]
      credentials_file = "`+creds+`"
    [plugins.'io.containerd.hopless.v1.hopless'.registry.timeouts]
      dial = "250ms"
  [[plugins.'io.containerd.hopless.v1.hopless'.registry]]
    host = "other.example"
    [[plugins.'io.containerd.hopless.v1.hopless'.registry.endpoint]]
      url = "https://10.0.0.3"
      local = true
`)
	if !c.Configured() {
		t.Fatal("Configured() = false with two registries")
	}
	n, err := c.Node()
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Registries) != 2 {
		t.Fatalf("got %d registries, want 2", len(n.Registries))
	}
	r := n.Registries[0]
	if r.Host != "registry.d8-system.svc:5001" || !r.Fallback || r.TLS.CA != ca || r.Auth.CredentialsFile != creds {
		t.Errorf("registry[0] = %+v", r)
	}
	if len(r.Endpoints) != 2 || r.Endpoints[0].Weight != 3 || r.Endpoints[1].Weight != 1 {
		t.Errorf("registry[0] endpoints = %+v, want weights 3 and the default 1", r.Endpoints)
	}
	if r.Timeouts.Dial.Duration != 250*time.Millisecond || r.Timeouts.ResponseHeader.Duration <= 0 {
		t.Errorf("registry[0] timeouts = %+v, want dial 250ms and defaults", r.Timeouts)
	}
	if e := n.Registries[1].Endpoints; len(e) != 1 || !e[0].Local || e[0].URL != "https://10.0.0.3" {
		t.Errorf("registry[1] endpoints = %+v", e)
	}
}

func TestNodeErrors(t *testing.T) {
	t.Parallel()
	const head = "version = 4\n[[plugins.'io.containerd.hopless.v1.hopless'.registry]]\n"
	for _, tc := range []struct {
		name  string
		text  string
		field string
		msg   string
	}{
		{"zero weight", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1", weight = 0}]`, "registry[0].endpoint[0].weight", "must be > 0, got 0"},
		{"unknown key", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1", wieght = 2}]`, "registry[0].endpoint[0].wieght", "unknown key"},
		{"relative ca", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
tls = {ca = "ca.pem"}`, "registry[0].tls.ca", `must be an absolute path, got "ca.pem"`},
		{"relative credentials", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
auth = {credentials_file = "creds"}`, "registry[0].auth.credentials_file", "must be an absolute path"},
		{"missing ca", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
tls = {ca = "/nonexistent/ca.pem"}`, "registry[0].tls.ca", "not found"},
		{"plain http", `host = "h:5001"
endpoint = [{url = "http://10.0.0.1"}]`, "registry[0].endpoint[0].url", "tls.insecure"},
		{"bad duration", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
timeouts = {dial = "1 second"}`, "registry[0].timeouts.dial", "bad duration"},
		{"wrong type", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
fallback = "yes"`, "registry[0].fallback", "must be true or false"},
		{"no endpoint", `host = "h:5001"`, "registry[0].endpoint", "at least one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := load(t, head+tc.text).Node()
			if err == nil {
				t.Fatal("no error")
			}
			want := Section + ": " + tc.field + ": "
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q\nwant a line starting %q containing %q", err, want, tc.msg)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %q does not wrap errdefs.ErrInvalidArgument", err)
			}
		})
	}
}

func TestNotConfigured(t *testing.T) {
	t.Parallel()
	c := load(t, "version = 4\n")
	if c.Configured() {
		t.Error("Configured() = true without a hopless section")
	}
}

func TestNodeJoinsErrors(t *testing.T) {
	t.Parallel()
	_, err := load(t, `version = 4
[[plugins.'io.containerd.hopless.v1.hopless'.registry]]
host = "h:5001"
endpoint = [{url = "https://10.0.0.1", weight = 0}]
tls = {ca = "ca.pem"}
`).Node()
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, want := range []string{
		Section + `: registry[0].tls.ca: must be an absolute path, got "ca.pem"`,
		Section + ": registry[0].endpoint[0].weight: must be > 0, got 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error %q\nlacks %q", got, want)
		}
	}
	if strings.Contains(got, "not found") {
		t.Errorf("error %q also reports the relative file as missing", got)
	}
}

func TestSettings(t *testing.T) {
	t.Parallel()
	const head = "version = 4\n[plugins.'io.containerd.hopless.v1.hopless']\n"
	for _, tc := range []struct {
		name  string
		text  string
		want  Settings
		field string // empty: no error
		msg   string
	}{
		{name: "defaults", text: "",
			want: Settings{ReloadInterval: DefaultReloadInterval, CRILocalPull: CRILocalPullRefuse}},
		{name: "all set", text: `node_config = "/etc/hopless/node.toml"
reload_interval = "500ms"
cri_local_pull = "warn"`,
			want: Settings{NodeConfig: "/etc/hopless/node.toml", ReloadInterval: 500 * time.Millisecond, CRILocalPull: CRILocalPullWarn}},
		{name: "minimum interval", text: `reload_interval = "100ms"`,
			want: Settings{ReloadInterval: MinReloadInterval, CRILocalPull: CRILocalPullRefuse}},
		{name: "bad cri_local_pull", text: `cri_local_pull = "allow"`,
			field: "cri_local_pull", msg: `must be "refuse" or "warn", got "allow"`},
		{name: "empty cri_local_pull", text: `cri_local_pull = ""`,
			field: "cri_local_pull", msg: `got ""`},
		{name: "bad duration", text: `reload_interval = "2 seconds"`,
			field: "reload_interval", msg: `bad duration "2 seconds"`},
		{name: "interval too short", text: `reload_interval = "10ms"`,
			field: "reload_interval", msg: "must be at least 100ms, got 10ms"},
		{name: "zero interval", text: `reload_interval = "0s"`,
			field: "reload_interval", msg: "must be at least 100ms, got 0s"},
		{name: "relative node_config", text: `node_config = "node.toml"`,
			field: "node_config", msg: `must be an absolute path, got "node.toml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := load(t, head+tc.text).Settings()
			if tc.field == "" {
				if err != nil || got != tc.want {
					t.Errorf("Settings() = %+v, %v; want %+v", got, err, tc.want)
				}
				return
			}
			want := Section + ": " + tc.field + ": "
			if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v\nwant one starting %q containing %q", err, want, tc.msg)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %q does not wrap errdefs.ErrInvalidArgument", err)
			}
		})
	}
}

func TestNodeConfig(t *testing.T) {
	t.Parallel()
	writeNode := func(t *testing.T, text string) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "node.toml")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const fileHosts = `[[registry]]
host = "file.example"
endpoint = [{url = "https://10.0.0.9"}]
[[registry]]
host = "other.example"
endpoint = [{url = "https://10.0.0.8"}]
`
	const inline = `[[plugins.'io.containerd.hopless.v1.hopless'.registry]]
host = "inline.example"
endpoint = [{url = "https://10.0.0.1"}]
`
	for _, tc := range []struct {
		name   string
		inline string
		file   string // node.toml; empty: a missing file
		hosts  []string
		field  string
		msg    string
	}{
		{name: "file only", file: fileHosts, hosts: []string{"file.example", "other.example"}},
		{name: "inline and file", inline: inline, file: fileHosts, hosts: []string{"inline.example", "file.example", "other.example"}},
		{name: "host in both", inline: `[[plugins.'io.containerd.hopless.v1.hopless'.registry]]
host = "FILE.example"
endpoint = [{url = "https://10.0.0.1"}]
`, file: fileHosts, field: Section + ": node_config", msg: `host "file.example" is in registry[0] of this section and in registry[0] of `},
		{name: "invalid file", file: `[[registry]]
host = "file.example"
endpoint = [{url = "https://10.0.0.9", weight = 0}]
`, field: "node.toml: registry[0].endpoint[0].weight", msg: "must be > 0, got 0"},
		{name: "unparseable file", file: "[[registry]\n", field: "node.toml: line", msg: ""},
		{name: "missing file", field: "node.toml", msg: "config file not found"},
		{name: "errors of both", inline: `[[plugins.'io.containerd.hopless.v1.hopless'.registry]]
host = "inline.example"
endpoint = [{url = "https://10.0.0.1", weight = 0}]
`, file: "[[registry]]\nhost = 1\n", field: Section + ": registry[0].endpoint[0].weight", msg: "node.toml: registry[0].host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "node.toml")
			if tc.file != "" {
				path = writeNode(t, tc.file)
			}
			c := load(t, "version = 4\n[plugins.'io.containerd.hopless.v1.hopless']\nnode_config = \""+path+"\"\n"+tc.inline)
			if !c.Configured() {
				t.Fatal("Configured() = false with node_config")
			}
			n, err := c.Node()
			if tc.field != "" {
				if err == nil || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("error %v\nwant one naming %q containing %q", err, tc.field, tc.msg)
				}
				if !errdefs.IsInvalidArgument(err) && !errdefs.IsNotFound(err) {
					t.Errorf("error %q is neither invalid argument nor not found", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range n.Registries {
				got = append(got, r.Host)
			}
			if !slices.Equal(got, tc.hosts) {
				t.Errorf("hosts %v, want %v", got, tc.hosts)
			}
		})
	}
}
