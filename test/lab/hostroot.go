package lab

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/template"
)

// A host root is a node's root filesystem in a directory, as an installer sees it
// through --host-root: /etc, /opt, /usr/local/bin and so on, with host paths in its
// files. The lab runs a node from it chrooted (hostroot-exec, hostnode.go), so that
// those paths mean what they mean on a real node.

// Host paths inside a host root, as a distribution lays them out.
const (
	HostContainerdConfig = "/etc/containerd/config.toml"
	HostContainerdUnit   = "/etc/systemd/system/containerd.service"
	HostContainerdBin    = "/usr/local/bin/containerd"
	HostContainerdSock   = "/run/containerd/containerd.sock"
	HostCertsDir         = "/etc/containerd/certs.d"
)

// HostRootOptions say what NewHostRoot puts in a host root.
type HostRootOptions struct {
	// ToolsDir holds containerd-stock, installed as /usr/local/bin/containerd.
	ToolsDir string
}

// hostMountpoints are the dirs that hostroot-exec mounts on; they are part of the
// skeleton, so that running a node never adds them.
func hostMountpoints() []string { return []string{"proc", "sys", "dev", "tmp"} }

// distroConfig is /etc/containerd/config.toml as a distribution ships it: version 3,
// server settings at the top level ([grpc]), and no imports, which an installer has
// to add. Only what this machine needs differs from containerd's defaults: the
// snapshotters that do not work here are disabled and CRI and the transfer service
// use native. NRI keeps its defaults (on, /var/run/nri/nri.sock, /opt/nri/plugins,
// /etc/nri/conf.d).
var distroConfig = template.Must(template.New("config.toml").Parse(`# /etc/containerd/config.toml as the distribution ships it (hopless lab host root)
version = 3
root = '/var/lib/containerd'
state = '/run/containerd'
disabled_plugins = [
{{- range .Disabled}}
  '{{.}}',
{{- end}}
]

[grpc]
  address = '{{.Sock}}'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '{{.CertsDir}}'

[plugins.'io.containerd.transfer.v1.local']
  config_path = '{{.CertsDir}}'
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = '{{.Platform}}'
    snapshotter = 'native'
    differ = 'walking'
`))

// distroUnit is the distribution's containerd.service; the lab reads only its
// ExecStart (systemd.go).
const distroUnit = `# containerd.service as the distribution ships it (hopless lab host root)
[Unit]
Description=containerd container runtime
After=network.target local-fs.target

[Service]
ExecStart=/usr/local/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always

[Install]
WantedBy=multi-user.target
`

// NewHostRoot writes a fresh node's root filesystem into dir, which must be empty or
// new: stock containerd as /usr/local/bin/containerd, its systemd unit, the
// distribution's config.toml, the mountpoints that hostroot-exec mounts on, and /run,
// /var/lib, /var/run (a symlink to ../run) and /etc/containerd/certs.d.
func NewHostRoot(dir string, o HostRootOptions) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("host root %s: %w", dir, err)
	case len(ents) > 0:
		return fmt.Errorf("host root %s is not empty; choose an empty or new dir", dir)
	}
	stock := filepath.Join(o.ToolsDir, "containerd-stock")
	if err := checkStatic(stock); err != nil {
		return fmt.Errorf("host root %s: %w", dir, err)
	}
	for _, d := range append(hostMountpoints(), "run", "var/lib", "etc/containerd/certs.d", "usr/local/bin") {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("host root %s: creating %s: %w", dir, d, err)
		}
	}
	// MkdirAll applies the umask; a real /tmp is world-writable and sticky.
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|os.ModeSticky); err != nil {
		return fmt.Errorf("host root %s: %w", dir, err)
	}
	if err := os.Symlink("../run", filepath.Join(dir, "var", "run")); err != nil {
		return fmt.Errorf("host root %s: %w", dir, err)
	}
	cfg, err := render(distroConfig, map[string]any{"Disabled": disabledPlugins(), "Sock": HostContainerdSock,
		"CertsDir": HostCertsDir, "Platform": "linux/" + runtime.GOARCH})
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, HostContainerdConfig), cfg, 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, HostContainerdUnit), []byte(distroUnit), 0o644); err != nil {
		return err
	}
	return CopyFile(stock, filepath.Join(dir, HostContainerdBin), 0o755)
}

// CopyFile copies src to dst with mode, creating dst's dir.
func CopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return nil
}

// checkStatic fails unless path is an ELF executable without an interpreter: a host
// root has no libc, and exec of a dynamic binary there fails with a bare ENOENT.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("checking that %s is a static executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; it cannot run in a host root without libc (build it with CGO_ENABLED=0)", path)
		}
	}
	return nil
}

// MountsUnder lists the mount points in this process's mount namespace that are dir
// or below it. A host root's mounts live in its node's own namespace, so after the
// node stops (and while it runs) there should be none.
func MountsUnder(dir string) ([]string, error) {
	return mountsUnder("/proc/self/mountinfo", dir)
}

// ProcsInHostRoot lists the PIDs of the processes whose root is dir or below it,
// such as a host-root node that still runs: dir must not be removed under them.
func ProcsInHostRoot(dir string) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	dir = filepath.Clean(dir)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		root, err := os.Readlink("/proc/" + e.Name() + "/root")
		if err != nil {
			continue
		}
		root = strings.TrimSuffix(root, " (deleted)")
		if root == dir || strings.HasPrefix(root, dir+"/") {
			out = append(out, pid)
		}
	}
	return out, nil
}

// mountsUnder reads a mountinfo file: the fifth field is the mount point, relative to
// the reading process's root, with space, tab, newline and backslash octal-escaped.
func mountsUnder(mountinfo, dir string) ([]string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	dir = filepath.Clean(dir)
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") || dir == "/" {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", mountinfo, err)
	}
	return out, nil
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
