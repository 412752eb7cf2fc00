package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ContainerdUnit is the systemd unit whose ExecStart a host-root node runs.
const ContainerdUnit = "containerd.service"

// StartHostRootNode starts a containerd node called name from hostRoot (see
// NewHostRoot): the command that hostRoot's containerd.service and its drop-ins say,
// chrooted into hostRoot through hostroot-exec, as the host's systemd would run it.
// It is a lab Node like the others, at the index NodeIndex gives: its socket is the
// host's /run/containerd/containerd.sock (through a short symlink when that path is
// too long for a unix socket), its crictl.yaml and log are in DIR/NAME, and Crictl,
// Signal, Stop, Status and Down work on it. Start runs it again from the unit and
// drop-ins as they are then. It is ready when CRI answers crictl version.
func (l *Lab) StartHostRootNode(ctx context.Context, name, hostRoot string) error {
	if err := l.checkNewName(name); err != nil {
		return err
	}
	root, err := canonicalRoot(hostRoot)
	if err != nil {
		return err
	}
	// A unit that cannot run is reported before the node is recorded.
	if _, err := UnitExecStart(root, ContainerdUnit); err != nil {
		return fmt.Errorf("lab: host-root node %s: %w", name, err)
	}
	sock, err := l.hostRootSocket(name, root)
	if err != nil {
		return err
	}
	d := filepath.Join(l.Dir, name)
	n := Node{Name: name, Dir: d, Sock: sock, Crictl: filepath.Join(d, "crictl.yaml"), HostRoot: root}
	crictl := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n", n.Sock, n.Sock)
	if err := writeFile(n.Crictl, []byte(crictl), 0o644); err != nil {
		return err
	}
	l.Nodes = append(l.Nodes, n)
	if err := l.writeEnv(); err != nil {
		return err
	}
	return l.startHostRootNode(ctx, len(l.Nodes))
}

// StartHostRootProc starts argv (argv[0] an absolute path inside hostRoot) chrooted
// into hostRoot through hostroot-exec, as a process called name, with its log in
// DIR/NAME/log, and waits until ready passes; a nil ready waits until hostroot-exec
// has set up the host root and exec'd argv. Start runs the same command again and
// waits only for that.
func (l *Lab) StartHostRootProc(ctx context.Context, name, hostRoot string, argv []string, ready func(context.Context) error) error {
	if err := l.checkNewName(name); err != nil {
		return err
	}
	root, err := canonicalRoot(hostRoot)
	if err != nil {
		return err
	}
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return fmt.Errorf("lab: host-root process %s: want an absolute program path inside %s, got %q", name, root, argv)
	}
	d := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("lab: creating the dir of %s: %w", name, err)
	}
	p, err := startHostRoot(name, root, l.hostRootArgs(root, argv), filepath.Join(d, "log"))
	if err != nil {
		return err
	}
	return l.run(ctx, p, ready)
}

// NodeIndex is the 1-based index of node name, for Crictl and the other per-node
// helpers.
func (l *Lab) NodeIndex(name string) (int, error) {
	for i, n := range l.Nodes {
		if n.Name == name {
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("lab has no node %q", name)
}

// startHostRootNode (re)starts host-root node i from its unit as it is now.
func (l *Lab) startHostRootNode(ctx context.Context, i int) error {
	n := l.Nodes[i-1]
	argv, err := UnitExecStart(n.HostRoot, ContainerdUnit)
	if err != nil {
		return fmt.Errorf("lab: starting host-root node %s: %w", n.Name, err)
	}
	p, err := startHostRoot(n.Name, n.HostRoot, l.hostRootArgs(n.HostRoot, argv), filepath.Join(n.Dir, "log"))
	if err != nil {
		return err
	}
	return l.run(ctx, p, l.nodeReady(i))
}

func (l *Lab) hostRootArgs(root string, argv []string) []string {
	return append([]string{filepath.Join(l.BinDir, "hopless-lab"), "hostroot-exec", "--root", root, "--"}, argv...)
}

// checkNewName fails unless name can name a new process and its dir in the lab dir.
func (l *Lab) checkNewName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/ \t\n") {
		return fmt.Errorf("lab: bad process name %q: want a plain word such as host-1", name)
	}
	if l.proc(name) != nil {
		return fmt.Errorf("lab: a process %q exists already; use Start to run it again", name)
	}
	if _, err := l.NodeIndex(name); err == nil {
		return fmt.Errorf("lab: a node %q exists already", name)
	}
	return nil
}

// canonicalRoot is hostRoot absolute and without symlinks, as /proc/PID/root shows a
// chrooted process's root (Proc.Alive compares them).
func canonicalRoot(hostRoot string) (string, error) {
	abs, err := filepath.Abs(hostRoot)
	if err != nil {
		return "", fmt.Errorf("lab: host root %q: %w", hostRoot, err)
	}
	root, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("lab: host root %q: %w", hostRoot, err)
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("lab: host root %s is not a directory", root)
	}
	return root, nil
}

// hostRootSocket is the path outside the host root of its containerd's socket: the
// host's socket itself, or, when that is too long for a unix socket address, a
// symlink to it in the lab's short socket dir (connect follows symlinks).
func (l *Lab) hostRootSocket(name, root string) (string, error) {
	p := filepath.Join(root, HostContainerdSock)
	if len(p) <= maxSocketPath {
		return p, nil
	}
	d := l.shortSocketDir()
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("lab: creating socket dir: %w", err)
	}
	link := filepath.Join(d, name+".sock")
	if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("lab: replacing socket link %s: %w", link, err)
	}
	if err := os.Symlink(p, link); err != nil {
		return "", fmt.Errorf("lab: linking %s to %s's socket: %w", link, name, err)
	}
	return link, nil
}

// syncProcs adopts processes that another hopless-lab (restart) started and
// recorded since this Lab was opened: a recorded process that runs replaces one of
// the same name here that does not, so that Stop and Down reach it.
func (l *Lab) syncProcs() {
	disk, err := Open(l.Dir)
	if err != nil {
		return
	}
	for _, dp := range disk.Procs {
		p := l.proc(dp.Name)
		if p == nil || p.PID == dp.PID || p.Alive() || !dp.Alive() {
			continue
		}
		*p = *dp
	}
}
