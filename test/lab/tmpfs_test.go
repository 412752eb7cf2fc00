package lab

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStorageTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	l := &Lab{Dir: t.TempDir(), Masters: []Master{{Name: "master-1"}}, Registryd: RegistrydOptions{StorageTmpfs: "1m"}}
	dir := filepath.Join(l.Dir, "master-1")
	for range 2 { // the second mount finds it mounted
		if err := l.mountStorage(dir); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = l.unmountStorage() })
	if mounted, err := isMountPoint(l.StorageRoot(1)); err != nil || !mounted {
		t.Fatalf("after mountStorage: mounted %v, %v", mounted, err)
	}
	if err := os.WriteFile(filepath.Join(l.StorageRoot(1), "x"), make([]byte, 2<<20), 0o600); err == nil {
		t.Error("wrote 2 MiB to a 1 MiB tmpfs")
	}
	if err := l.unmountStorage(); err != nil {
		t.Fatal(err)
	}
	if mounted, err := isMountPoint(l.StorageRoot(1)); err != nil || mounted {
		t.Fatalf("after unmountStorage: mounted %v, %v", mounted, err)
	}
	none := &Lab{Dir: t.TempDir(), Masters: []Master{{Name: "master-1"}}}
	if err := none.mountStorage(filepath.Join(none.Dir, "master-1")); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := isMountPoint(none.StorageRoot(1)); mounted {
		t.Error("a lab without StorageTmpfs mounted one")
	}
}
