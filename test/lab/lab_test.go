package lab

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeBins makes empty stand-ins for every binary that Options.check looks for,
// and, with nginx, for the NGINX that make tools unpacks.
func fakeBins(t *testing.T, nginx bool) (bin, tools string) {
	t.Helper()
	root := t.TempDir()
	bin, tools = filepath.Join(root, "bin"), filepath.Join(root, "tools", "bin")
	files := []string{
		filepath.Join(bin, "registryd"), filepath.Join(bin, "hopless-lab"), filepath.Join(bin, "containerd"),
		filepath.Join(bin, "hopless-nri"), filepath.Join(bin, "lab-pause"),
		filepath.Join(tools, "containerd-stock"), filepath.Join(tools, "crictl"), filepath.Join(tools, "containerd-shim-runc-v2"),
		runcPath(tools),
	}
	if nginx {
		files = append(files, nginxBin(tools), nginxStreamModule(tools))
	}
	for _, f := range files {
		if err := writeFile(f, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin, tools
}

// TestOptionsNodeModes checks the validation of per-node modes and of the options
// that need a node of some mode.
func TestOptionsNodeModes(t *testing.T) {
	t.Parallel()
	bin, tools := fakeBins(t, true)
	_, noNginx := fakeBins(t, false)
	mixed := []string{ModeInprocess, ModeNRI, ModeNginx}
	for _, tc := range []struct {
		name  string
		tune  func(*Options)
		want  string // "" passes
		modes []string
		nri   []string
	}{
		{name: "one mode", tune: func(o *Options) {}, modes: []string{ModeStock, ModeStock, ModeStock}, nri: []string{"", "", ""}},
		{name: "mixed", tune: func(o *Options) { o.NodeModes = mixed }, modes: mixed, nri: []string{"", NRIExternal, ""}},
		{name: "mixed, no default mode", tune: func(o *Options) { o.Mode, o.NodeModes = "", mixed }, modes: mixed},
		{name: "nri plugin beside inprocess", tune: func(o *Options) { o.NodeModes, o.NRIPlugin = mixed, NRIPreinstalled },
			modes: mixed, nri: []string{NRIPreinstalled, NRIPreinstalled, ""}},
		{name: "too few modes", tune: func(o *Options) { o.NodeModes = mixed[:2] }, want: "lists 2 modes for 3 nodes"},
		{name: "too many modes", tune: func(o *Options) { o.NodeModes = append(slices.Clone(mixed), ModeStock) }, want: "lists 4 modes for 3 nodes"},
		{name: "bad node mode", tune: func(o *Options) { o.NodeModes = []string{ModeStock, "nginz", ModeNginx} },
			want: `node-2's mode "nginz" is not supported`},
		{name: "empty node mode", tune: func(o *Options) { o.NodeModes = []string{ModeStock, ModeStock, ""} },
			want: `node-3's mode "" is not supported`},
		{name: "bad default mode", tune: func(o *Options) { o.Mode = "docker" }, want: `--mode "docker" is not supported`},
		{name: "hopless extra, no inprocess node", tune: func(o *Options) {
			o.NodeModes, o.HoplessExtra = []string{ModeStock, ModeNRI, ModeNginx}, "cri_local_pull = 'warn'"
		}, want: "hopless extra config needs a node in mode inprocess, got --node-modes stock,nri,nginx"},
		{name: "hopless extra, one inprocess node", tune: func(o *Options) {
			o.NodeModes, o.HoplessExtra = []string{ModeStock, ModeInprocess, ModeNginx}, "cri_local_pull = 'warn'"
		}, modes: []string{ModeStock, ModeInprocess, ModeNginx}},
		{name: "nri plugin, no nri or inprocess node", tune: func(o *Options) {
			o.NodeModes, o.NRIPlugin = []string{ModeStock, ModeNginx, ModeStock}, NRIExternal
		}, want: "--nri-plugin needs a node in mode nri"},
		{name: "bad nri plugin", tune: func(o *Options) { o.NodeModes, o.NRIPlugin = mixed, "daemonset" }, want: `--nri-plugin "daemonset" is not supported`},
		{name: "nginx node, no nginx", tune: func(o *Options) { o.NodeModes, o.ToolsDir = mixed, noNginx }, want: "nginx is missing"},
		{name: "nginx to proxies", tune: func(o *Options) { o.NodeModes, o.Proxies, o.NginxToProxies = mixed, 3, true }, modes: mixed},
		{name: "nginx to proxies, no proxies", tune: func(o *Options) { o.NodeModes, o.NginxToProxies = mixed, true },
			want: "--nginx-to-proxies needs stock proxies"},
		{name: "nginx to proxies, no nginx node", tune: func(o *Options) {
			o.NodeModes, o.Proxies, o.NginxToProxies = []string{ModeInprocess, ModeNRI, ModeStock}, 3, true
		}, want: "--nginx-to-proxies needs a node in mode nginx, got --node-modes inprocess,nri,stock"},
		{name: "containers on an inprocess node", tune: func(o *Options) {
			o.NodeModes, o.Containers = []string{ModeStock, ModeInprocess, ModeNRI}, true
		}, want: "not node-2's mode inprocess"},
		{name: "containers on stock and nri nodes", tune: func(o *Options) {
			o.NodeModes, o.Containers = []string{ModeStock, ModeNRI, ModeNRI}, true
		}, modes: []string{ModeStock, ModeNRI, ModeNRI}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Dir: t.TempDir(), Masters: 3, Nodes: 3, Mode: ModeStock, BinDir: bin, ToolsDir: tools}
			tc.tune(&o)
			err := o.check()
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("check: %v, want an error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			if got := o.nodeModes(); !slices.Equal(got, tc.modes) {
				t.Errorf("node modes %v, want %v", got, tc.modes)
			}
			if tc.nri == nil {
				return
			}
			var nri []string
			for i := 1; i <= o.Nodes; i++ {
				nri = append(nri, o.nodeNRIPlugin(i))
			}
			if !slices.Equal(nri, tc.nri) {
				t.Errorf("nodes' NRI plugins %q, want %q", nri, tc.nri)
			}
		})
	}
}

// TestNodeModes checks what a lab of mixed nodes says about each: its mode, the
// reference it pulls, the NGINX hops that certificates name, and lab.env.
func TestNodeModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := &Lab{Dir: dir, Mode: ModeStock, Slot: 7, ImageHost: ImageHost(7), NginxToProxies: true,
		Nodes: []Node{{Name: "node-1", Mode: ModeInprocess}, {Name: "node-2", Mode: ModeNginx}, {Name: "node-3"}}}
	for i, want := range []string{ModeInprocess, ModeNginx, ModeStock, ModeStock} {
		if got := l.NodeMode(i + 1); got != want {
			t.Errorf("NodeMode(%d) = %q, want %q", i+1, got, want)
		}
	}
	repo := UpstreamPath + "/app"
	for node, want := range map[int]string{
		1: ImageHost(7) + "/" + LocalPrefix + "/app:v1",
		2: ImageHost(7) + "/" + UpstreamPath + "/app:v1",
		3: ImageHost(7) + "/" + LocalPrefix + "/app:v1",
	} {
		if got := l.PullRefFor(node, repo, "v1"); got != want {
			t.Errorf("PullRefFor(%d) = %s, want %s", node, got, want)
		}
	}
	l.NginxToProxies = false
	if got, want := l.PullRefFor(2, repo, "v1"), l.PullRef(repo, "v1"); got != want {
		t.Errorf("PullRefFor(2) with the hop to the masters = %s, want %s", got, want)
	}
	ips := nginxIPs(7, l.nodeModes())
	if len(ips) != 1 || ips[0].String() != "127.7.5.2" {
		t.Errorf("nginx hops' IPs %v, want [127.7.5.2]", ips)
	}
	if err := l.writeEnv(); err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(dir, "lab.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"LAB_MODE='stock'", "LAB_NODE_1_MODE='inprocess'", "LAB_NODE_2_MODE='nginx'", "LAB_NODE_3_MODE='stock'"} {
		if !strings.Contains(string(env), want) {
			t.Errorf("lab.env lacks %s:\n%s", want, env)
		}
	}
}
