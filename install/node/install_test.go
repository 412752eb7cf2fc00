package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/install/hostfs/hostfstest"
	"github.com/hopless/hopless/install/state"
	"github.com/hopless/hopless/install/systemd"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/internal/version"
)

// The node before an install: containerd's config (mode 0640, to see it kept),
// its unit, a hosts.toml of its own, and the rest of a root.
const (
	configToml = `# The node's containerd config.
version = 3

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'

  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '/etc/containerd/certs.d'
`
	unitText  = "[Unit]\nDescription=containerd container runtime\n\n[Service]\nExecStartPre=-/sbin/modprobe overlay\nExecStart=/usr/local/bin/containerd\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"
	hostsToml = "server = \"https://registry-1.docker.io\"\n"
	nodeName  = "worker-1"
)

// installed are the files an inprocess install of examples/inprocess.toml writes,
// in the order it writes them.
var installed = []string{
	"/opt/hopless/bin/containerd",
	"/etc/hopless/ca.pem",
	"/etc/hopless/node.toml",
	"/etc/hopless/node.token",
	"/etc/hopless/nri.toml",
	"/etc/containerd/conf.d/50-hopless.toml",
	"/etc/containerd/config.toml",
	"/etc/systemd/system/containerd.service.d/50-hopless.conf",
}

// madeDirs are the directories it makes, parents first.
var madeDirs = []string{
	"/var/lib/hopless", "/var/lib/hopless/install",
	"/opt", "/opt/hopless", "/opt/hopless/bin",
	"/etc/hopless",
	"/etc/containerd/conf.d",
	"/etc/systemd/system/containerd.service.d",
	"/var/lib/hopless/nri",
}

const wantDropIn = `# Written by hopless-install (inprocess mode); hopless-install uninstall removes it.
version = 3

# hopless's plugin in hopless's containerd build: pulls of the registries in
# node.toml go straight to their masters.
[plugins.'io.containerd.hopless.v1.hopless']
  node_config = '/etc/hopless/node.toml'

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  plugin_path = '/opt/nri/plugins'
  plugin_config_path = '/etc/nri/conf.d'
`

const wantNRI = `# Written by hopless-install.
node_config = "/etc/hopless/node.toml"
node_name = "worker-1"
hosts = "auto"
config_path = "/etc/containerd/certs.d"
state_dir = "/var/lib/hopless/nri"
containerd_socket = "/run/containerd/containerd.sock"
pins_token_file = "/etc/hopless/node.token"
log_level = "info"
`

// inputs are the installer's source and files directories.
type inputs struct {
	src, files string
}

var (
	ourContainerdOnce sync.Once
	ourContainerd     []byte
	ourContainerdErr  error
)

// newInputs makes the source directory (our "containerd", a Go binary that says
// it is containerd 2.9.1, and a stand-in hopless-nri) and the files directory
// (ca.pem, node.key: a printable key of 32 random bytes, mode 0600).
func newInputs(t *testing.T) inputs {
	t.Helper()
	ourContainerdOnce.Do(func() {
		defer func() {
			if ourContainerd == nil && ourContainerdErr == nil {
				ourContainerdErr = errors.New("skipped")
			}
		}()
		bin := goBuild(t, "", trivialMain, "-X "+containerdModule+"/version.Version=2.9.1")
		ourContainerd, ourContainerdErr = os.ReadFile(bin)
	})
	if ourContainerdErr != nil {
		t.Skipf("no containerd binary to install: %v", ourContainerdErr)
	}
	in := inputs{src: t.TempDir(), files: t.TempDir()}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	writeTree(t, in.src, map[string]string{"/containerd": string(ourContainerd), "/hopless-nri": "#!/bin/sh\n"}, 0o755)
	writeTree(t, in.files, map[string]string{"/ca.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "/extra.pem": "extra\n"}, 0o644)
	writeTree(t, in.files, map[string]string{"/node.key": hex.EncodeToString(key) + "\n"}, 0o600)
	return in
}

// clone copies the inputs, for a test that changes them.
func (in inputs) clone(t *testing.T) inputs {
	t.Helper()
	out := inputs{src: t.TempDir(), files: t.TempDir()}
	for _, d := range [][2]string{{in.src, out.src}, {in.files, out.files}} {
		ents, err := os.ReadDir(d[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(d[0], e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			writeTree(t, d[1], map[string]string{"/" + e.Name(): string(b)}, fi.Mode().Perm())
		}
	}
	return out
}

func (in inputs) key(t *testing.T) string {
	t.Helper()
	k, err := conf.ReadToken(filepath.Join(in.files, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeTree writes files (paths under dir -> content) with mode.
func writeTree(t *testing.T, dir string, files map[string]string, mode fs.FileMode) {
	t.Helper()
	for p, text := range files {
		f := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// newRoot makes a node's root filesystem. Its path is short, for the fake CRI
// socket in it.
func newRoot(t *testing.T) string {
	t.Helper()
	root, err := os.MkdirTemp("", "hl-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	writeTree(t, root, map[string]string{
		"/etc/systemd/system/containerd.service":       unitText,
		"/etc/containerd/certs.d/docker.io/hosts.toml": hostsToml,
		"/etc/hostname":        nodeName + "\n",
		"/var/lib/dpkg/status": "",
	}, 0o644)
	writeTree(t, root, map[string]string{"/etc/containerd/config.toml": configToml}, 0o640)
	if err := os.MkdirAll(filepath.Join(root, "run/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// loadConfig loads examples/inprocess.toml with extra appended.
func loadConfig(t *testing.T, edit func(string) string) *conf.Install {
	t.Helper()
	b, err := os.ReadFile("../examples/inprocess.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if edit != nil {
		text = edit(text)
	}
	p := filepath.Join(t.TempDir(), "install.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadInstall(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (in inputs) installer(root string, cfg *conf.Install, log io.Writer) *Installer {
	return &Installer{
		Root: hostfs.Root{Dir: root}, Mode: ModeInprocess, Config: cfg,
		SourceDir: in.src, FilesDir: in.files, NodeName: nodeName,
		Socket: cfg.Containerd.Socket, RestartTimeout: cfg.Containerd.RestartTimeout.Duration,
		Log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// tree is every path under root (node paths), as hostfstest.Tree.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	m, err := hostfstest.Tree(root)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sameTree fails unless got and want hold the same paths with the same modes and
// content, but for the paths in except, which only have to be there in both.
func sameTree(t *testing.T, what string, want, got map[string]string, except ...string) {
	t.Helper()
	if d := hostfstest.Diff(want, got, except...); len(d) > 0 {
		t.Errorf("%s: the tree differs:\n  %s", what, strings.Join(d, "\n  "))
	}
}

func loadState(t *testing.T, root string) *state.State {
	t.Helper()
	st, err := state.Store{Dir: filepath.Join(root, state.Dir)}.Load()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func readNode(t *testing.T, root, p string) (string, fs.FileMode) {
	t.Helper()
	b, fi, err := hostfs.ReadFile(filepath.Join(root, p))
	if err != nil || fi == nil {
		t.Fatalf("reading %s: %v, %v", p, fi, err)
	}
	return string(b), fi.Mode()
}

func reversed(s []string) []string {
	r := slices.Clone(s)
	slices.Reverse(r)
	return r
}

// uninstalled is what an uninstall after a clean install changes: the files, newest
// first, then the directories, deepest first, the state's own last.
func uninstalled() []string {
	dirs := reversed(madeDirs)
	dirs = slices.DeleteFunc(dirs, func(d string) bool { return d == "/var/lib/hopless" || d == "/var/lib/hopless/install" })
	return append(append(reversed(installed), dirs...), "/var/lib/hopless")
}

func TestInstallStatusUninstall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	in := newInputs(t)
	root := newRoot(t)
	cfg := loadConfig(t, nil)
	pre := tree(t, root)

	var log bytes.Buffer
	res, err := in.installer(root, cfg, &log).Install(ctx)
	if err != nil {
		t.Fatalf("Install: %v\n%s", err, log.String())
	}
	if !slices.Equal(res.Changed, installed) || res.Restarted {
		t.Errorf("Install changed %q (restarted %v), want %q", res.Changed, res.Restarted, installed)
	}
	if !strings.Contains(log.String(), `msg="could not tell the node's containerd version; installing without the downgrade check" binary=/usr/local/bin/containerd`) {
		t.Errorf("no warning that the node's containerd version is unknown in the log:\n%s", log.String())
	}

	// What landed, with its mode.
	for _, f := range []struct {
		path string
		text string
		mode fs.FileMode
	}{
		{"/etc/containerd/conf.d/50-hopless.toml", wantDropIn, 0o644},
		{"/etc/containerd/config.toml", "# imports added by hopless-install\nimports = ['/etc/containerd/conf.d/*.toml']\n" + configToml, 0o640},
		{"/etc/systemd/system/containerd.service.d/50-hopless.conf", "# Written by hopless-install: containerd runs hopless's build, with the unit's own arguments.\n" +
			"# hopless-install uninstall removes this file.\n[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd\n", 0o644},
		{"/etc/hopless/nri.toml", wantNRI, 0o644},
		{"/etc/hopless/ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 0o644},
		{"/etc/hopless/node.token", mustDerive(t, in.key(t)) + "\n", 0o600},
		{"/opt/hopless/bin/containerd", string(ourContainerd), 0o755},
	} {
		text, mode := readNode(t, root, f.path)
		if text != f.text {
			t.Errorf("%s =\n%s\nwant\n%s", f.path, text, f.text)
		}
		if mode != f.mode {
			t.Errorf("%s has mode %v, want %v", f.path, mode, f.mode)
		}
	}
	nodeText, mode := readNode(t, root, "/etc/hopless/node.toml")
	var node map[string]any
	if _, err := toml.Decode(nodeText, &node); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(nodeText, "# Written by hopless-install.\n") || mode != 0o644 ||
		!reflect.DeepEqual(node, map[string]any{"registry": cfg.RegistryTables}) {
		t.Errorf("node.toml (%v) =\n%s\nwant the [[registry]] tables of install.toml %v", mode, nodeText, cfg.RegistryTables)
	}
	argv, err := systemd.ExecStart(hostfs.Root{Dir: root}, "containerd.service", "")
	if err != nil || !slices.Equal(argv, []string{"/opt/hopless/bin/containerd"}) {
		t.Errorf("the unit now runs %q, %v", argv, err)
	}

	st := loadState(t, root)
	var paths []string
	for _, f := range st.Files {
		paths = append(paths, f.Path)
		wantExisted := f.Path == "/etc/containerd/config.toml"
		if f.Existed != wantExisted || f.SHA256 == "" {
			t.Errorf("state entry %+v: want existed %v and a checksum", f, wantExisted)
		}
	}
	if e := st.Lookup("/etc/containerd/config.toml"); e.Original != hostfs.Sum([]byte(configToml)) || e.OriginalMode != 0o640 {
		t.Errorf("config.toml's entry %+v: want the original's checksum and mode 0640", e)
	}
	if !slices.Equal(paths, installed) || !slices.Equal(st.Dirs, madeDirs) || !st.Complete || st.Mode != ModeInprocess ||
		st.Release != version.Version || st.Node != nodeName || st.HostsDir != "/etc/containerd/certs.d" ||
		st.NRIStateDir != "/var/lib/hopless/nri" || st.Socket != "/run/containerd/containerd.sock" || st.Unit != "containerd.service" {
		t.Errorf("state %+v", st)
	}
	after := tree(t, root)

	// A second run changes nothing, not even the state.
	res, err = in.installer(root, cfg, io.Discard).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changed) != 0 || res.Restarted {
		t.Errorf("second Install changed %q (restarted %v), want nothing", res.Changed, res.Restarted)
	}
	sameTree(t, "after a second install", after, tree(t, root))

	checkStatus := func(want map[string]string) {
		t.Helper()
		s, err := in.installer(root, cfg, io.Discard).Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !s.Installed || !s.Complete || s.Mode != ModeInprocess || s.Release != version.Version || s.Node != nodeName ||
			s.Containerd != "2.9.1" || s.Running != "" {
			t.Errorf("Status %+v", s)
		}
		var states []string
		drift := 0
		for i, f := range s.Files {
			if i >= len(installed) || f.Path != installed[i] {
				t.Errorf("Status lists %s at %d", f.Path, i)
			}
			w := FileOK
			if x, ok := want[f.Path]; ok {
				w = x
				drift++
			}
			if f.State != w {
				t.Errorf("%s: %s, want %s", f.Path, f.State, w)
			}
			states = append(states, f.State)
		}
		if s.Drift != drift || len(s.Files) != len(installed) {
			t.Errorf("Status drift %d over %d files (%q), want %d over %d", s.Drift, len(s.Files), states, drift, len(installed))
		}
	}
	checkStatus(nil)

	nodeToml := filepath.Join(root, "etc/hopless/node.toml")
	if err := os.WriteFile(nodeToml, []byte(nodeText+"# edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkStatus(map[string]string{"/etc/hopless/node.toml": FileChanged})
	// An install puts it back.
	res, err = in.installer(root, cfg, io.Discard).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/etc/hopless/node.toml"}; !slices.Equal(res.Changed, want) {
		t.Errorf("Install over a drifted node.toml changed %q, want %q", res.Changed, want)
	}
	checkStatus(nil)

	// Other drift: a mode, a missing file, a file that is no longer a file.
	if err := os.Chmod(filepath.Join(root, "etc/hopless/ca.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, "etc/hopless/nri.toml")); err != nil {
		t.Fatal(err)
	}
	checkStatus(map[string]string{"/etc/hopless/ca.pem": FileMode, "/etc/hopless/nri.toml": FileMissing})
	res, err = in.installer(root, cfg, io.Discard).Install(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/etc/hopless/ca.pem", "/etc/hopless/nri.toml"}; !slices.Equal(res.Changed, want) {
		t.Errorf("Install over drift changed %q, want %q", res.Changed, want)
	}
	checkStatus(nil)

	// Uninstall leaves the node as it was, byte for byte.
	res, err = in.installer(root, cfg, io.Discard).Uninstall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := uninstalled(); !slices.Equal(res.Changed, want) || res.Restarted {
		t.Errorf("Uninstall changed %q (restarted %v), want %q", res.Changed, res.Restarted, want)
	}
	sameTree(t, "after uninstall", pre, tree(t, root))
	res, err = in.installer(root, cfg, io.Discard).Uninstall(ctx)
	if err != nil || len(res.Changed) != 0 {
		t.Errorf("second Uninstall: %q, %v; want nothing", res.Changed, err)
	}
	if s, err := in.installer(root, cfg, io.Discard).Status(ctx); err != nil || s.Installed || len(s.Files) != 0 {
		t.Errorf("Status after uninstall: %+v, %v", s, err)
	}
	sameTree(t, "after a second uninstall", pre, tree(t, root))
}

func mustDerive(t *testing.T, key string) string {
	t.Helper()
	tok, err := nodetoken.Derive([]byte(key), nodeName)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestInstallRefuses(t *testing.T) {
	t.Parallel()
	base := newInputs(t)
	const unitDirs = "/etc/systemd/system, /run/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system, /lib/systemd/system"
	tests := []struct {
		name   string
		setup  func(t *testing.T, root string, in inputs)
		config func(string) string
		want   string
	}{
		{
			name: "CRI pulls locally",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{"/etc/containerd/config.toml": strings.Replace(configToml,
					"snapshotter = 'overlayfs'\n", "snapshotter = 'overlayfs'\n  use_local_image_pull = true\n", 1)}, 0o640)
			},
			want: "refusing to install: /etc/containerd/config.toml with its imports: [plugins.'io.containerd.cri.v1.images'] sets " +
				"use_local_image_pull = true: CRI would pull through its local path, past hopless; remove these settings",
		},
		{
			name: "an imported file makes CRI pull locally",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{
					"/etc/containerd/config.toml":         "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n",
					"/etc/containerd/conf.d/10-node.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  discard_unpacked_layers = true\n",
				}, 0o644)
			},
			want: "refusing to install: /etc/containerd/config.toml with its imports: [plugins.'io.containerd.cri.v1.images'] sets discard_unpacked_layers = true",
		},
		{
			name: "the hopless plugin disabled",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{"/etc/containerd/config.toml": "disabled_plugins = ['io.containerd.hopless.v1.hopless']\n" + configToml}, 0o640)
			},
			want: "refusing to install: /etc/containerd/config.toml with its imports: disabled_plugins lists io.containerd.hopless.v1.hopless; remove it",
		},
		{
			name: "an imported file that containerd would not load",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{
					"/etc/containerd/config.toml":         "version = 3\nimports = ['conf.d/*.toml']\n",
					"/etc/containerd/conf.d/10-node.toml": "version = [3\n",
				}, 0o644)
			},
			want: "containerd would not load /etc/containerd/config.toml with its imports: ",
		},
		{
			name: "config version 2",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{"/etc/containerd/config.toml": "version = 2\n"}, 0o640)
			},
			want: "/etc/containerd/config.toml is config version 2; hopless needs version 3 or later: run `containerd config migrate` on it first",
		},
		{
			name: "no config.toml",
			setup: func(t *testing.T, root string, _ inputs) {
				if err := os.Remove(filepath.Join(root, "etc/containerd/config.toml")); err != nil {
					t.Fatal(err)
				}
			},
			want: "containerd's config /etc/containerd/config.toml is not on the node: write it first (containerd config default), so that the installer adds to it",
		},
		{
			name: "imports over several lines",
			setup: func(t *testing.T, root string, _ inputs) {
				writeTree(t, root, map[string]string{"/etc/containerd/config.toml": "version = 3\nimports = [\n  '/etc/other/*.toml',\n]\n"}, 0o640)
			},
			want: "/etc/containerd/config.toml: its imports array spans several lines; add '/etc/containerd/conf.d/*.toml' to it by hand",
		},
		{
			name: "no unit",
			setup: func(t *testing.T, root string, _ inputs) {
				if err := os.Remove(filepath.Join(root, "etc/systemd/system/containerd.service")); err != nil {
					t.Fatal(err)
				}
			},
			want: "unit containerd.service not found on the node in " + unitDirs,
		},
		{
			name: "a downgrade of the node's containerd",
			setup: func(t *testing.T, root string, _ inputs) {
				bin := goBuild(t, "", trivialMain, "-X "+containerdModule+"/version.Version=v3.0.1")
				b, err := os.ReadFile(bin)
				if err != nil {
					t.Fatal(err)
				}
				writeTree(t, root, map[string]string{"/usr/local/bin/containerd": string(b)}, 0o755)
			},
			want: "refusing to install: the node runs containerd 3.0.1 (/usr/local/bin/containerd) and hopless's build is containerd 2.9.1: " +
				"that is a downgrade across minor versions; install a hopless release built on containerd 3.0 or later",
		},
		{
			name: "our containerd says nothing of its version",
			setup: func(t *testing.T, _ string, in inputs) {
				writeTree(t, in.src, map[string]string{"/containerd": "#!/bin/sh\n"}, 0o755)
			},
			want: "reading the version of %src/containerd to install: ",
		},
		{
			name: "no containerd to install",
			setup: func(t *testing.T, _ string, in inputs) {
				if err := os.Remove(filepath.Join(in.src, "containerd")); err != nil {
					t.Fatal(err)
				}
			},
			want: "reading the binary to install: open %src/containerd: no such file or directory",
		},
		{
			name: "a node key too short",
			setup: func(t *testing.T, _ string, in inputs) {
				writeTree(t, in.files, map[string]string{"/node.key": "short\n"}, 0o600)
			},
			want: "nri.node_key_file %files/node.key holds 5 bytes, want at least 16",
		},
		{
			name: "a node key others can read",
			setup: func(t *testing.T, _ string, in inputs) {
				writeTree(t, in.files, map[string]string{"/node.key": strings.Repeat("k", 32)}, 0o644)
			},
			want: "reading nri.node_key_file: token file %files/node.key: mode 0644 is too open, want 0600 or stricter",
		},
		{
			name: "a file source missing",
			setup: func(t *testing.T, _ string, in inputs) {
				if err := os.Remove(filepath.Join(in.files, "ca.pem")); err != nil {
					t.Fatal(err)
				}
			},
			want: "reading file %files/ca.pem for /etc/hopless/ca.pem: ",
		},
		{
			name: "node.toml names a CA that nothing places",
			config: func(s string) string {
				return strings.Replace(s, `ca = "/etc/hopless/ca.pem"`, `ca = "/etc/hopless/other.pem"`, 1)
			},
			want: "refusing to install: /etc/hopless/node.toml (as it will be): registry[0].tls.ca: ",
		},
		{
			name: "installed in the other mode",
			setup: func(t *testing.T, root string, _ inputs) {
				st := &state.State{Mode: ModeNRI, Complete: true, Files: []state.File{{Path: "/etc/hopless/nri.toml", Role: "hopless-nri config", SHA256: "x"}}}
				if err := (state.Store{Dir: filepath.Join(root, state.Dir)}).Save(st); err != nil {
					t.Fatal(err)
				}
			},
			want: "the node has hopless installed in nri mode; run hopless-install uninstall before installing inprocess mode",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := base.clone(t)
			root := newRoot(t)
			if tt.setup != nil {
				tt.setup(t, root, in)
			}
			cfg := loadConfig(t, tt.config)
			pre := tree(t, root)
			res, err := in.installer(root, cfg, io.Discard).Install(context.Background())
			want := strings.NewReplacer("%src", in.src, "%files", in.files).Replace(tt.want)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("Install: %v; want an error starting %q", err, want)
			}
			if res != nil {
				t.Errorf("Install refused with a result %+v", res)
			}
			sameTree(t, "after a refused install", pre, tree(t, root))
		})
	}
}

// crash is the panic of a Crash hook.
type crash struct{ step int }

// crashAt runs f with the installer's Crash hook panicking at step n, and reports
// whether it did.
func crashAt(t *testing.T, inst *Installer, n int, f func() error) (crashed bool) {
	t.Helper()
	inst.Crash = func(step int) {
		if step == n {
			panic(crash{step})
		}
	}
	defer func() {
		if r := recover(); r != nil {
			if c, ok := r.(crash); !ok || c.step != n {
				panic(r)
			}
			crashed = true
		}
	}()
	if err := f(); err != nil {
		t.Fatalf("run to crash at step %d: %v", n, err)
	}
	return false
}

// normState is the state with its time left out, for comparing two runs.
func normState(t *testing.T, root string) *state.State {
	t.Helper()
	st := loadState(t, root)
	st.Updated = time.Time{}
	return st
}

// copyRoot copies a node's root, modes and all, without the fsyncs of a run.
func copyRoot(t *testing.T, src string) string {
	t.Helper()
	dst, err := os.MkdirTemp("", "hl-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dst) })
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		to := filepath.Join(dst, strings.TrimPrefix(p, src))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
		} else {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(to, b, 0o600); err != nil {
				return err
			}
		}
		return os.Chmod(to, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestInstallCrash(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	in := newInputs(t)
	cfg := loadConfig(t, nil)
	const stateFile = state.Dir + "/state.json"

	clean := newRoot(t)
	pre := tree(t, clean)
	if _, err := in.installer(clean, cfg, io.Discard).Install(ctx); err != nil {
		t.Fatal(err)
	}
	want, wantState := tree(t, clean), normState(t, clean)

	steps := 0
	for n := 1; ; n++ {
		root := newRoot(t)
		inst := in.installer(root, cfg, io.Discard)
		if !crashAt(t, inst, n, func() error { _, err := inst.Install(ctx); return err }) {
			steps = n - 1
			break
		}
		crashed := copyRoot(t, root)
		// The next run finishes the job: the same files as a clean install.
		if _, err := in.installer(root, cfg, io.Discard).Install(ctx); err != nil {
			t.Fatalf("install after a crash at step %d: %v", n, err)
		}
		sameTree(t, fmt.Sprintf("install after a crash at step %d", n), want, tree(t, root), stateFile)
		if got := normState(t, root); !reflect.DeepEqual(got, wantState) {
			t.Errorf("state after a crash at step %d and a rerun:\n%+v\nwant\n%+v", n, got, wantState)
		}
		// An uninstall after the crash leaves the node as it was.
		if _, err := in.installer(crashed, cfg, io.Discard).Uninstall(ctx); err != nil {
			t.Fatalf("uninstall after a crash at step %d: %v", n, err)
		}
		sameTree(t, fmt.Sprintf("uninstall after a crash at step %d", n), pre, tree(t, crashed))
	}
	// Every file's entry, its write and its record are steps.
	if steps < 3*len(installed) {
		t.Errorf("an install took %d steps, want at least %d", steps, 3*len(installed))
	}

	// A crashed uninstall finishes on the next run.
	for n := 1; ; n++ {
		root := copyRoot(t, clean)
		inst := in.installer(root, cfg, io.Discard)
		if !crashAt(t, inst, n, func() error { _, err := inst.Uninstall(ctx); return err }) {
			if n == 1 {
				t.Error("an uninstall took no steps")
			}
			break
		}
		if _, err := in.installer(root, cfg, io.Discard).Uninstall(ctx); err != nil {
			t.Fatalf("uninstall after a crash at step %d of an uninstall: %v", n, err)
		}
		sameTree(t, fmt.Sprintf("uninstall after a crash at step %d of an uninstall", n), pre, tree(t, root))
	}
}

// noSocket is a tree without the fake CRI's socket.
func noSocket(m map[string]string) map[string]string {
	delete(m, "/run/containerd/containerd.sock")
	return m
}

// restarter is a Restarter that runs a function.
type restarter func(ctx context.Context) error

func (r restarter) Restart(ctx context.Context) error { return r(ctx) }
func (restarter) String() string                      { return "test restarter" }

// fakeCRI answers CRI's Status as a ready runtime.
type fakeCRI struct {
	runtimeapi.UnimplementedRuntimeServiceServer
}

func (fakeCRI) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
	}}}, nil
}

// serveCRI serves fakeCRI on containerd's socket in root until the test ends.
func serveCRI(t *testing.T, root string) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(root, "run/containerd/containerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(s, fakeCRI{})
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
}

func TestInstallRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := newInputs(t)
	const (
		noAnswer = "containerd did not answer CRI status on /run/containerd/containerd.sock within 300ms after the restart: "
		rolled   = "; rolled back to the files from before this run, but containerd does not answer after that either: "
	)
	changedConfig := func(s string) string {
		// Another file in a directory of its own, and no pins token any more.
		s = strings.Replace(s, "node_key_file = \"node.key\"\n", "", 1)
		return strings.Replace(s, "[nri]", "[[file]]\nsource = \"extra.pem\"\ndest = \"/etc/hopless/extra/extra.pem\"\n\n[nri]", 1)
	}
	tests := []struct {
		name string
		// first, when set, installs it cleanly before the run that fails.
		first   bool
		config  func(string) string
		inputs  func(t *testing.T, in inputs)
		restart func(t *testing.T, root string) systemd.Restarter
		// wantErr are the error's parts, in order.
		wantErr []string
	}{
		{
			name:    "first install, containerd never answers",
			restart: func(*testing.T, string) systemd.Restarter { return systemd.Command{Argv: []string{"true"}} },
			wantErr: []string{noAnswer, rolled, noAnswer},
		},
		{
			name: "first install, the restart command fails",
			restart: func(*testing.T, string) systemd.Restarter {
				return systemd.Command{Argv: []string{"sh", "-c", "echo down >&2; exit 7"}}
			},
			wantErr: []string{`restarting containerd: restart command "sh -c echo down >&2; exit 7": exit status 7: down`, rolled,
				`restarting containerd: restart command "sh -c echo down >&2; exit 7": exit status 7: down`},
		},
		{
			name:   "an upgrade: changed, new and dropped files",
			first:  true,
			config: changedConfig,
			inputs: func(t *testing.T, in inputs) {
				writeTree(t, in.files, map[string]string{"/ca.pem": "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n"}, 0o644)
			},
			restart: func(*testing.T, string) systemd.Restarter { return systemd.Command{Argv: []string{"true"}} },
			wantErr: []string{noAnswer, rolled, noAnswer},
		},
		{
			name: "containerd answers again after the rollback",
			restart: func(t *testing.T, root string) systemd.Restarter {
				calls := 0
				return restarter(func(context.Context) error {
					if calls++; calls == 2 {
						serveCRI(t, root)
					}
					return nil
				})
			},
			wantErr: []string{noAnswer, "; rolled back to the files from before this run, and containerd answers again"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := base.clone(t)
			root := newRoot(t)
			pre := tree(t, root)
			if tt.first {
				if _, err := in.installer(root, loadConfig(t, nil), io.Discard).Install(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if tt.inputs != nil {
				tt.inputs(t, in)
			}
			cfg := loadConfig(t, tt.config)
			before := tree(t, root)
			inst := in.installer(root, cfg, io.Discard)
			inst.Restart, inst.RestartTimeout = tt.restart(t, root), 300*time.Millisecond
			res, err := inst.Install(ctx)
			if err == nil {
				t.Fatal("Install: no error")
			}
			rest := err.Error()
			for _, w := range tt.wantErr {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("Install: %v\nwant, in order, %q", err, tt.wantErr)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(err.Error(), "rolling back failed") {
				t.Errorf("Install: %v; the rollback itself did not fail", err)
			}
			if res == nil || len(res.Changed) == 0 || res.Restarted {
				t.Errorf("Install result %+v, want the paths it changed and no restart", res)
			}
			// The files, the directories and the state are as they were before the run
			// (the fake CRI's socket aside).
			delete(before, "/run/containerd/containerd.sock")
			sameTree(t, "after the rollback", before, noSocket(tree(t, root)))
			if tt.first {
				s, err := in.installer(root, cfg, io.Discard).Status(ctx)
				if err != nil || s.Drift != 0 || !s.Installed || len(s.Files) != len(installed) {
					t.Errorf("Status after the rollback: %+v, %v", s, err)
				}
			}
			// And the node can still be taken back to how it was.
			if _, err := in.installer(root, cfg, io.Discard).Uninstall(ctx); err != nil {
				t.Fatal(err)
			}
			sameTree(t, "after uninstall", pre, noSocket(tree(t, root)))
		})
	}

	t.Run("containerd answers", func(t *testing.T) {
		t.Parallel()
		in := base.clone(t)
		root := newRoot(t)
		pre := tree(t, root)
		serveCRI(t, root)
		restarts := 0
		r := restarter(func(context.Context) error { restarts++; return nil })
		cfg := loadConfig(t, nil)
		inst := in.installer(root, cfg, io.Discard)
		inst.Restart, inst.RestartTimeout = r, 300*time.Millisecond
		res, err := inst.Install(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Changed, installed) || !res.Restarted || restarts != 1 {
			t.Errorf("Install: %+v after %d restarts, want the files installed and one restart", res, restarts)
		}
		// Nothing changed: no restart.
		inst = in.installer(root, cfg, io.Discard)
		inst.Restart, inst.RestartTimeout = r, 300*time.Millisecond
		if res, err := inst.Install(ctx); err != nil || len(res.Changed) != 0 || res.Restarted || restarts != 1 {
			t.Errorf("second Install: %+v, %v after %d restarts; want nothing and no restart", res, err, restarts)
		}
		inst = in.installer(root, cfg, io.Discard)
		inst.Restart, inst.RestartTimeout = r, 300*time.Millisecond
		res, err = inst.Uninstall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Restarted || restarts != 2 {
			t.Errorf("Uninstall: %+v after %d restarts, want a second restart", res, restarts)
		}
		sameTree(t, "after uninstall", pre, noSocket(tree(t, root)))
	})
}

func TestInstallNRIMode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base := newInputs(t)
	b, err := os.ReadFile("../examples/nri.toml")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "nri.toml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadInstall(p)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/opt/hopless/bin/hopless-nri",
		"/etc/hopless/ca.pem",
		"/etc/hopless/node.toml",
		"/etc/hopless/node.token",
		"/etc/nri/conf.d/10-hopless.conf",
		"/opt/nri/plugins/10-hopless",
		"/etc/containerd/conf.d/50-hopless.toml",
		"/etc/containerd/config.toml",
	}
	const wantDropIn = `# Written by hopless-install (nri mode); hopless-install uninstall removes it.
version = 3

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  plugin_path = '/opt/nri/plugins'
  plugin_config_path = '/etc/nri/conf.d'

# hopless-nri keeps <config_path>/<host>/hosts.toml.
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = '/etc/containerd/certs.d'
`
	const wantConf = `# Written by hopless-install.
node_config = "/etc/hopless/node.toml"
node_name = "worker-1"
hosts = "manage"
config_path = "/etc/containerd/certs.d"
state_dir = "/var/lib/hopless/nri"
containerd_socket = "/run/containerd/containerd.sock"
pins_token_file = "/etc/hopless/node.token"
log_level = "info"
log_file = "/var/lib/hopless/nri/plugin.log"
`
	// The node's own config sets no config_path: the drop-in does.
	const ownConfig = "version = 3\n\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"
	setup := func(t *testing.T) (inputs, string, *Installer) {
		in := base.clone(t)
		root := newRoot(t)
		writeTree(t, root, map[string]string{"/etc/containerd/config.toml": ownConfig}, 0o640)
		inst := in.installer(root, cfg, io.Discard)
		inst.Mode = ModeNRI
		return in, root, inst
	}

	t.Run("install and uninstall", func(t *testing.T) {
		t.Parallel()
		in, root, inst := setup(t)
		pre := tree(t, root)
		res, err := inst.Install(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Changed, want) {
			t.Errorf("Install changed %q, want %q", res.Changed, want)
		}
		for _, f := range []struct {
			path, text string
			mode       fs.FileMode
		}{
			{"/etc/containerd/conf.d/50-hopless.toml", wantDropIn, 0o644},
			{"/etc/nri/conf.d/10-hopless.conf", wantConf, 0o644},
			{"/opt/nri/plugins/10-hopless", "#!/bin/sh\n", 0o755},
			{"/etc/containerd/config.toml", "# imports added by hopless-install\nimports = ['/etc/containerd/conf.d/*.toml']\n" + ownConfig, 0o640},
		} {
			if text, mode := readNode(t, root, f.path); text != f.text || mode != f.mode {
				t.Errorf("%s (%v) =\n%s\nwant (%v)\n%s", f.path, mode, text, f.mode, f.text)
			}
		}
		// Nothing is staged inside containerd's NRI plugin directory, nor left beside it.
		for _, d := range []string{"/opt/nri/plugins", "/opt/nri"} {
			ents, err := os.ReadDir(filepath.Join(root, d))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if strings.HasPrefix(e.Name(), hostfs.TempPrefix) {
					t.Errorf("%s holds %s", d, e.Name())
				}
			}
		}
		if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/containerd.service.d")); !os.IsNotExist(err) {
			t.Errorf("nri mode made a systemd drop-in directory: %v", err)
		}
		res, err = in.installer(root, cfg, io.Discard).Install(ctx)
		if want := "the node has hopless installed in nri mode; run hopless-install uninstall before installing inprocess mode"; err == nil || err.Error() != want {
			t.Fatalf("an inprocess install over an nri install: %v, want %q", err, want)
		}
		if res != nil {
			t.Errorf("refused install changed %+v", res)
		}
		inst = in.installer(root, cfg, io.Discard)
		inst.Mode = ModeNRI
		if res, err := inst.Install(ctx); err != nil || len(res.Changed) != 0 {
			t.Errorf("second Install: %+v, %v; want nothing", res, err)
		}
		if _, err := in.installer(root, cfg, io.Discard).Uninstall(ctx); err != nil {
			t.Fatal(err)
		}
		sameTree(t, "after uninstall", pre, tree(t, root))
	})

	t.Run("rollback", func(t *testing.T) {
		t.Parallel()
		_, root, inst := setup(t)
		pre := tree(t, root)
		inst.Restart, inst.RestartTimeout = systemd.Command{Argv: []string{"true"}}, 300*time.Millisecond
		if _, err := inst.Install(ctx); err == nil || !strings.Contains(err.Error(), "; rolled back to the files from before this run, but containerd does not answer") {
			t.Fatalf("Install: %v, want a rollback", err)
		}
		sameTree(t, "after the rollback", pre, tree(t, root))
	})
}
