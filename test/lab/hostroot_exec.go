package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// hostEnv is the environment of a process in a host root: systemd's default PATH and
// nothing of the lab's.
func hostEnv() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
}

// HostRootExec is hopless-lab hostroot-exec: it runs argv chrooted into root, with
// this machine's /proc, /sys and /dev and a tmpfs of its own on /tmp, as a node's
// init would run a service. It must run in a mount namespace of its own (the lab's
// launcher unshares one), where those mounts stay and go away with the process; it
// refuses otherwise. On success it does not return: argv replaces it under its PID.
func HostRootExec(root string, argv []string) error {
	if !filepath.IsAbs(root) {
		return fmt.Errorf("hostroot-exec: --root %q must be an absolute path", root)
	}
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return fmt.Errorf("hostroot-exec: want an absolute program path inside the host root after --, got %q", argv)
	}
	if err := checkOwnMountNamespace(); err != nil {
		return err
	}
	// Every mountpoint is checked before anything is mounted.
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return fmt.Errorf("hostroot-exec: host root %s is not a directory: %v", root, err)
	}
	for _, d := range hostMountpoints() {
		// Lstat: a symlink there could point a bind mount anywhere.
		fi, err := os.Lstat(filepath.Join(root, d))
		if err != nil || !fi.IsDir() {
			return fmt.Errorf("hostroot-exec: host root %s has no mountpoint dir /%s; it is not created, so that running a node leaves the host root's tree as it is (lab.NewHostRoot makes it)", root, d)
		}
	}
	// Private, so that nothing mounted here reaches the machine's namespace, even
	// where / is shared.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("hostroot-exec: making the mount tree private: %w", err)
	}
	for _, d := range []string{"proc", "sys", "dev"} {
		if err := syscall.Mount("/"+d, filepath.Join(root, d), "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("hostroot-exec: bind-mounting /%s on %s: %w", d, filepath.Join(root, d), err)
		}
	}
	if err := syscall.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("hostroot-exec: mounting a tmpfs on %s: %w", filepath.Join(root, "tmp"), err)
	}
	if err := syscall.Chroot(root); err != nil {
		return fmt.Errorf("hostroot-exec: chroot to %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("hostroot-exec: chdir to / in %s: %w", root, err)
	}
	err := syscall.Exec(argv[0], argv, hostEnv())
	if errors.Is(err, syscall.ENOENT) {
		if _, serr := os.Stat(argv[0]); serr == nil {
			if cerr := checkStatic(argv[0]); cerr != nil {
				err = cerr
			}
		}
	}
	return fmt.Errorf("hostroot-exec: exec %s in host root %s: %w", argv[0], root, err)
}

// checkOwnMountNamespace fails when this process shares its parent's mount
// namespace: HostRootExec's mounts would then be the machine's.
func checkOwnMountNamespace() error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("hostroot-exec: reading its mount namespace: %w", err)
	}
	ppid := os.Getppid()
	parent, err := os.Readlink("/proc/" + strconv.Itoa(ppid) + "/ns/mnt")
	if err != nil {
		return fmt.Errorf("hostroot-exec: reading the mount namespace of its parent (pid %d): %w", ppid, err)
	}
	if self == parent {
		return fmt.Errorf("hostroot-exec: it runs in its parent's mount namespace (%s); start it with a mount namespace of its own (CLONE_NEWNS), as the lab does, so that its mounts stay out of the machine's", self)
	}
	return nil
}
