package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/install/hostfs/hostfstest"
	"github.com/hopless/hopless/install/node"
	"github.com/hopless/hopless/test/lab"
)

// installFiles writes the example install config of mode (install/examples), moved to
// the lab's slot, beside the files it copies onto the node: the lab's CA and the
// masters' node key. It returns the config's path.
func installFiles(t *testing.T, l *lab.Lab, example string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), "install", "examples", example))
	if err != nil {
		t.Fatal(err)
	}
	// The examples name the lab of slot 0.
	text := strings.NewReplacer("127.0.1.", fmt.Sprintf("127.%d.1.", l.Slot), "127.0.2.1:", fmt.Sprintf("127.%d.2.1:", l.Slot)).Replace(string(b))
	// containerd's metrics, where the tests read the plugin's.
	text = strings.Replace(text, "[containerd]\n", fmt.Sprintf("[containerd]\nmetrics_address = %q\n", lab.NodeMetricsAddr(l.Slot, 1)), 1)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "install.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(l.NodeKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runInstall runs bin/hopless-install with args; env adds to the environment.
func runInstall(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx := ctxFor(t, 3*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(root(t), "bin", "hopless-install"), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// mustInstall runs the installer and fails the test on an error.
func mustInstall(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runInstall(t, nil, args...)
	if err != nil {
		t.Fatalf("hopless-install %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// tree is every file, directory and link under dir (but those under skip, node
// paths) with its mode and content checksum, as hostfstest.Tree.
func tree(t *testing.T, dir string, skip ...string) map[string]string {
	t.Helper()
	m, err := hostfstest.Tree(dir, skip...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// treeDiff says how got differs from want.
func treeDiff(want, got map[string]string) string {
	return strings.Join(hostfstest.Diff(want, got), "\n")
}

// nodeData are the node paths that containerd, a running node and its NRI plugin
// write on their own: not the installer's, and left out of tree comparisons.
var nodeData = []string{"/var/lib/containerd", "/run", "/var/run", "/tmp", "/proc", "/sys", "/dev", "/var/lib/hopless/nri"}

func installStatus(t *testing.T, hostRoot string) node.Status {
	t.Helper()
	out := mustInstall(t, "status", "--host-root", hostRoot, "--json")
	var s node.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return s
}

// TestInstallKilledAnywhere kills the installer with SIGKILL after each step that
// lands on the node, in both modes, for install and for uninstall: a rerun always
// ends with exactly the files of a clean install, and uninstall with the tree as it
// was. No containerd runs here; the lab is up for its CA and node key only.
func TestInstallKilledAnywhere(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotInstallKilled, 1, 0)
	// Small stand-ins for the binaries keep the many runs cheap; the containerd one
	// says it is our build's release, for the downgrade check.
	src := t.TempDir()
	buildVersioned(t, filepath.Join(src, "containerd"), "2.4.2")
	if err := os.WriteFile(filepath.Join(src, "hopless-nri"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ mode, example string }{{node.ModeNRI, "nri.toml"}, {node.ModeInprocess, "inprocess.toml"}} {
		t.Run(tc.mode, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "host")
			if err := lab.NewHostRoot(host, lab.HostRootOptions{ToolsDir: l.ToolsDir}); err != nil {
				t.Fatal(err)
			}
			cfg := installFiles(t, l, tc.example)
			args := []string{"node", "--host-root", host, "--mode", tc.mode, "--config", cfg, "--node-name", "node-1", "--source-dir", src}
			before := tree(t, host)
			mustInstall(t, args...)
			// The state holds times; every other file is the clean install's.
			clean := tree(t, host, "/var/lib/hopless/install/state.json")
			mustInstall(t, "uninstall", "--host-root", host)
			if d := treeDiff(before, tree(t, host)); d != "" {
				t.Fatalf("uninstall after a clean install left the tree changed:\n%s", d)
			}
			kills := 0
			for n := 1; ; n++ {
				crash := []string{"HOPLESS_INSTALL_CRASH_AFTER=" + strconv.Itoa(n)}
				out, err := runInstall(t, crash, args...)
				installDone := err == nil
				if !installDone && !killed(err) {
					t.Fatalf("install with a kill after step %d failed otherwise: %v\n%s", n, err, out)
				}
				if out := mustInstall(t, args...); installDone && strings.TrimSpace(out) != "unchanged" {
					t.Fatalf("a rerun after a complete install printed %q, want unchanged", out)
				}
				if d := treeDiff(clean, tree(t, host, "/var/lib/hopless/install/state.json")); d != "" {
					t.Fatalf("killed after step %d, a rerun did not end in the clean install:\n%s", n, d)
				}
				if s := installStatus(t, host); s.Drift != 0 || !s.Complete {
					t.Fatalf("killed after step %d and rerun: status drift %d, complete %v", n, s.Drift, s.Complete)
				}
				plugins := filepath.Join(host, "opt", "nri", "plugins")
				if ents, err := os.ReadDir(plugins); err == nil {
					for _, e := range ents {
						if e.Name() != "10-hopless" {
							t.Fatalf("killed after step %d: %s holds %s", n, plugins, e.Name())
						}
					}
				}
				out, err = runInstall(t, crash, "uninstall", "--host-root", host)
				uninstallDone := err == nil
				if !uninstallDone && !killed(err) {
					t.Fatalf("uninstall with a kill after step %d failed otherwise: %v\n%s", n, err, out)
				}
				mustInstall(t, "uninstall", "--host-root", host)
				if d := treeDiff(before, tree(t, host)); d != "" {
					t.Fatalf("uninstall killed after step %d and rerun left the tree changed:\n%s", n, d)
				}
				if installDone && uninstallDone {
					break
				}
				kills++
			}
			if kills < 10 {
				t.Fatalf("only %d kill points; the installer's steps are not counted", kills)
			}
			t.Logf("%s: killed at %d points", tc.mode, kills)
		})
	}
}

// buildVersioned builds, at out, a small static Go binary whose build info says it
// is containerd ver, as containerd's own builds do (-X on its version package).
func buildVersioned(t *testing.T, out, ver string) {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fakecontainerd\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X github.com/containerd/containerd/v2/version.Version="+ver, ".")
	cmd.Dir, cmd.Env = src, append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building a containerd that says %s: %v\n%s", ver, err, b)
	}
}

func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// TestInstallRefuses feeds the installer nodes and configs it must refuse: each
// error names what is at fault, and the node's tree is left exactly as it was.
func TestInstallRefuses(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotInstallRefuses, 1, 0)
	editConfig := func(old, new string) func(*testing.T, string) {
		return func(t *testing.T, host string) {
			p := filepath.Join(host, "etc", "containerd", "config.toml")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), old) {
				t.Fatalf("the host root's config.toml has no %q:\n%s", old, b)
			}
			if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name, mode, example string
		node                func(*testing.T, string)
		config              func(string) string
		want                []string
	}{
		{name: "CRI local pull", mode: node.ModeInprocess, example: "inprocess.toml",
			node: editConfig("snapshotter = 'native'", "snapshotter = 'native'\n  use_local_image_pull = true"),
			want: []string{"use_local_image_pull = true", "local path"}},
		{name: "NRI disabled", mode: node.ModeNRI, example: "nri.toml",
			node: editConfig("disabled_plugins = [", "disabled_plugins = [\n  'io.containerd.nri.v1.nri',"),
			want: []string{"io.containerd.nri.v1.nri", "disabled"}},
		{name: "config version 2", mode: node.ModeNRI, example: "nri.toml",
			node: editConfig("version = 3", "version = 2"),
			want: []string{"config version 2", "containerd config migrate"}},
		{name: "containerd downgrade", mode: node.ModeInprocess, example: "inprocess.toml",
			node: func(t *testing.T, host string) {
				buildVersioned(t, filepath.Join(host, "usr", "local", "bin", "containerd"), "2.99.0")
			},
			want: []string{"containerd 2.99.0", "/usr/local/bin/containerd", "containerd 2.4.2", "downgrade"}},
		{name: "bad weight", mode: node.ModeNRI, example: "nri.toml",
			config: func(s string) string { return strings.Replace(s, "weight = 1", "weight = 0", 1) },
			want:   []string{"registry[0].endpoint[0].weight"}},
		{name: "missing file", mode: node.ModeNRI, example: "nri.toml",
			config: func(s string) string { return strings.Replace(s, `source = "ca.pem"`, `source = "nope.pem"`, 1) },
			want:   []string{"nope.pem"}},
		{name: "unknown key", mode: node.ModeInprocess, example: "inprocess.toml",
			config: func(s string) string { return strings.Replace(s, "[containerd]", "[containerd]\nconfg = 1", 1) },
			want:   []string{"containerd.confg", "unknown key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := filepath.Join(t.TempDir(), "host")
			if err := lab.NewHostRoot(host, lab.HostRootOptions{ToolsDir: l.ToolsDir}); err != nil {
				t.Fatal(err)
			}
			if tc.node != nil {
				tc.node(t, host)
			}
			cfg := installFiles(t, l, tc.example)
			if tc.config != nil {
				b, err := os.ReadFile(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(cfg, []byte(tc.config(string(b))), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := tree(t, host)
			out, err := runInstall(t, nil, "node", "--host-root", host, "--mode", tc.mode, "--config", cfg, "--node-name", "node-1")
			if err == nil {
				t.Fatalf("hopless-install accepted it:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the error does not say %q:\n%s", w, out)
				}
			}
			if d := treeDiff(before, tree(t, host)); d != "" {
				t.Errorf("a refused install changed the node:\n%s", d)
			}
		})
	}
}

// hostRootLab is a lab of three masters and one node, node-1, started from a fake
// host root as a fresh node: the distro's containerd, config and unit.
func hostRootLab(t *testing.T, slot int) (*lab.Lab, string) {
	t.Helper()
	// Made before the lab, so that the lab is down before it goes.
	host := hostRootDir(t)
	l := upLab(t, slot, 3, 0)
	if err := lab.NewHostRoot(host, lab.HostRootOptions{ToolsDir: l.ToolsDir}); err != nil {
		t.Fatal(err)
	}
	if err := l.StartHostRootNode(ctxFor(t, 2*time.Minute), "node-1", host); err != nil {
		t.Fatal(err)
	}
	return l, host
}

// restartCommand restarts the lab's node-1 as systemd would: from its unit and
// drop-ins, read again.
func restartCommand(t *testing.T, l *lab.Lab) string {
	return filepath.Join(root(t), "bin", "hopless-lab") + " restart --dir " + l.Dir + " node-1"
}

// nodeCommand is the command line node-1 runs now.
func nodeCommand(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	reloaded, err := lab.Open(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range reloaded.Procs {
		if p.Name == "node-1" {
			if !p.Alive() {
				t.Fatal("node-1 does not run")
			}
			return p.Args
		}
	}
	t.Fatal("the lab has no node-1")
	return nil
}

// installAndPull installs mode with its example config into the node's host root,
// restarts containerd through the installer, and pulls an image that the masters
// must serve. It returns the tree from before the install.
func installAndPull(t *testing.T, l *lab.Lab, host, mode, example string) (map[string]string, []string) {
	t.Helper()
	before := tree(t, host, nodeData...)
	cfg := installFiles(t, l, example)
	args := []string{"node", "--host-root", host, "--mode", mode, "--config", cfg, "--node-name", "node-1", "--restart-command", restartCommand(t, l)}
	out := mustInstall(t, args...)
	if !strings.Contains(out, "containerd restarted; CRI answers") {
		t.Fatalf("the install did not restart containerd:\n%s", out)
	}
	repo := lab.UpstreamPath + "/install-" + mode
	img := seed(t, l, repo, "v1", 2, 1<<20)
	waitPullable(t, l, host, mode)
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	if got := nriServed(t, l, img); sum(got) != len(img.Layers) {
		t.Fatalf("blob GETs served by the masters %v, want the image's %d layers", got, len(img.Layers))
	}
	for d, n := range blobGETsUpstream(t, l) {
		if n != 1 {
			t.Errorf("the upstream served blob %s %d times, want once", d, n)
		}
	}
	if out := mustInstall(t, args...); strings.TrimSpace(out) != "unchanged" {
		t.Fatalf("a second install printed %q, want unchanged", out)
	}
	return before, args
}

// waitPullable waits, in nri mode, for the pre-installed plugin that containerd
// launched to write the image host's hosts.toml.
func waitPullable(t *testing.T, l *lab.Lab, host, mode string) {
	t.Helper()
	if mode != node.ModeNRI {
		return
	}
	p := filepath.Join(host, "etc", "containerd", "certs.d", l.ImageHost, "hosts.toml")
	deadline := time.Now().Add(time.Minute)
	for {
		b, err := os.ReadFile(p)
		if err == nil && strings.HasPrefix(string(b), "# managed by hopless-nri") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("hopless-nri did not write %s: %v %q", p, err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// checkUninstall changes a file and sees it as drift, then uninstalls with a
// restart and compares the tree with before.
func checkUninstall(t *testing.T, l *lab.Lab, host string, before map[string]string, drifted string) {
	t.Helper()
	if s := installStatus(t, host); s.Drift != 0 || !s.Complete || s.Release == "" {
		t.Fatalf("status after the install: %+v", s)
	}
	metrics := startWatch(t, l, host)
	waitMetric(t, metrics, "hopless_install_drift_files 0")
	p := filepath.Join(host, drifted)
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("# edited by hand\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s := installStatus(t, host)
	var drift []string
	for _, f := range s.Files {
		if f.State != node.FileOK {
			drift = append(drift, f.Path+" "+f.State)
		}
	}
	if s.Drift != 1 || len(drift) != 1 || drift[0] != drifted+" "+node.FileChanged {
		t.Fatalf("after editing %s, status shows drift %d: %q", drifted, s.Drift, drift)
	}
	waitMetric(t, metrics, "hopless_install_drift_files 1")
	out := mustInstall(t, "uninstall", "--host-root", host, "--restart-command", restartCommand(t, l))
	if !strings.Contains(out, "containerd restarted; CRI answers") {
		t.Fatalf("uninstall did not restart containerd:\n%s", out)
	}
	if args := nodeCommand(t, l); !slices.Contains(args, "/usr/local/bin/containerd") {
		t.Fatalf("after uninstall node-1 runs %q, want the distro's /usr/local/bin/containerd", args)
	}
	if _, err := l.Crictl(ctxFor(t, 30*time.Second), 1, "version"); err != nil {
		t.Fatalf("CRI after uninstall: %v", err)
	}
	if d := treeDiff(before, tree(t, host, nodeData...)); d != "" {
		t.Fatalf("uninstall left the node's tree changed:\n%s", d)
	}
}

// startWatch runs hopless-install watch on the host root, checking every second,
// and returns its metrics URL. It is stopped by its PID when the test ends.
func startWatch(t *testing.T, l *lab.Lab, host string) string {
	t.Helper()
	addr := fmt.Sprintf("127.%d.6.9:9103", l.Slot)
	cmd := exec.Command(filepath.Join(root(t), "bin", "hopless-install"), "watch", "--host-root", host, "--interval", "1s", "--metrics-listen", addr)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("hopless-install watch:\n%s", out.String())
		}
	})
	return "http://" + addr + "/metrics"
}

// waitMetric waits until the metrics at url have a line that starts with want.
func waitMetric(t *testing.T, url, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			if slices.ContainsFunc(strings.Split(last, "\n"), func(l string) bool { return strings.HasPrefix(l, want) }) {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s never had %q; last:\n%s", url, want, last)
}

// TestInstallInprocess installs inprocess mode into a running node's host root: the
// node restarts on hopless's containerd build from the systemd drop-in, pulls through
// the masters, shows drift, and goes back to its own containerd on uninstall.
func TestInstallInprocess(t *testing.T) {
	t.Parallel()
	l, host := hostRootLab(t, slotInstallInprocess)
	before, _ := installAndPull(t, l, host, node.ModeInprocess, "inprocess.toml")
	if args := nodeCommand(t, l); !slices.Contains(args, node.BinDir+"/containerd") {
		t.Fatalf("after the install node-1 runs %q, want %s/containerd", args, node.BinDir)
	}
	// The balancer in containerd served the pull: its metrics say so.
	waitMetric(t, "http://"+lab.NodeMetricsAddr(l.Slot, 1)+"/v1/metrics", `hopless_plugin_bytes_total{`)
	s := installStatus(t, host)
	if s.Containerd != "2.4.2" || s.Running != "2.4.2" || s.Mode != node.ModeInprocess {
		t.Fatalf("status: containerd %q, running %q, mode %q; want 2.4.2, 2.4.2, inprocess", s.Containerd, s.Running, s.Mode)
	}
	checkUninstall(t, l, host, before, node.NodeConfig)
}

// TestInstallNRI installs nri mode with the plugin pre-installed: the node keeps its
// containerd, which launches hopless-nri after the restart; the plugin writes the
// image host's hosts.toml and pulls go to the masters; uninstall hands it back.
func TestInstallNRI(t *testing.T) {
	t.Parallel()
	l, host := hostRootLab(t, slotInstallNRI)
	before, _ := installAndPull(t, l, host, node.ModeNRI, "nri.toml")
	if args := nodeCommand(t, l); !slices.Contains(args, "/usr/local/bin/containerd") {
		t.Fatalf("in nri mode node-1 runs %q, want its own /usr/local/bin/containerd", args)
	}
	ents, err := os.ReadDir(filepath.Join(host, "opt", "nri", "plugins"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "10-hopless" {
		t.Fatalf("/opt/nri/plugins holds %v (%v), want 10-hopless alone", ents, err)
	}
	checkUninstall(t, l, host, before, "/etc/nri/conf.d/10-hopless.conf")
}

// TestInstallRollback restarts containerd through a command whose first run leaves
// it dead: CRI does not answer within restart_timeout, the installer puts the files
// back as they were before the run and restarts again, and the node runs its own
// containerd as before.
func TestInstallRollback(t *testing.T) {
	t.Parallel()
	l, host := hostRootLab(t, slotInstallRollback)
	before := tree(t, host, nodeData...)
	cfg := installFiles(t, l, "inprocess.toml")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), `restart_timeout = "60s"`, `restart_timeout = "5s"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	labBin := filepath.Join(root(t), "bin", "hopless-lab")
	script := filepath.Join(dir, "restart.sh")
	// The first restart kills containerd and starts nothing; the second restarts it.
	text := fmt.Sprintf("#!/bin/sh\nset -e\nif [ ! -e %[1]s/first ]; then touch %[1]s/first; exec %[2]s signal --dir %[3]s node-1 KILL; fi\nexec %[2]s restart --dir %[3]s node-1\n", dir, labBin, l.Dir)
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runInstall(t, nil, "node", "--host-root", host, "--mode", node.ModeInprocess, "--config", cfg, "--node-name", "node-1", "--restart-command", script)
	if err == nil {
		t.Fatalf("the install succeeded with a containerd that never came back:\n%s", out)
	}
	for _, w := range []string{"did not answer CRI status", "rolled back", "containerd answers again"} {
		if !strings.Contains(out, w) {
			t.Errorf("the error does not say %q:\n%s", w, out)
		}
	}
	if args := nodeCommand(t, l); !slices.Contains(args, "/usr/local/bin/containerd") {
		t.Fatalf("after the rollback node-1 runs %q, want its own /usr/local/bin/containerd", args)
	}
	if d := treeDiff(before, tree(t, host, nodeData...)); d != "" {
		t.Fatalf("the rollback of a first install left the tree changed:\n%s", d)
	}
	if s := installStatus(t, host); s.Installed {
		t.Fatalf("status after the rollback of a first install: %+v", s)
	}
}
