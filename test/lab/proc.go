package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is one lab process, recorded by PID so that down can stop it without looking
// anything up by name.
type Proc struct {
	Name string   `json:"name"`
	PID  int      `json:"pid"`
	Args []string `json:"args"`
	Log  string   `json:"log"`
	// Tag is a string that the process's command line must contain; it guards
	// against signalling an unrelated process that reused the PID.
	Tag string `json:"tag"`
	// HostRoot is the host root that the process runs chrooted into through
	// hostroot-exec (hostnode.go), or "". Its Tag is the host root too: once the
	// process has exec'd the host's program, its root shows that it is ours.
	HostRoot string `json:"host_root,omitempty"`
	// Env is added to the lab's environment for the process.
	Env []string `json:"env,omitempty"`
}

// start launches args in its own session with output appended to logPath. The
// process outlives the caller; it is stopped only through its PID.
func start(name string, args []string, logPath, tag string) (*Proc, error) {
	return spawn(&Proc{Name: name, Args: args, Log: logPath, Tag: tag})
}

// startHostRoot launches args, a hostroot-exec command line for hostRoot, like
// start, in a mount namespace of its own.
func startHostRoot(name, hostRoot string, args []string, logPath string) (*Proc, error) {
	return spawn(&Proc{Name: name, Args: args, Log: logPath, Tag: hostRoot, HostRoot: hostRoot})
}

// spawn starts p.Args and sets p.PID.
func spawn(p *Proc) (*Proc, error) {
	lf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", p.Name, err)
	}
	defer lf.Close()
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	if len(p.Env) > 0 {
		cmd.Env = append(os.Environ(), p.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if p.HostRoot != "" {
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", p.Name, p.Args[0], err)
	}
	p.PID = cmd.Process.Pid
	// Reap the child if it exits while this process still runs, so that Alive does
	// not see a zombie as running.
	go func() { _ = cmd.Wait() }()
	return p, nil
}

// Alive reports whether the process runs (a zombie counts as gone) and is ours.
func (p *Proc) Alive() bool {
	if p == nil || p.PID <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold spaces.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return false
	}
	// An empty command line is a process between fork and exec: ours.
	if p.Tag == "" || len(cmdline) == 0 || strings.Contains(string(cmdline), p.Tag) {
		return true
	}
	if p.HostRoot == "" {
		return false
	}
	// A root removed from under the process reads as "DIR (deleted)".
	root, err := os.Readlink("/proc/" + strconv.Itoa(p.PID) + "/root")
	return err == nil && (root == p.HostRoot || root == p.HostRoot+" (deleted)")
}

// checkExeced fails while a host-root process is still hostroot-exec, before its
// program replaced it; for other processes it passes.
func (p *Proc) checkExeced() error {
	if p.HostRoot == "" {
		return nil
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return fmt.Errorf("reading the command line of %s: %w", p.Name, err)
	}
	if len(cmdline) == 0 || bytes.Contains(cmdline, []byte("\x00hostroot-exec\x00")) {
		return fmt.Errorf("%s is still setting up its host root %s", p.Name, p.HostRoot)
	}
	return nil
}

// Signal sends sig to the process if it is alive and ours.
func (p *Proc) Signal(sig syscall.Signal) error {
	if !p.Alive() {
		return fmt.Errorf("%s (pid %d) is not running", p.Name, p.PID)
	}
	if err := syscall.Kill(p.PID, sig); err != nil {
		return fmt.Errorf("signalling %s (pid %d): %w", p.Name, p.PID, err)
	}
	return nil
}

// Stop sends SIGTERM (and SIGCONT, in case it is frozen), waits up to grace, then
// SIGKILLs and waits again. It returns once the process is gone.
func (p *Proc) Stop(grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	_ = syscall.Kill(p.PID, syscall.SIGCONT)
	if waitGone(p, grace) {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	if waitGone(p, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, p.PID)
}

func waitGone(p *Proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !p.Alive()
}

// waitReady polls check until it succeeds, the process dies, or timeout passes. On
// failure the error carries the tail of the process's log.
func waitReady(ctx context.Context, p *Proc, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if !p.Alive() {
			return fmt.Errorf("%s exited during start-up; its log ends:\n%s", p.Name, tail(p.Log, 15))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v; its log ends:\n%s", p.Name, timeout, last, tail(p.Log, 15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
