package conf

import (
	"reflect"
	"testing"
	"time"
)

// installHead is a valid install.toml: one registry with one endpoint.
const installHead = `
[[registry]]
host = "registry.hopless-system.svc:5001"
[[registry.endpoint]]
url = "https://10.0.0.1:5001"
`

func TestLoadInstallDefaults(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, "install.toml", installHead+`
[[file]]
source = "ca.pem"
dest = "/etc/hopless/ca.pem"
`, nil)
	in, err := LoadInstall(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Install{
		Containerd: InstallContainerd{
			Config:         "/etc/containerd/config.toml",
			ImportsDir:     "/etc/containerd/conf.d",
			Socket:         "/run/containerd/containerd.sock",
			Unit:           "containerd.service",
			RestartTimeout: Duration{60 * time.Second},
		},
		Registries: []Registry{{Host: "registry.hopless-system.svc:5001", Endpoints: []Endpoint{{URL: "https://10.0.0.1:5001"}}}},
		Files:      []InstallFile{{Source: "ca.pem", Dest: "/etc/hopless/ca.pem", Mode: "0644"}},
		NRI: InstallNRI{
			Plugin:    "external",
			Index:     "10",
			PluginDir: "/opt/nri/plugins",
			ConfDir:   "/etc/nri/conf.d",
			StateDir:  "/var/lib/hopless/nri",
			LogLevel:  "info",
		},
		// The tables as written: no endpoint weight filled in.
		RegistryTables: []map[string]any{{
			"host":     "registry.hopless-system.svc:5001",
			"endpoint": []map[string]any{{"url": "https://10.0.0.1:5001"}},
		}},
	}
	if !reflect.DeepEqual(*in, want) {
		t.Errorf("got  %+v\nwant %+v", *in, want)
	}
}

// node.toml is written from RegistryTables, whichever TOML form the registries take.
func TestLoadInstallRegistryTables(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		text string
		want []map[string]any
	}{
		{
			name: "arrays of tables",
			text: "[[registry]]\nhost = \"a.example\"\n[[registry.endpoint]]\nurl = \"https://10.0.0.1:5001\"\n" +
				"[[registry]]\nhost = \"b.example\"\n[[registry.endpoint]]\nurl = \"https://10.0.0.2:5001\"\n",
			want: []map[string]any{
				{"host": "a.example", "endpoint": []map[string]any{{"url": "https://10.0.0.1:5001"}}},
				{"host": "b.example", "endpoint": []map[string]any{{"url": "https://10.0.0.2:5001"}}},
			},
		},
		{
			name: "inline array",
			text: "registry = [\n" +
				"  { host = \"a.example\", endpoint = [{ url = \"https://10.0.0.1:5001\" }] },\n" +
				"  { host = \"b.example\", endpoint = [{ url = \"https://10.0.0.2:5001\" }] },\n]\n",
			want: []map[string]any{
				{"host": "a.example", "endpoint": []any{map[string]any{"url": "https://10.0.0.1:5001"}}},
				{"host": "b.example", "endpoint": []any{map[string]any{"url": "https://10.0.0.2:5001"}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, err := LoadInstall(writeConfig(t, "install.toml", tt.text, nil))
			if err != nil {
				t.Fatal(err)
			}
			if len(in.Registries) != 2 || !reflect.DeepEqual(in.RegistryTables, tt.want) {
				t.Errorf("%d registries, tables %#v; want 2, %#v", len(in.Registries), in.RegistryTables, tt.want)
			}
		})
	}
}

func TestLoadInstallEverythingSet(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, "install.toml", `node_name = "worker-1"
[containerd]
config = "/etc/k3s/containerd/config.toml"
imports_dir = "/etc/k3s/containerd/conf.d"
socket = "/run/k3s/containerd/containerd.sock"
unit = "k3s-agent.service"
restart_timeout = "1s"
`+installHead+`
[[file]]
source = "/abs/node.key"
dest = "/etc/hopless/node.key"
mode = "0600"
[nri]
plugin = "preinstalled"
index = "05"
plugin_dir = "/opt/nri/p"
conf_dir = "/etc/nri/c"
hosts = "off"
metrics_listen = "127.0.0.1:9761"
node_key_file = "node.key"
state_dir = "/var/lib/x"
log_level = "debug"
`, nil)
	in, err := LoadInstall(p)
	if err != nil {
		t.Fatal(err)
	}
	wantC := InstallContainerd{Config: "/etc/k3s/containerd/config.toml", ImportsDir: "/etc/k3s/containerd/conf.d",
		Socket: "/run/k3s/containerd/containerd.sock", Unit: "k3s-agent.service", RestartTimeout: Duration{time.Second}}
	wantN := InstallNRI{Plugin: "preinstalled", Index: "05", PluginDir: "/opt/nri/p", ConfDir: "/etc/nri/c", Hosts: "off",
		MetricsListen: "127.0.0.1:9761", NodeKeyFile: "node.key", StateDir: "/var/lib/x", LogLevel: "debug"}
	wantF := []InstallFile{{Source: "/abs/node.key", Dest: "/etc/hopless/node.key", Mode: "0600"}}
	if in.NodeName != "worker-1" || in.Containerd != wantC || in.NRI != wantN || !reflect.DeepEqual(in.Files, wantF) {
		t.Errorf("got %q %+v %+v %+v, want worker-1 %+v %+v %+v", in.NodeName, in.Containerd, in.NRI, in.Files, wantC, wantN, wantF)
	}
}

func TestLoadInstallErrors(t *testing.T) {
	t.Parallel()
	fileOK := "\n[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\n"
	tests := []struct {
		name string
		text string
		want []fieldWant
	}{
		{
			name: "containerd.config relative",
			text: "[containerd]\nconfig = \"etc/containerd/config.toml\"\n" + installHead,
			want: []fieldWant{{"containerd.config", `must be a clean absolute path, got "etc/containerd/config.toml"`}},
		},
		{
			name: "containerd.config unclean",
			text: "[containerd]\nconfig = \"/etc/containerd/../config.toml\"\n" + installHead,
			want: []fieldWant{{"containerd.config", "must be a clean absolute path"}},
		},
		{
			name: "containerd.unit not a service",
			text: "[containerd]\nunit = \"containerd.socket\"\n" + installHead,
			want: []fieldWant{{"containerd.unit", `must be a systemd service name such as containerd.service, got "containerd.socket"`}},
		},
		{
			name: "restart_timeout under 1s",
			text: "[containerd]\nrestart_timeout = \"999ms\"\n" + installHead,
			want: []fieldWant{{"containerd.restart_timeout", "must be at least 1s, got 999ms"}},
		},
		{
			name: "restart_timeout zero",
			text: "[containerd]\nrestart_timeout = \"0s\"\n" + installHead,
			want: []fieldWant{{"containerd.restart_timeout", "must be at least 1s, got 0s"}},
		},
		{
			name: "no registry",
			text: "[nri]\nplugin = \"external\"\n",
			want: []fieldWant{{"registry", "is required: at least one [[registry]]"}},
		},
		{
			name: "registry host missing",
			text: "[[registry]]\n[[registry.endpoint]]\nurl = \"https://10.0.0.1:5001\"\n",
			want: []fieldWant{{"registry[0].host", "is required"}},
		},
		{
			name: "second registry host missing",
			text: installHead + "[[registry]]\n[[registry.endpoint]]\nurl = \"https://10.0.0.1:5001\"\n",
			want: []fieldWant{{"registry[1].host", "is required"}},
		},
		{
			name: "file source leaves the files directory",
			text: installHead + "[[file]]\nsource = \"../ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\n",
			want: []fieldWant{{"file[0].source", `must be a clean path inside the files directory or an absolute path, got "../ca.pem"`}},
		},
		{
			name: "file source unclean",
			text: installHead + "[[file]]\nsource = \"a/../../ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\n",
			want: []fieldWant{{"file[0].source", `got "a/../../ca.pem"`}},
		},
		{
			name: "file source missing",
			text: installHead + "[[file]]\ndest = \"/etc/hopless/ca.pem\"\n",
			want: []fieldWant{{"file[0].source", "is required"}},
		},
		{
			name: "file dest relative",
			text: installHead + "[[file]]\nsource = \"ca.pem\"\ndest = \"etc/hopless/ca.pem\"\n",
			want: []fieldWant{{"file[0].dest", `must be a clean absolute path, got "etc/hopless/ca.pem"`}},
		},
		{
			name: "duplicate file dest",
			text: installHead + fileOK + "[[file]]\nsource = \"other.pem\"\ndest = \"/etc/hopless/ca.pem\"\n",
			want: []fieldWant{{"file[1].dest", "/etc/hopless/ca.pem is file[0].dest already"}},
		},
		{
			name: "file mode not octal",
			text: installHead + "[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\nmode = \"0999\"\n",
			want: []fieldWant{{"file[0].mode", `must be an octal mode such as "0644" or "0600", got "0999"`}},
		},
		{
			name: "file mode symbolic",
			text: installHead + "[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\nmode = \"rw\"\n",
			want: []fieldWant{{"file[0].mode", `got "rw"`}},
		},
		{
			name: "file mode beyond permissions",
			text: installHead + "[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\nmode = \"4755\"\n",
			want: []fieldWant{{"file[0].mode", `got "4755"`}},
		},
		{
			name: "file mode empty",
			text: installHead + "[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\nmode = \"\"\n",
			want: []fieldWant{{"file[0].mode", `got ""`}},
		},
		{
			name: "nri.plugin bad",
			text: installHead + "[nri]\nplugin = \"daemonset\"\n",
			want: []fieldWant{{"nri.plugin", `must be external or preinstalled, got "daemonset"`}},
		},
		{
			name: "nri.index one digit",
			text: installHead + "[nri]\nindex = \"1\"\n",
			want: []fieldWant{{"nri.index", `must be two digits, got "1"`}},
		},
		{
			name: "nri.hosts bad",
			text: installHead + "[nri]\nhosts = \"yes\"\n",
			want: []fieldWant{{"nri.hosts", `must be one of auto, manage, off, got "yes"`}},
		},
		{
			name: "nri.metrics_listen bad",
			text: installHead + "[nri]\nmetrics_listen = \"9761\"\n",
			want: []fieldWant{{"nri.metrics_listen", `must be host:port, got "9761"`}},
		},
		{
			name: "nri.log_level bad",
			text: installHead + "[nri]\nlog_level = \"loud\"\n",
			want: []fieldWant{{"nri.log_level", `must be one of debug, info, warn, error, got "loud"`}},
		},
		{
			name: "nri dirs relative",
			text: installHead + "[nri]\nplugin_dir = \"p\"\nconf_dir = \"c\"\nstate_dir = \"s\"\n",
			want: []fieldWant{{"nri.plugin_dir", `got "p"`}, {"nri.conf_dir", `got "c"`}, {"nri.state_dir", `got "s"`}},
		},
		{
			name: "unknown key",
			text: "[containerd]\nconfg = \"/etc/containerd/config.toml\"\n" + installHead,
			want: []fieldWant{{"containerd.confg", "unknown key"}},
		},
		{
			name: "wrong type",
			text: "[containerd]\nrestart_timeout = 60\n" + installHead,
			want: []fieldWant{{"containerd.restart_timeout", "must be a duration string"}},
		},
		{
			name: "every error at once",
			text: "[containerd]\nunit = \"containerd\"\n[nri]\nindex = \"100\"\nlog_level = \"\"\n",
			want: []fieldWant{{"containerd.unit", `got "containerd"`}, {"registry", "is required"},
				{"nri.index", `got "100"`}, {"nri.log_level", `got ""`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := writeConfig(t, "install.toml", tt.text, nil)
			in, err := LoadInstall(p)
			if in != nil {
				t.Errorf("got a config %+v with the error", in)
			}
			checkErr(t, p, err, tt.want, nil)
		})
	}
}

func TestParseFileMode(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"0644", 0o644, true},
		{"0600", 0o600, true},
		{"755", 0o755, true},
		{"0", 0, true},
		{"0777", 0o777, true},
		{"01000", 0, false},
		{"0999", 0, false},
		{"rw", 0, false},
		{"", 0, false},
		{"-1", 0, false},
	} {
		got, err := ParseFileMode(tt.in)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("ParseFileMode(%q) = %#o, %v; want %#o, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
