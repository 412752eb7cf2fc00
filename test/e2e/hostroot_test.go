package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// hostRootDir is a new dir for a host root, removed when the test ends unless
// something is still mounted below it (removing a bind-mounted /dev would remove the
// machine's device nodes) or a process runs in it. Call it before upLab, so that the
// lab is down before this cleanup runs.
func hostRootDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hopless-hostroot-")
	if err != nil {
		t.Fatal(err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m, err := lab.MountsUnder(dir); err != nil || len(m) > 0 {
			t.Errorf("leaving %s in place: mounts below it: %q, %v", dir, m, err)
			return
		}
		if pids, err := lab.ProcsInHostRoot(dir); err != nil || len(pids) > 0 {
			t.Errorf("leaving %s in place: processes run in it: %v, %v", dir, pids, err)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing host root: %v", err)
		}
	})
	return dir
}

// procPID is the recorded PID of the lab process name.
func procPID(t *testing.T, l *lab.Lab, name string) int {
	t.Helper()
	for _, s := range l.Status() {
		if s.Name == name {
			if !s.Alive {
				t.Fatalf("%s (pid %d) does not run", name, s.PID)
			}
			return s.PID
		}
	}
	t.Fatalf("lab has no process %s", name)
	return 0
}

// checkExe checks that the lab process name runs the host root's program at path.
func checkExe(t *testing.T, l *lab.Lab, name, root, path string) {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", procPID(t, l, name)))
	if err != nil || exe != filepath.Join(root, path) {
		t.Errorf("%s runs %q (%v), want the host root's %s", name, exe, err, path)
	}
}

// installInprocess does by hand what the installer does for an inprocess node: our
// containerd in /opt/hopless/bin, a systemd drop-in that runs it, the lab's CA, a
// containerd drop-in with the hopless section listing the masters, and imports in
// config.toml. Paths in the files are host paths.
func installInprocess(t *testing.T, l *lab.Lab, root string) {
	t.Helper()
	if err := lab.CopyFile(filepath.Join(l.BinDir, "containerd"), filepath.Join(root, "opt/hopless/bin/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := lab.CopyFile(l.CA, filepath.Join(root, "etc/hopless/ca.pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(path, body string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/systemd/system/containerd.service.d/50-hopless.conf",
		"[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd --config /etc/containerd/config.toml\n")
	var b strings.Builder
	s := lab.HoplessSection
	fmt.Fprintf(&b, "version = 3\n\n[plugins.'%s']\n  [[plugins.'%s'.registry]]\n    host = '%s'\n", s, s, l.ImageHost)
	fmt.Fprintf(&b, "    [plugins.'%s'.registry.tls]\n      ca = '/etc/hopless/ca.pem'\n", s)
	for _, m := range l.Masters {
		fmt.Fprintf(&b, "    [[plugins.'%s'.registry.endpoint]]\n      url = 'https://%s'\n", s, m.Addr)
	}
	write("etc/containerd/conf.d/50-hopless.toml", b.String())
	cfg, err := os.ReadFile(filepath.Join(root, lab.HostContainerdConfig))
	if err != nil {
		t.Fatal(err)
	}
	withImports := strings.Replace(string(cfg), "version = 3\n", "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n", 1)
	if withImports == string(cfg) {
		t.Fatalf("config.toml has no version = 3 line to add imports after:\n%s", cfg)
	}
	write(lab.HostContainerdConfig, withImports)
}

// TestHostRootNode runs a node from a host root: a fresh distro node with stock
// containerd, then, after an inprocess install by hand and a restart, our containerd
// pulling through the masters; a restart by the CLI; and no mounts left after stop.
func TestHostRootNode(t *testing.T) {
	t.Parallel()
	root := hostRootDir(t)
	l := upLab(t, slotHostRoot, 3, 0)
	if err := lab.NewHostRoot(root, lab.HostRootOptions{ToolsDir: l.ToolsDir}); err != nil {
		t.Fatal(err)
	}
	const name = "host-1"
	ctx := ctxFor(t, 4*time.Minute)
	if err := l.StartHostRootNode(ctx, name, root); err != nil {
		t.Fatal(err)
	}
	node, err := l.NodeIndex(name)
	if err != nil {
		t.Fatal(err)
	}
	noMounts := func(when string) {
		t.Helper()
		if m, err := lab.MountsUnder(root); err != nil || len(m) > 0 {
			t.Errorf("%s: mounts below the host root in the machine's namespace: %q, %v", when, m, err)
		}
	}

	t.Run("a fresh node runs the distro's containerd and config", func(t *testing.T) {
		checkExe(t, l, name, root, lab.HostContainerdBin)
		if _, err := os.Stat(filepath.Join(root, lab.HostContainerdSock)); err != nil {
			t.Errorf("containerd's socket is not in the host root's /run: %v", err)
		}
		// crictl info does not show CRI's image config; a pull shows that CRI reads
		// hosts.toml from the host's /etc/containerd/certs.d, with host paths in it.
		dir := filepath.Join(root, lab.HostCertsDir, l.Upstream)
		if err := lab.CopyFile(l.CA, filepath.Join(dir, "ca.pem"), 0o644); err != nil {
			t.Fatal(err)
		}
		hosts := fmt.Sprintf("server = \"https://%s\"\nca = \"%s\"\n", l.Upstream, filepath.Join(lab.HostCertsDir, l.Upstream, "ca.pem"))
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			t.Fatal(err)
		}
		direct := seed(t, l, "lab/direct", "v1", 1, 256<<10)
		pull(t, l, node, l.Upstream+"/lab/direct:v1", direct.Digest)
		snaps, err := os.ReadDir(filepath.Join(root, "var/lib/containerd/io.containerd.snapshotter.v1.native/snapshots"))
		if err != nil || len(snaps) == 0 {
			t.Errorf("no native snapshots in the host root's /var/lib/containerd after the pull: %v", err)
		}
		noMounts("while it runs")
	})

	repo := lab.UpstreamPath + "/hostroot"
	img := seed(t, l, repo, "v1", 2, 1<<20)
	t.Run("after an inprocess install and a restart it pulls through the masters", func(t *testing.T) {
		installInprocess(t, l, root)
		if err := l.Stop(name); err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		checkExe(t, l, name, root, "/opt/hopless/bin/containerd")
		if before := servedBy(t, l); len(before) > 0 {
			t.Fatalf("masters served blobs before the pull: %s", describe(before))
		}
		pull(t, l, node, l.PullRef(repo, "v1"), img.Digest)
		served := servedBy(t, l)
		total := 0
		for _, n := range served {
			total += n
		}
		if total < len(img.Layers) {
			t.Errorf("the masters served %d blob GETs (%s), want at least the %d layers", total, describe(served), len(img.Layers))
		}
	})

	t.Run("hopless-lab restart runs it again, and the test's lab follows", func(t *testing.T) {
		old := procPID(t, l, name)
		if out, err := hoplessLab(t, "restart", "--dir", l.Dir, name); err != nil {
			t.Fatalf("restart: %v\n%s", err, out)
		}
		if pid := procPID(t, l, name); pid == old {
			t.Errorf("pid %d did not change across the restart", pid)
		}
		checkExe(t, l, name, root, "/opt/hopless/bin/containerd")
		if out, err := l.Crictl(ctx, node, "images", "-q"); err != nil || !strings.Contains(out, "sha256:") {
			t.Errorf("after the restart the node has no images: %v: %s", err, out)
		}
	})

	t.Run("stop leaves no mounts of the host root", func(t *testing.T) {
		pid := procPID(t, l, name)
		if err := l.Stop(name); err != nil {
			t.Fatal(err)
		}
		if (&lab.Proc{PID: pid, HostRoot: root, Tag: root}).Alive() {
			t.Errorf("pid %d still runs after stop", pid)
		}
		noMounts("after stop")
		if ents, err := os.ReadDir(filepath.Join(root, "tmp")); err != nil || len(ents) > 0 {
			t.Errorf("the host root's tmp dir after stop: %d entries, %v", len(ents), err)
		}
	})
}
