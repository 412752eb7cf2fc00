package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// A master's storage root on a tmpfs of its own (RegistrydOptions.StorageTmpfs): a
// small disk that really fills up, for tests of a full disk. It is mounted before the
// master first starts, stays mounted while the master is stopped and started again,
// and is unmounted by Down. Mounting needs root. The stock proxies' storage (on the
// filesystem) gets one of the same size, so that a full disk can be compared.

// StorageRoot is master i's (1-based) storage.root.
func (l *Lab) StorageRoot(i int) string {
	return filepath.Join(l.Dir, fmt.Sprintf("master-%d", i), "data")
}

// ProxyStorageRoot is stock proxy i's (1-based) storage directory.
func (l *Lab) ProxyStorageRoot(i int) string {
	return filepath.Join(l.Dir, proxyPrefix+strconv.Itoa(i), "data")
}

// mountStorage mounts the storage tmpfs on the storage root in masterDir, if the
// lab asks for one and it is not mounted yet.
func (l *Lab) mountStorage(masterDir string) error {
	size := l.Registryd.StorageTmpfs
	if size == "" {
		return nil
	}
	root := filepath.Join(masterDir, "data")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("lab: storage root: %w", err)
	}
	if mounted, err := isMountPoint(root); err != nil || mounted {
		return err
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", root).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: mounting a %s tmpfs on %s (needs root): %w: %s", size, root, err, strings.TrimSpace(string(out)))
	}
	// Private, so that the copies in containers' mount namespaces (other labs run
	// pods) are no peers of it: unmounting it then never waits on them.
	if out, err := exec.Command("mount", "--make-private", root).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: making the tmpfs on %s private: %w: %s", root, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unmountStorage unmounts the masters' storage tmpfs, if the lab has them.
func (l *Lab) unmountStorage() error {
	if l.Registryd.StorageTmpfs == "" {
		return nil
	}
	roots, err := filepath.Glob(filepath.Join(l.Dir, proxyPrefix+"*", "data"))
	if err != nil {
		return fmt.Errorf("lab: listing the proxies' storage: %w", err)
	}
	for i := range l.Masters {
		roots = append(roots, l.StorageRoot(i+1))
	}
	var errs []error
	for _, root := range roots {
		mounted, err := isMountPoint(root)
		if err != nil || !mounted {
			continue
		}
		if out, err := exec.Command("umount", root).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("lab: unmounting %s: %w: %s", root, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// isMountPoint reports whether dir is on another filesystem than its parent.
func isMountPoint(dir string) (bool, error) {
	var st, parent syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("lab: stat %s: %w", dir, err)
	}
	if err := syscall.Stat(filepath.Dir(dir), &parent); err != nil {
		return false, fmt.Errorf("lab: stat %s: %w", filepath.Dir(dir), err)
	}
	return st.Dev != parent.Dev, nil
}
