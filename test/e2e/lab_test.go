package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

func hoplessLab(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(root(t), "bin", "hopless-lab"), args...).CombinedOutput()
	return string(out), err
}

// TestLabCLI drives the hopless-lab binary: up, up again, seed, status, down, and
// checks that no lab process is left.
func TestLabCLI(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if out, err := hoplessLab(t, "up", "--dir", dir, "--slot", strconv.Itoa(slotLabCLI), "--masters", "2", "--nodes", "1"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	l, err := lab.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down() })
	if len(l.Procs) != 4 {
		t.Fatalf("want 4 processes (upstream, 2 masters, 1 node), got %d", len(l.Procs))
	}
	env, err := os.ReadFile(filepath.Join(dir, "lab.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"LAB_UPSTREAM='127.0.3.1:5000'", "LAB_MASTERS='127.0.1.1:5001 127.0.1.2:5001'",
		"LAB_CA='" + filepath.Join(dir, "ca", "ca.pem") + "'", "LAB_NODES='1'",
		"LAB_NODE_1_SOCK='" + filepath.Join(dir, "node-1", "containerd.sock") + "'", "LAB_NODE_1_MODE='inprocess'",
		"LAB_CRICTL_1='" + filepath.Join(dir, "node-1", "crictl.yaml") + "'", "LAB_IMAGE_HOST='127.0.2.1:5001'",
	} {
		if !strings.Contains(string(env), want) {
			t.Errorf("lab.env lacks %s:\n%s", want, env)
		}
	}

	out, err := hoplessLab(t, "up", "--dir", dir)
	if err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second up: want an 'already up' error, got %v: %s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nodes", "1", "--node-modes", "inprocess,nri"}, "lists 2 modes for 1 nodes"},
		{[]string{"--nodes", "2", "--node-modes", "inprocess, stok"}, `node-2's mode "stok" is not supported`},
		{[]string{"--nodes", "1", "--mode", "nginx", "--nginx-to-proxies"}, "--nginx-to-proxies needs stock proxies"},
		{[]string{"--nodes", "2", "--node-modes", "inprocess,nri", "--proxies", "1", "--nginx-to-proxies"}, "needs a node in mode nginx"},
	} {
		args := append([]string{"up", "--dir", t.TempDir(), "--slot", strconv.Itoa(slotLabCLI)}, tc.args...)
		if out, err := hoplessLab(t, args...); err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("up %s: want an error containing %q, got %v: %s", strings.Join(tc.args, " "), tc.want, err, out)
		}
	}
	out, err = hoplessLab(t, "seed", "--dir", dir, "--image", "deckhouse/ce/cli:v1", "--layers", "2", "--layer-size", "64KiB", "--index")
	if err != nil || !strings.Contains(out, "127.0.2.1:5001/system/deckhouse/cli:v1") {
		t.Errorf("seed: %v: %s", err, out)
	}
	out, err = hoplessLab(t, "seed", "--dir", dir, "--image", "Bad/Name")
	if err == nil || !strings.Contains(out, "Bad/Name") {
		t.Errorf("seed with a bad name: want an error naming it, got %v: %s", err, out)
	}
	out, err = hoplessLab(t, "status", "--dir", dir)
	if err != nil || strings.Count(out, "running") != 4 {
		t.Errorf("status: %v:\n%s", err, out)
	}
	if out, err := hoplessLab(t, "down", "--dir", dir); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	for _, p := range l.Procs {
		if p.Alive() {
			t.Errorf("%s (pid %d) still runs after down", p.Name, p.PID)
		}
	}
	if left := processesMentioning(t, dir); len(left) > 0 {
		t.Errorf("processes still mention the lab dir after down: %v", left)
	}
}

// processesMentioning lists PIDs whose command line contains s (read from /proc,
// only to check; nothing is signalled by name).
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), s) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// TestLabBusyPort checks that up names a busy lab address and leaves nothing behind.
func TestLabBusyPort(t *testing.T) {
	t.Parallel()
	busy := lab.MasterAddr(slotBusyPort, 2)
	ln, err := net.Listen("tcp", busy)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := labOptions(t)
	o.Dir, o.Slot, o.Masters, o.Nodes = t.TempDir(), slotBusyPort, 2, 1
	_, err = lab.Up(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), busy+" is busy") {
		t.Fatalf("want an error naming %s as busy, got %v", busy, err)
	}
	if left := processesMentioning(t, o.Dir); len(left) > 0 {
		t.Errorf("processes left after a failed up: %v", left)
	}
}
