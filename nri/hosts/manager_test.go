package hosts

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
)

type dirs struct{ root, state string }

func newDirs(t *testing.T) dirs {
	t.Helper()
	d := dirs{filepath.Join(t.TempDir(), "certs.d"), filepath.Join(t.TempDir(), "state")}
	if err := os.Mkdir(d.root, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d dirs) open(t *testing.T) *Manager {
	t.Helper()
	m, err := Open(d.root, d.state)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ours(host, body string) []byte { return []byte(Header(host) + "\n" + body) }

func mustWrite(t *testing.T, m *Manager, host string, content []byte, want bool) {
	t.Helper()
	wrote, err := m.Write(host, content)
	if err != nil {
		t.Fatalf("Write(%s): %v", host, err)
	}
	if wrote != want {
		t.Fatalf("Write(%s) wrote %v, want %v", host, wrote, want)
	}
}

func writeRaw(t *testing.T, p string, b []byte, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
}

// fileIs fails unless p holds exactly b with mode perm.
func fileIs(t *testing.T, p string, b []byte, perm os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(b) {
		t.Errorf("%s holds %q, want %q", p, got, b)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != perm {
		t.Errorf("%s has mode %#o, want %#o", p, fi.Mode().Perm(), perm)
	}
}

// tree lists every path under dir, relative, with a "/" after directories.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			rel += "/"
		}
		out = append(out, rel)
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}

// noTemp fails if a temporary file is left anywhere under the dirs.
func (d dirs) noTemp(t *testing.T) {
	t.Helper()
	for _, dir := range []string{d.root, d.state} {
		for _, p := range tree(t, dir) {
			if strings.Contains(filepath.Base(p), ".tmp-") {
				t.Errorf("temporary file %s left in %s", p, dir)
			}
		}
	}
}

func TestWriteSkipsUnchanged(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	m := d.open(t)
	const host = "registry.example:5000"
	p := filepath.Join(d.root, host, FileName)
	v1, v2 := ours(host, "server = \"https://a\"\n"), ours(host, "server = \"https://b\"\n")

	mustWrite(t, m, host, v1, true)
	fileIs(t, p, v1, 0o600)
	before, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, m, host, v1, false)
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Errorf("unchanged content replaced the file (inode or mtime changed)")
	}

	mustWrite(t, m, host, v2, true)
	fileIs(t, p, v2, 0o600)
	// Another mode is a difference too: the file may hold a credential.
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, m, host, v2, true)
	fileIs(t, p, v2, 0o600)
	if got := m.Owned(); !slices.Equal(got, []string{host}) {
		t.Errorf("Owned() = %v", got)
	}
	d.noTemp(t)
	if got, want := tree(t, d.root), []string{host + "/", host + "/" + FileName}; !slices.Equal(got, want) {
		t.Errorf("config path holds %v, want %v", got, want)
	}

	// The directory was ours: Uninstall leaves config_path empty, and no state.
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, d.root); len(got) != 0 {
		t.Errorf("after Uninstall config path holds %v", got)
	}
	if got := tree(t, d.state); len(got) != 0 {
		t.Errorf("after Uninstall state dir holds %v", got)
	}
}

// A foreign hosts.toml is backed up before the first write and restored byte for
// byte, with its mode, by Uninstall; other files in its directory are never touched.
func TestForeignBackupRestore(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content []byte
		perm    os.FileMode
		others  bool // a CA file beside it
	}{
		{"0644", []byte("server = \"https://registry.example\"\n"), 0o644, false},
		{"0600 with a CA beside it", []byte("server = \"https://registry.example\"\n[host.\"https://mirror\"]\n"), 0o600, true},
		{"0640 no trailing newline", []byte("# theirs\nserver = \"https://x\""), 0o640, false},
		{"empty", []byte{}, 0o444, true},
		{"binary", []byte{0, 1, 2, 0xff, '\n', 0xfe}, 0o755, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			const host = "registry.example"
			p := filepath.Join(d.root, host, FileName)
			writeRaw(t, p, tt.content, tt.perm)
			ca := filepath.Join(d.root, host, "ca.crt")
			if tt.others {
				writeRaw(t, ca, []byte("PEM"), 0o644)
			}
			m := d.open(t)
			mustWrite(t, m, host, ours(host, "a\n"), true)
			fileIs(t, p, ours(host, "a\n"), 0o600)
			mustWrite(t, m, host, ours(host, "b\n"), true)
			fileIs(t, filepath.Join(d.state, backupDir, host+"."+FileName), tt.content, 0o600)
			d.noTemp(t)

			if err := m.Uninstall(); err != nil {
				t.Fatal(err)
			}
			fileIs(t, p, tt.content, tt.perm)
			want := []string{host + "/", host + "/" + FileName}
			if tt.others {
				fileIs(t, ca, []byte("PEM"), 0o644)
				want = []string{host + "/", host + "/ca.crt", host + "/" + FileName}
			}
			if got := tree(t, d.root); !slices.Equal(got, want) {
				t.Errorf("after Uninstall config path holds %v, want %v", got, want)
			}
			if got := tree(t, d.state); len(got) != 0 {
				t.Errorf("after Uninstall state dir holds %v", got)
			}
		})
	}
}

// A new Manager on the same state directory knows what the last one owned, and
// neither backs up its own file again nor loses the original.
func TestRestart(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	const foreign, fresh = "registry.example", "other.example:5000"
	original := []byte("server = \"https://theirs\"\n")
	p := filepath.Join(d.root, foreign, FileName)
	writeRaw(t, p, original, 0o644)

	m1 := d.open(t)
	mustWrite(t, m1, foreign, ours(foreign, "1\n"), true)
	mustWrite(t, m1, fresh, ours(fresh, "1\n"), true)
	bp := filepath.Join(d.state, backupDir, foreign+"."+FileName)
	b1, err := os.Stat(bp)
	if err != nil {
		t.Fatal(err)
	}

	m2 := d.open(t)
	if got := m2.Owned(); !slices.Equal(got, []string{fresh, foreign}) {
		t.Errorf("restarted Owned() = %v", got)
	}
	mustWrite(t, m2, foreign, ours(foreign, "1\n"), false)
	mustWrite(t, m2, foreign, ours(foreign, "2\n"), true)
	b2, err := os.Stat(bp)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(b1, b2) {
		t.Errorf("the backup was written again after the restart")
	}
	fileIs(t, bp, original, 0o600)

	if err := m2.Uninstall(); err != nil {
		t.Fatal(err)
	}
	fileIs(t, p, original, 0o644)
	if got, want := tree(t, d.root), []string{foreign + "/", foreign + "/" + FileName}; !slices.Equal(got, want) {
		t.Errorf("after Uninstall config path holds %v, want %v", got, want)
	}
}

// With the state lost, a hosts.toml that carries our header is still ours: it is
// adopted, not backed up, and Uninstall removes it (but not a directory it did not
// see created).
func TestAdoptByHeader(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	const host = "registry.example"
	p := filepath.Join(d.root, host, FileName)
	writeRaw(t, p, ours(host, "old\n"), 0o600)
	m := d.open(t)
	mustWrite(t, m, host, ours(host, "old\n"), false)
	mustWrite(t, m, host, ours(host, "new\n"), true)
	if got := tree(t, d.state); slices.Contains(got, backupDir+"/") {
		t.Errorf("our own file was backed up: state dir holds %v", got)
	}
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if got, want := tree(t, d.root), []string{host + "/"}; !slices.Equal(got, want) {
		t.Errorf("after Uninstall config path holds %v, want %v", got, want)
	}
}

// Our header names the host: a copy of another host's file is foreign.
func TestHeaderOfAnotherHost(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	const host = "registry.example"
	p := filepath.Join(d.root, host, FileName)
	copied := ours("other.example", "x\n")
	writeRaw(t, p, copied, 0o644)
	m := d.open(t)
	mustWrite(t, m, host, ours(host, "x\n"), true)
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	fileIs(t, p, copied, 0o644)
}

// A foreign file that replaces ours after the takeover is never overwritten: Write
// and Uninstall fail naming it, and keep the original's backup until it is gone.
func TestForeignAfterTakeover(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		original []byte // nil: no file before us
	}{
		{"over a backed-up file", []byte("server = \"https://first\"\n")},
		{"in a directory we created", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			const host = "registry.example"
			p := filepath.Join(d.root, host, FileName)
			if tt.original != nil {
				writeRaw(t, p, tt.original, 0o644)
			}
			m := d.open(t)
			mustWrite(t, m, host, ours(host, "1\n"), true)
			intruder := []byte("server = \"https://second\"\n")
			writeRaw(t, p, intruder, 0o644)

			_, err := m.Write(host, ours(host, "2\n"))
			if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), p) {
				t.Fatalf("Write over a new foreign file: %v, want ErrForeign naming %s", err, p)
			}
			fileIs(t, p, intruder, 0o644)

			err = m.Uninstall()
			if tt.original == nil {
				// Nothing to restore: the intruder's file and the directory stay.
				if err != nil {
					t.Fatal(err)
				}
				fileIs(t, p, intruder, 0o644)
				return
			}
			if !errors.Is(err, ErrForeign) || !strings.Contains(err.Error(), p) {
				t.Fatalf("Uninstall: %v, want ErrForeign naming %s", err, p)
			}
			fileIs(t, p, intruder, 0o644)
			fileIs(t, filepath.Join(d.state, backupDir, host+"."+FileName), tt.original, 0o600)
			if got := d.open(t).Owned(); !slices.Equal(got, []string{host}) {
				t.Errorf("after a failed Uninstall the state owns %v", got)
			}
			// Once the intruder's file is moved away, the original comes back.
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := m.Uninstall(); err != nil {
				t.Fatal(err)
			}
			fileIs(t, p, tt.original, 0o644)
		})
	}
}

func TestRemove(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	const created, foreign, untouched = "a.example", "b.example", "c.example"
	original := []byte("theirs\n")
	writeRaw(t, filepath.Join(d.root, foreign, FileName), original, 0o640)
	writeRaw(t, filepath.Join(d.root, untouched, FileName), original, 0o640)
	m := d.open(t)
	mustWrite(t, m, created, ours(created, "x\n"), true)
	mustWrite(t, m, foreign, ours(foreign, "x\n"), true)
	// Someone else's file in the directory we created keeps the directory.
	writeRaw(t, filepath.Join(d.root, created, "ca.crt"), []byte("PEM"), 0o644)

	for _, h := range []string{created, foreign, untouched, "never.example"} {
		if err := m.Remove(h); err != nil {
			t.Fatalf("Remove(%s): %v", h, err)
		}
	}
	fileIs(t, filepath.Join(d.root, foreign, FileName), original, 0o640)
	fileIs(t, filepath.Join(d.root, untouched, FileName), original, 0o640)
	want := []string{created + "/", created + "/ca.crt", foreign + "/", foreign + "/" + FileName, untouched + "/", untouched + "/" + FileName}
	if got := tree(t, d.root); !slices.Equal(got, want) {
		t.Errorf("config path holds %v, want %v", got, want)
	}
	if got := m.Owned(); len(got) != 0 {
		t.Errorf("Owned() = %v after removing all", got)
	}
	if got := d.open(t).Owned(); len(got) != 0 {
		t.Errorf("the state owns %v after removing all", got)
	}
}

// Names that are not image hosts, and so could leave config_path, are refused
// before anything is touched.
func TestTraversalRefused(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	m := d.open(t)
	for _, host := range []string{"", ".", "..", "../etc", "../../tmp/x", "a/b", "/etc", `a\b`, "a\x00b", "x/..", "_default", "a..b"} {
		if _, err := m.Write(host, ours(host, "x\n")); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Write(%q): %v, want an invalid-argument error", host, err)
		}
		if err := m.Remove(host); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Remove(%q): %v, want an invalid-argument error", host, err)
		}
		if _, err := m.Path(host); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Path(%q): %v, want an invalid-argument error", host, err)
		}
	}
	if got := tree(t, d.root); len(got) != 0 {
		t.Errorf("config path holds %v", got)
	}
	if got := tree(t, filepath.Dir(d.root)); !slices.Equal(got, []string{"certs.d/"}) {
		t.Errorf("beside config path: %v", got)
	}
}

func TestWriteRefuses(t *testing.T) {
	t.Parallel()
	const host = "registry.example:5000"
	tests := []struct {
		name    string
		setup   func(t *testing.T, d dirs)
		content []byte
		want    string
		is      error
	}{
		{"no header", nil, []byte("server = \"https://x\"\n"), "does not start with the line", errdefs.ErrInvalidArgument},
		{"header not on a line of its own", nil, []byte(Header(host) + " x\n"), "does not start with the line", errdefs.ErrInvalidArgument},
		{"another host's header", nil, ours("registry.example", "x\n"), "does not start with the line", errdefs.ErrInvalidArgument},
		{"shadowing directory", func(t *testing.T, d dirs) {
			if err := os.Mkdir(filepath.Join(d.root, "registry.example_5000_"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, nil, "registry.example_5000_: containerd reads it instead of", ErrForeign},
		{"host directory is a file", func(t *testing.T, d dirs) {
			writeRaw(t, filepath.Join(d.root, host), []byte("x"), 0o644)
		}, nil, "not a directory", ErrForeign},
		{"host directory is a symlink", func(t *testing.T, d dirs) {
			if err := os.Symlink(t.TempDir(), filepath.Join(d.root, host)); err != nil {
				t.Fatal(err)
			}
		}, nil, "not a directory", ErrForeign},
		{"hosts.toml is a symlink", func(t *testing.T, d dirs) {
			target := filepath.Join(t.TempDir(), "elsewhere.toml")
			writeRaw(t, target, []byte("x"), 0o644)
			if err := os.Mkdir(filepath.Join(d.root, host), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(d.root, host, FileName)); err != nil {
				t.Fatal(err)
			}
		}, nil, "not a regular file", ErrForeign},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			if tt.setup != nil {
				tt.setup(t, d)
			}
			before := tree(t, d.root)
			content := tt.content
			if content == nil {
				content = ours(host, "x\n")
			}
			wrote, err := d.open(t).Write(host, content)
			if wrote || !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Write = %v, %v; want an error %q matching %v", wrote, err, tt.want, tt.is)
			}
			if got := tree(t, d.root); !slices.Equal(got, before) {
				t.Errorf("config path changed from %v to %v", before, got)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, d dirs) (root string)
		want  string
	}{
		{"missing config path", func(t *testing.T, d dirs) string { return filepath.Join(d.root, "nope") }, "hosts directory"},
		{"config path is a file", func(t *testing.T, d dirs) string {
			p := filepath.Join(d.root, "file")
			writeRaw(t, p, nil, 0o644)
			return p
		}, "not a directory"},
		{"corrupt state", func(t *testing.T, d dirs) string {
			writeRaw(t, filepath.Join(d.state, StateFile), []byte("{"), 0o600)
			return d.root
		}, StateFile},
		{"unknown state version", func(t *testing.T, d dirs) string {
			writeRaw(t, filepath.Join(d.state, StateFile), fmt.Appendf(nil, `{"version": 2, "config_path": %q}`, d.root), 0o600)
			return d.root
		}, "version 2, want 1"},
		{"state of another config path", func(t *testing.T, d dirs) string {
			writeRaw(t, filepath.Join(d.state, StateFile), []byte(`{"version": 1, "config_path": "/etc/containerd/certs.d"}`), 0o600)
			return d.root
		}, "belongs to hosts directory /etc/containerd/certs.d"},
		{"bad host in state", func(t *testing.T, d dirs) string {
			writeRaw(t, filepath.Join(d.state, StateFile), fmt.Appendf(nil, `{"version": 1, "config_path": %q, "hosts": {"../x": {}}}`, d.root), 0o600)
			return d.root
		}, `bad entry "../x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			root := tt.setup(t, d)
			if _, err := Open(root, d.state); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

var errInjected = errors.New("injected")

// A failure at any step of a write leaves the old file whole and no temporary file
// behind; the next write after the failure goes through.
func TestAtomicity(t *testing.T) {
	t.Parallel()
	const host = "registry.example"
	original := []byte("server = \"https://theirs\"\n")
	tests := []struct {
		name string
		// fail makes the hooks fail for the file named base.
		fail func(m *Manager, base string)
		base string // the file whose write fails
		// wantHosts is what hosts.toml holds after the failure.
		wantHosts []byte
	}{
		{"rename of hosts.toml", failRename, FileName, original},
		{"sync of hosts.toml", failSync, FileName, original},
		{"rename of the state", failRename, StateFile, original},
		{"sync of the state", failSync, StateFile, original},
		{"rename of the backup", failRename, host + "." + FileName, original},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			p := filepath.Join(d.root, host, FileName)
			writeRaw(t, p, original, 0o644)
			m := d.open(t)
			tt.fail(m, tt.base)
			if _, err := m.Write(host, ours(host, "1\n")); !errors.Is(err, errInjected) {
				t.Fatalf("Write: %v, want the injected error", err)
			}
			fileIs(t, p, tt.wantHosts, 0o644)
			d.noTemp(t)

			// With the failure gone, the same Manager writes; what it recorded is on
			// disk, so that after a restart the original is still the one Uninstall
			// restores.
			m.rename, m.sync = os.Rename, (*os.File).Sync
			mustWrite(t, m, host, ours(host, "1\n"), true)
			fileIs(t, p, ours(host, "1\n"), 0o600)
			if err := d.open(t).Uninstall(); err != nil {
				t.Fatal(err)
			}
			fileIs(t, p, original, 0o644)
			d.noTemp(t)
		})
	}
}

// The same for our own file being replaced, and for a directory that refuses the
// temporary file (a read-only one, unless we are root, whom nothing refuses).
func TestAtomicityOwnFile(t *testing.T) {
	t.Parallel()
	const host = "registry.example"
	tests := []struct {
		name string
		fail func(t *testing.T, m *Manager, dir string)
	}{
		{"rename", func(_ *testing.T, m *Manager, _ string) { failRename(m, FileName) }},
		{"sync", func(_ *testing.T, m *Manager, _ string) { failSync(m, FileName) }},
		{"read-only directory", func(t *testing.T, _ *Manager, dir string) {
			if os.Geteuid() == 0 {
				t.Skip("root writes in read-only directories")
			}
			if err := os.Chmod(dir, 0o555); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(dir, 0o755) })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := newDirs(t)
			m := d.open(t)
			p := filepath.Join(d.root, host, FileName)
			mustWrite(t, m, host, ours(host, "1\n"), true)
			tt.fail(t, m, filepath.Dir(p))
			if _, err := m.Write(host, ours(host, "2\n")); err == nil || !strings.Contains(err.Error(), p) {
				t.Fatalf("Write: %v, want an error naming %s", err, p)
			}
			fileIs(t, p, ours(host, "1\n"), 0o600)
			d.noTemp(t)
		})
	}
}

func failRename(m *Manager, base string) {
	m.rename = func(oldpath, newpath string) error {
		if filepath.Base(newpath) == base {
			return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: errInjected}
		}
		return os.Rename(oldpath, newpath)
	}
}

func failSync(m *Manager, base string) {
	m.sync = func(f *os.File) error {
		if strings.HasPrefix(filepath.Base(f.Name()), "."+base+".tmp-") {
			return &os.PathError{Op: "sync", Path: f.Name(), Err: errInjected}
		}
		return f.Sync()
	}
}

// Writes from many goroutines, to the same and to different hosts, keep the state
// whole (run with -race).
func TestConcurrentWrites(t *testing.T) {
	t.Parallel()
	d := newDirs(t)
	m := d.open(t)
	hosts := []string{"a.example", "b.example:5000", "c.example"}
	writeRaw(t, filepath.Join(d.root, "c.example", FileName), []byte("theirs\n"), 0o644)
	var wg sync.WaitGroup
	errs := make(chan error, 3*len(hosts)*10)
	for g := range 3 {
		for _, h := range hosts {
			wg.Go(func() {
				for i := range 10 {
					if _, err := m.Write(h, ours(h, fmt.Sprintf("%d %d\n", g, i))); err != nil {
						errs <- err
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := d.open(t).Owned(); !slices.Equal(got, hosts) {
		t.Errorf("state owns %v, want %v", got, hosts)
	}
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	fileIs(t, filepath.Join(d.root, "c.example", FileName), []byte("theirs\n"), 0o644)
	if got, want := tree(t, d.root), []string{"c.example/", "c.example/" + FileName}; !slices.Equal(got, want) {
		t.Errorf("after Uninstall config path holds %v, want %v", got, want)
	}
}

// The restored file gets its owner back too (only root can give files away).
func TestRestoreOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	d := newDirs(t)
	const host = "registry.example"
	p := filepath.Join(d.root, host, FileName)
	writeRaw(t, p, []byte("theirs\n"), 0o644)
	if err := os.Chown(p, 4321, 8765); err != nil {
		t.Fatal(err)
	}
	m := d.open(t)
	mustWrite(t, m, host, ours(host, "x\n"), true)
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if uid, gid := owner(fi); uid != 4321 || gid != 8765 {
		t.Errorf("restored file owned by %d:%d, want 4321:8765", uid, gid)
	}
	fileIs(t, p, []byte("theirs\n"), 0o644)
}

// TestOpenAs opens, from outside the node, the state a plugin on the node wrote
// under its own config_path, and hands its hosts.toml back.
func TestOpenAs(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	cp, sd := filepath.Join(root, "etc", "certs.d"), filepath.Join(root, "var", "state")
	if err := os.MkdirAll(cp, 0o755); err != nil {
		t.Fatal(err)
	}
	onNode, err := OpenAs(cp, sd, "/etc/certs.d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := onNode.Write("reg.example:5001", []byte("# managed by hopless-nri: do not edit; reg.example:5001\nserver = \"https://reg.example:5001\"\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(cp, sd); err == nil || !strings.Contains(err.Error(), "belongs to hosts directory /etc/certs.d") {
		t.Fatalf("Open by the outside path: %v, want the state refused as the node's", err)
	}
	m, err := OpenAs(cp, sd, "/etc/certs.d/")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(cp); err != nil || len(ents) != 0 {
		t.Fatalf("after Uninstall %s holds %v (%v)", cp, ents, err)
	}
}
