package hostfs

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestRootPath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, d := range []string{"run/containerd", "etc", "opt/real"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "var"), 0o755); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"var/run":     "/run",          // absolute: the node's /run, not the installer's
		"etc/up":      "../../../..",   // climbs no higher than the root
		"etc/rel":     "../opt/real",   // relative
		"etc/escape":  "/../../etc",    // absolute and climbing
		"opt/current": "/opt/real",     // absolute, to a directory
		"etc/dangle":  "/missing/file", // to nothing yet
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	r := Root{Dir: dir}
	tests := []struct {
		in, want string
	}{
		{"/var/run/containerd/containerd.sock", "/run/containerd/containerd.sock"},
		{"/var/run", "/run"},
		{"/etc/up/etc/passwd", "/etc/passwd"},
		{"/etc/rel/x", "/opt/real/x"},
		{"/etc/escape/hosts", "/etc/hosts"},
		{"/opt/current/bin", "/opt/real/bin"},
		{"/etc/dangle", "/missing/file"},
		{"/../../../etc/hosts", "/etc/hosts"},
		{"/", "/"},
		{"/not/there/yet", "/not/there/yet"},
	}
	for _, tt := range tests {
		got, err := r.Path(tt.in)
		if err != nil {
			t.Errorf("Path(%q): %v", tt.in, err)
			continue
		}
		if want := filepath.Join(dir, tt.want); got != want {
			t.Errorf("Path(%q) = %q, want %q", tt.in, got, want)
		}
	}
	if _, err := r.Path("etc/hosts"); err == nil || !strings.Contains(err.Error(), `node path "etc/hosts" is not absolute`) {
		t.Errorf("Path of a relative path: %v", err)
	}
	// The installer's own root is a root too.
	if got, err := (Root{Dir: "/"}).Path("/etc/../etc/hostname"); err != nil || got != "/etc/hostname" {
		t.Errorf("Root{/}.Path = %q, %v", got, err)
	}
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFile(t *testing.T) {
	// Not parallel: the test sets the process umask.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, umask := range []int{0o077, 0o000, 0o022} {
		syscall.Umask(umask)
		for _, mode := range []os.FileMode{0o644, 0o600, 0o755, 0o666, 0o640} {
			dir := t.TempDir()
			dst := filepath.Join(dir, "node.toml")
			if err := WriteFile(dst, []byte("one"), mode, ""); err != nil {
				t.Fatal(err)
			}
			if err := WriteFile(dst, []byte("two\n"), mode, ""); err != nil {
				t.Fatal(err)
			}
			b, fi, err := ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != "two\n" {
				t.Errorf("umask %#o mode %#o: content %q, want the second write", umask, mode, b)
			}
			if fi.Mode() != mode {
				t.Errorf("umask %#o: mode %v, want %v", umask, fi.Mode(), mode)
			}
			if got := entries(t, dir); !slices.Equal(got, []string{"node.toml"}) {
				t.Errorf("umask %#o: directory holds %q, want only node.toml", umask, got)
			}
		}
	}
	syscall.Umask(0o022)

	// Staged elsewhere: nothing is left in either directory.
	dir, stage := t.TempDir(), t.TempDir()
	dst := filepath.Join(dir, "10-hopless")
	if err := WriteFile(dst, []byte("bin"), 0o755, stage); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, dir); !slices.Equal(got, []string{"10-hopless"}) {
		t.Errorf("directory holds %q", got)
	}
	if got := entries(t, stage); len(got) != 0 {
		t.Errorf("stage directory holds %q, want nothing", got)
	}

	// A write that fails leaves nothing behind and the old file as it was.
	ro := t.TempDir()
	target := filepath.Join(ro, "f")
	if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(target, []byte("new"), 0o644, filepath.Join(ro, "missing")); err == nil {
		t.Fatal("WriteFile into a missing stage directory: no error")
	}
	if b, _ := os.ReadFile(target); string(b) != "old" {
		t.Errorf("content %q after a failed write, want old", b)
	}
	// A rename that fails (onto a non-empty directory) removes the staged file.
	if err := os.Mkdir(filepath.Join(ro, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "d", "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(ro, "d"), []byte("new"), 0o644, ""); err == nil {
		t.Fatal("WriteFile over a directory: no error")
	}
	if got := entries(t, ro); !slices.Equal(got, []string{"d", "f"}) {
		t.Errorf("directory holds %q after failed writes, want d and f", got)
	}
}

func TestStageSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keep := []string{"config.toml", "50-hopless.toml", "hopless-tmp-x", ".hopless-tm"}
	for _, n := range keep {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	staged, err := Stage(dir, "50-hopless.toml", []byte("x"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if base := filepath.Base(staged); !strings.HasPrefix(base, TempPrefix+"50-hopless.toml-") || strings.HasSuffix(base, ".toml") {
		t.Errorf("staged as %q: want %s50-hopless.toml-<random>, not ending in .toml", base, TempPrefix)
	}
	if filepath.Dir(staged) != dir {
		t.Errorf("staged in %s, want %s", filepath.Dir(staged), dir)
	}
	staged2, err := Stage(dir, "50-hopless.toml", []byte("y"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if staged2 == staged {
		t.Errorf("two stages of one file share the name %s", staged)
	}
	if err := Sweep(dir); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(keep), "sub")
	slices.Sort(want)
	if got := entries(t, dir); !slices.Equal(got, want) {
		t.Errorf("after Sweep: %q, want %q", got, want)
	}
	for _, n := range keep {
		if b, _ := os.ReadFile(filepath.Join(dir, n)); string(b) != n {
			t.Errorf("%s changed to %q", n, b)
		}
	}
	if err := Sweep(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("Sweep of a missing directory: %v", err)
	}

	// Commit renames a staged file into place.
	staged, err = Stage(dir, "node.toml", []byte("z"), 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if err := Commit(staged, filepath.Join(dir, "node.toml")); err != nil {
		t.Fatal(err)
	}
	b, fi, err := ReadFile(filepath.Join(dir, "node.toml"))
	if err != nil || string(b) != "z" || fi.Mode() != 0o640 {
		t.Errorf("committed file: %q %v %v", b, fi, err)
	}
	if _, err := os.Lstat(staged); !os.IsNotExist(err) {
		t.Errorf("staged file still there after Commit: %v", err)
	}
}

func TestReadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, fi, err := ReadFile(filepath.Join(dir, "missing"))
	if b != nil || fi != nil || err != nil {
		t.Errorf("missing file: %q, %v, %v; want nil, nil, nil", b, fi, err)
	}
	b, fi, err = ReadFile(filepath.Join(dir, "missing", "below"))
	if b != nil || fi != nil || err != nil {
		t.Errorf("file below a missing directory: %q, %v, %v; want nil, nil, nil", b, fi, err)
	}
	if _, _, err := ReadFile(dir); err == nil || !strings.Contains(err.Error(), dir+" is not a regular file (d") {
		t.Errorf("directory: %v, want not a regular file", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/etc/hostname", link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadFile(link); err == nil || !strings.Contains(err.Error(), "is not a regular file (L") {
		t.Errorf("symlink: %v, want not a regular file", err)
	}
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, fi, err = ReadFile(p)
	if err != nil || !bytes.Equal(b, []byte("data")) || fi.Mode() != 0o600 {
		t.Errorf("file: %q, %v, %v", b, fi, err)
	}
	if got := Sum([]byte("data")); got != "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7" {
		t.Errorf("Sum = %s", got)
	}
}
