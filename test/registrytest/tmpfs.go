package registrytest

import (
	"os/exec"
	"testing"
)

// Tmpfs mounts a tmpfs of size (mount's syntax, "8m") on a new directory, for tests
// that need a filesystem that really fills up, and unmounts it when the test ends. It
// skips the test where mounting is not allowed (not root).
func Tmpfs(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("this test needs a real full filesystem: mounting a %s tmpfs failed (run as root): %v: %s", size, err, out)
	}
	// Private, so that the copies in containers' mount namespaces (e2e labs run
	// pods) are no peers of it and do not keep it busy.
	if out, err := exec.Command("mount", "--make-private", dir).CombinedOutput(); err != nil {
		t.Fatalf("making the tmpfs on %s private: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if _, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			// Still open (a spool descriptor left to the collector): detach it.
			if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", dir, err, out)
			}
		}
	})
	return dir
}
