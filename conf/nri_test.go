package conf

import (
	"path/filepath"
	"reflect"
	"testing"
)

func TestLoadNRI(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		text  string
		files []file
		want  []fieldWant
		check func(t *testing.T, dir string, n *NRI)
	}{
		{
			name: "defaults",
			text: "node_config = \"node.toml\"\n",
			check: func(t *testing.T, dir string, n *NRI) {
				want := NRI{NodeConfig: filepath.Join(dir, "node.toml"), Hosts: HostsAuto, ConfigPath: "/etc/containerd/certs.d",
					StateDir: "/var/lib/hopless-nri", ContainerdSocket: "/run/containerd/containerd.sock", LogLevel: "info"}
				if !reflect.DeepEqual(*n, want) {
					t.Errorf("got %+v, want %+v", *n, want)
				}
			},
		},
		{
			name:  "everything set",
			text:  nriEverything,
			files: []file{{name: "node.token", text: "hpn1.worker-1.example.x"}},
			check: func(t *testing.T, dir string, n *NRI) {
				want := NRI{NodeConfig: "/etc/hopless/node.toml", NodeName: "worker-1.example", Hosts: HostsManage,
					ConfigPath: "/etc/containerd/registry.d", StateDir: "/var/lib/x", ContainerdSocket: "/run/k3s/containerd.sock",
					PinsTokenFile: filepath.Join(dir, "node.token"), MetricsListen: "127.0.0.1:9761", LogLevel: "debug"}
				if !reflect.DeepEqual(*n, want) {
					t.Errorf("got %+v, want %+v", *n, want)
				}
			},
		},
		{
			name: "node_config missing",
			text: "hosts = \"off\"\n",
			want: []fieldWant{{"node_config", "is required"}},
		},
		{
			name: "bad values",
			text: `node_config = "n.toml"
node_name = "a/b"
hosts = "yes"
config_path = "certs.d"
containerd_socket = "containerd.sock"
metrics_listen = "nowhere"
log_level = "loud"
`,
			want: []fieldWant{
				{"node_name", `got "a/b"`},
				{"hosts", `must be one of auto, manage, off, got "yes"`},
				{"config_path", `must be an absolute path, got "certs.d"`},
				{"containerd_socket", "must be an absolute path"},
				{"metrics_listen", ""},
				{"log_level", `got "loud"`},
			},
		},
		{
			name: "state_dir under config_path",
			text: "node_config = \"n.toml\"\nconfig_path = \"/etc/containerd/certs.d\"\nstate_dir = \"/etc/containerd/certs.d/hopless\"\n",
			want: []fieldWant{{"state_dir", "must not be under config_path"}},
		},
		{
			name:  "pins token too open",
			text:  "node_config = \"n.toml\"\npins_token_file = \"node.token\"\n",
			files: []file{{name: "node.token", text: "t", mode: 0o644}},
			want:  []fieldWant{{"pins_token_file", "has mode 0644, want 0600 or stricter"}},
		},
		{
			name: "unknown key",
			text: "node_config = \"n.toml\"\nhost = \"manage\"\n",
			want: []fieldWant{{"host", "unknown key"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, "10-hopless.conf", tt.text, tt.files)
			n, err := LoadNRI(path)
			if tt.want != nil {
				checkErr(t, path, err, tt.want, nil)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, filepath.Dir(path), n)
		})
	}
}

func TestDecodeNRIRelativeToBase(t *testing.T) {
	t.Parallel()
	n, err := DecodeNRI("10-hopless.conf", "node_config = \"node.toml\"\n", "/etc/hopless")
	if err != nil {
		t.Fatal(err)
	}
	if n.NodeConfig != "/etc/hopless/node.toml" {
		t.Errorf("NodeConfig = %q, want it under the base dir", n.NodeConfig)
	}
}

// nriEverything sets every NRI setting; FuzzDecodeNRI seeds from it too.
const nriEverything = `node_config = "/etc/hopless/node.toml"
node_name = "worker-1.example"
hosts = "manage"
config_path = "/etc/containerd/registry.d"
state_dir = "/var/lib/x"
containerd_socket = "/run/k3s/containerd.sock"
pins_token_file = "node.token"
metrics_listen = "127.0.0.1:9761"
log_level = "debug"
`
