package lab

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/containerd/v2/version"
)

// hostRootDir is a new dir for a host root that is removed when the test ends, but
// only if nothing is mounted below it (removing a tree with /dev bind-mounted in it
// would remove the machine's device nodes) and no process runs in it. Call it before
// the lab that runs processes there is made, so that the lab is down first.
func hostRootDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hopless-hostroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if m, err := MountsUnder(dir); err != nil || len(m) > 0 {
			t.Errorf("leaving %s in place: mounts below it: %q, %v", dir, m, err)
			return
		}
		if pids, err := ProcsInHostRoot(dir); err != nil || len(pids) > 0 {
			t.Errorf("leaving %s in place: processes run in it: %v, %v", dir, pids, err)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing host root: %v", err)
		}
	})
	return dir
}

// loadContainerdConfig loads path as containerd does: over a config of the current
// version, migrating the file and following its imports.
func loadContainerdConfig(t *testing.T, path string) *srvconfig.Config {
	t.Helper()
	cfg := &srvconfig.Config{Version: version.ConfigVersion}
	if err := srvconfig.LoadConfig(context.Background(), path, cfg); err != nil {
		t.Fatalf("containerd's LoadConfig of %s: %v", path, err)
	}
	return cfg
}

func pluginSection(t *testing.T, cfg *srvconfig.Config, keys ...string) map[string]any {
	t.Helper()
	m, _ := cfg.Plugins[keys[0]].(map[string]any)
	for _, k := range keys[1:] {
		m, _ = m[k].(map[string]any)
	}
	if m == nil {
		t.Fatalf("config has no plugin section %q: %v", keys, cfg.Plugins)
	}
	return m
}

func TestNewHostRoot(t *testing.T) {
	_, tools := binDirs(t)
	root := hostRootDir(t)
	if err := NewHostRoot(root, HostRootOptions{ToolsDir: tools}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "var/lib", "etc/containerd/certs.d"} {
		if fi, err := os.Lstat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: want a dir, got %v", d, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp: want mode 1777, got %v, %v", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(root, "var/run")); err != nil || l != "../run" {
		t.Errorf("var/run: want a symlink to ../run, got %q, %v", l, err)
	}
	bin := filepath.Join(root, HostContainerdBin)
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("%s: want mode 0755, got %v", HostContainerdBin, err)
	}
	if err := checkStatic(bin); err != nil {
		t.Error(err)
	}
	if argv, err := UnitExecStart(root, ContainerdUnit); err != nil || !reflect.DeepEqual(argv, []string{HostContainerdBin}) {
		t.Errorf("the unit's ExecStart: %q, %v", argv, err)
	}

	conf := filepath.Join(root, HostContainerdConfig)
	raw, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "imports") {
		t.Errorf("the distro config has imports, which the installer is to add:\n%s", raw)
	}
	cfg := loadContainerdConfig(t, conf)
	if cfg.Root != "/var/lib/containerd" || cfg.State != "/run/containerd" || len(cfg.Imports) != 0 {
		t.Errorf("root %q, state %q, imports %q", cfg.Root, cfg.State, cfg.Imports)
	}
	// Version 3 keeps server settings in [grpc]; loading moves them to the plugins.
	if a := pluginSection(t, cfg, "io.containerd.server.v1.grpc")["address"]; a != HostContainerdSock {
		t.Errorf("grpc address %v, want %s", a, HostContainerdSock)
	}
	if a := pluginSection(t, cfg, "io.containerd.server.v1.ttrpc")["address"]; a != HostContainerdSock+".ttrpc" {
		t.Errorf("ttrpc address %v", a)
	}
	if !slices.Equal(cfg.DisabledPlugins, disabledPlugins()) || slices.Contains(cfg.DisabledPlugins, "io.containerd.nri.v1.nri") {
		t.Errorf("disabled plugins %q, want %q (NRI on)", cfg.DisabledPlugins, disabledPlugins())
	}
	images := pluginSection(t, cfg, "io.containerd.cri.v1.images")
	if images["snapshotter"] != "native" || pluginSection(t, cfg, "io.containerd.cri.v1.images", "registry")["config_path"] != HostCertsDir {
		t.Errorf("CRI images: %v", images)
	}
	transfer := pluginSection(t, cfg, "io.containerd.transfer.v1.local")
	if transfer["config_path"] != HostCertsDir {
		t.Errorf("transfer: %v", transfer)
	}
	unpack, _ := transfer["unpack_config"].([]any)
	if len(unpack) != 1 || unpack[0].(map[string]any)["snapshotter"] != "native" || unpack[0].(map[string]any)["differ"] != "walking" {
		t.Errorf("transfer unpack_config: %v", transfer["unpack_config"])
	}

	// What an installer does: imports, which make containerd read a drop-in. Paths
	// in the files are host paths, so the check reads the drop-in through the host
	// root by a relative import.
	withImports := strings.Replace(string(raw), "version = 3\n", "version = 3\nimports = ['conf.d/*.toml']\n", 1)
	if err := os.WriteFile(conf, []byte(withImports), 0o644); err != nil {
		t.Fatal(err)
	}
	dropin := "version = 3\n[plugins.'" + HoplessSection + "']\n  [[plugins.'" + HoplessSection + "'.registry]]\n    host = 'registry.example:5001'\n"
	if err := writeFile(filepath.Join(root, "etc/containerd/conf.d/50-hopless.toml"), []byte(dropin), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg = loadContainerdConfig(t, conf)
	if regs, _ := pluginSection(t, cfg, HoplessSection)["registry"].([]any); len(regs) != 1 {
		t.Errorf("the drop-in's hopless section: %v", cfg.Plugins[HoplessSection])
	}
	if pluginSection(t, cfg, "io.containerd.cri.v1.images")["snapshotter"] != "native" {
		t.Error("the drop-in lost the main config's CRI section")
	}

	if err := NewHostRoot(root, HostRootOptions{ToolsDir: tools}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("NewHostRoot over a host root: %v, want a not-empty error", err)
	}
}

// tree lists every path below root with its mode, to see that running a process
// from a host root leaves it as it was.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out = append(out, strings.TrimPrefix(p, root)+" "+fi.Mode().String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHostRootExec(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("hostroot-exec mounts and chroots: it needs root")
	}
	bin, _ := binDirs(t)
	pause := filepath.Join(bin, "lab-pause")
	if _, err := os.Stat(pause); err != nil {
		t.Skipf("%s is not built (make build): %v", pause, err)
	}
	// A host root of the mountpoints and one static program.
	newRoot := func(skip string) string {
		root := hostRootDir(t)
		for _, d := range hostMountpoints() {
			if d != skip {
				if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := CopyFile(pause, filepath.Join(root, "bin", "pause"), 0o755); err != nil {
			t.Fatal(err)
		}
		root, err := filepath.EvalSymlinks(root)
		if err != nil {
			t.Fatal(err)
		}
		return root
	}

	root, noSys, dynamic := newRoot(""), newRoot("sys"), newRoot("")
	l := &Lab{Dir: t.TempDir(), BinDir: bin}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := tree(t, root)
	if err := l.StartHostRootProc(ctx, "pause", root, []string{"/bin/pause"}, nil); err != nil {
		t.Fatal(err)
	}
	p := l.proc("pause")
	firstPID := p.PID
	pid := strconv.Itoa(p.PID)
	if !p.Alive() || p.HostRoot != root {
		t.Fatalf("after start: alive %v, host root %q", p.Alive(), p.HostRoot)
	}
	if r, err := os.Readlink("/proc/" + pid + "/root"); err != nil || r != root {
		t.Errorf("its root is %q, %v; want %s", r, err, root)
	}
	if exe, err := os.Readlink("/proc/" + pid + "/exe"); err != nil || exe != filepath.Join(root, "bin", "pause") {
		t.Errorf("its exe is %q, %v", exe, err)
	}
	if env, err := os.ReadFile("/proc/" + pid + "/environ"); err != nil || string(env) != strings.Join(hostEnv(), "\x00")+"\x00" {
		t.Errorf("its environment is %q, %v; want %q", env, err, hostEnv())
	}
	// Its mounts, relative to its root, are in its namespace only.
	theirs, err := mountsUnder("/proc/"+pid+"/mountinfo", "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/proc", "/sys", "/dev", "/tmp"} {
		if !slices.Contains(theirs, want) {
			t.Errorf("its mounts %q lack %s", theirs, want)
		}
	}
	if ours, err := MountsUnder(root); err != nil || len(ours) > 0 {
		t.Errorf("mounts below the host root in the machine's namespace: %q, %v", ours, err)
	}
	if err := os.WriteFile("/proc/"+pid+"/root/tmp/marker", []byte("x"), 0o644); err != nil {
		t.Fatalf("writing to its /tmp: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp", "marker")); err == nil {
		t.Error("a file in its /tmp is in the host root's tmp dir: /tmp is no tmpfs of its own")
	}
	if err := l.Stop("pause"); err != nil {
		t.Fatal(err)
	}
	if ours, err := MountsUnder(root); err != nil || len(ours) > 0 {
		t.Errorf("mounts below the host root after stop: %q, %v", ours, err)
	}
	if after := tree(t, root); !slices.Equal(before, after) {
		t.Errorf("running changed the host root:\nbefore %q\nafter  %q", before, after)
	}

	if err := l.Start(ctx, "pause"); err != nil {
		t.Fatalf("start again: %v", err)
	}
	if np := l.proc("pause"); !np.Alive() || np.PID == firstPID || np.HostRoot != root {
		t.Errorf("after start again: pid %d (was %d), alive %v", np.PID, firstPID, np.Alive())
	}
	if err := l.Stop("pause"); err != nil {
		t.Fatal(err)
	}

	t.Run("a missing mountpoint", func(t *testing.T) {
		before := tree(t, noSys)
		err := l.StartHostRootProc(ctx, "no-sys", noSys, []string{"/bin/pause"}, nil)
		if err == nil || !strings.Contains(err.Error(), "no mountpoint dir /sys") {
			t.Errorf("got %v, want an error naming /sys", err)
		}
		if after := tree(t, noSys); !slices.Equal(before, after) {
			t.Errorf("the failed start changed the host root:\nbefore %q\nafter  %q", before, after)
		}
	})

	t.Run("a dynamic program", func(t *testing.T) {
		if checkStatic("/bin/true") == nil {
			t.Skip("/bin/true is static here")
		}
		if err := CopyFile("/bin/true", filepath.Join(dynamic, "bin", "true"), 0o755); err != nil {
			t.Fatal(err)
		}
		err := l.StartHostRootProc(ctx, "dynamic", dynamic, []string{"/bin/true"}, nil)
		if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("got %v, want a dynamically linked error", err)
		}
	})

	t.Run("not in a mount namespace of its own", func(t *testing.T) {
		// No mountpoints: even if the check failed, nothing would be mounted.
		out, err := start("shared-ns", []string{filepath.Join(bin, "hopless-lab"), "hostroot-exec", "--root", t.TempDir(), "--", "/bin/pause"},
			filepath.Join(t.TempDir(), "log"), "")
		if err != nil {
			t.Fatal(err)
		}
		if !waitGone(out, 10*time.Second) {
			t.Fatal("hostroot-exec in the machine's mount namespace did not exit")
		}
		if log := tail(out.Log, 5); !strings.Contains(log, "parent's mount namespace") {
			t.Errorf("its log: %s", log)
		}
	})
}

func TestHostRootSocket(t *testing.T) {
	l := &Lab{Dir: t.TempDir()}
	short := "/h"
	if p, err := l.hostRootSocket("host-1", short); err != nil || p != "/h"+HostContainerdSock {
		t.Errorf("a short host root: %q, %v", p, err)
	}
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 80))
	p, err := l.hostRootSocket("host-1", long)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(l.shortSocketDir()) })
	if len(p) > maxSocketPath {
		t.Errorf("socket path %s is %d bytes, over %d", p, len(p), maxSocketPath)
	}
	if target, err := os.Readlink(p); err != nil || target != filepath.Join(long, HostContainerdSock) {
		t.Errorf("%s links to %q, %v", p, target, err)
	}
	// Again: the old link is replaced.
	if again, err := l.hostRootSocket("host-1", long); err != nil || again != p {
		t.Errorf("again: %q, %v", again, err)
	}
}
