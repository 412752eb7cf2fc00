package state

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/install/hostfs"
)

func TestSaveLoad(t *testing.T) {
	t.Parallel()
	st := Store{Dir: filepath.Join(t.TempDir(), "var/lib/hopless/install")}
	if ok, err := st.Exists(); ok || err != nil {
		t.Fatalf("Exists before a save = %v, %v", ok, err)
	}
	empty, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*empty, State{Version: 1}) || empty.Installed() {
		t.Errorf("Load of no state = %+v, want an empty state of version 1", *empty)
	}
	if _, err := os.Stat(st.Dir); !os.IsNotExist(err) {
		t.Errorf("Load created %s: %v", st.Dir, err)
	}

	s := &State{
		Mode: "inprocess", Release: "v0.1.0", Node: "worker-1",
		Updated:  time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC),
		Complete: true, HostsDir: "/etc/containerd/certs.d", NRIStateDir: "/var/lib/hopless/nri",
		Socket: "/run/containerd/containerd.sock", Unit: "containerd.service",
		Files: []File{
			{Path: "/opt/hopless/bin/containerd", Role: "containerd (hopless build)", SHA256: "ab", Mode: 0o755},
			{Path: "/etc/containerd/config.toml", Role: "containerd config (imports added)", Existed: true, Original: "cd", OriginalMode: 0o600, SHA256: "ef", Mode: 0o600},
			{Path: "/etc/hopless/node.token", Role: "pins token"},
		},
		Dirs: []string{"/var/lib/hopless", "/var/lib/hopless/install", "/opt/hopless"},
	}
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	if s.Version != 1 {
		t.Errorf("Save left Version %d, want 1", s.Version)
	}
	got, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("Load after Save:\n%+v\nwant\n%+v", got, s)
	}
	if ok, err := st.Exists(); !ok || err != nil {
		t.Errorf("Exists after a save = %v, %v", ok, err)
	}
	fi, err := os.Stat(filepath.Join(st.Dir, "state.json"))
	if err != nil || fi.Mode() != 0o600 {
		t.Errorf("state file: %v, %v; want mode 0600", fi, err)
	}
	if fi, err := os.Stat(st.Dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory: %v, %v; want mode 0700", fi, err)
	}
	if e := got.Lookup("/etc/containerd/config.toml"); e == nil || e.Original != "cd" {
		t.Errorf("Lookup = %+v", e)
	}
	if e := got.Lookup("/etc/other"); e != nil {
		t.Errorf("Lookup of an unknown path = %+v", e)
	}
	// Lookup points into the state.
	got.Lookup("/etc/hopless/node.token").SHA256 = "99"
	if got.Files[2].SHA256 != "99" {
		t.Error("Lookup returned a copy")
	}
	if !got.Installed() {
		t.Error("Installed() = false with files")
	}

	// Saving again replaces the file and leaves no staged file.
	s.Files = s.Files[:1]
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Load(); err != nil || len(got.Files) != 1 {
		t.Errorf("Load after a second save: %+v, %v", got, err)
	}
	ents, err := os.ReadDir(st.Dir)
	if err != nil || len(ents) != 1 || ents[0].Name() != "state.json" {
		t.Errorf("state directory holds %v, %v", ents, err)
	}

	if err := st.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Dir); !os.IsNotExist(err) {
		t.Errorf("Remove left %s: %v", st.Dir, err)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, text, want string
	}{
		{"wrong version", `{"version": 2, "files": []}`, "install state %s has version 2; this installer reads version 1"},
		{"no version", `{"files": []}`, "install state %s has version 0; this installer reads version 1"},
		{"not JSON", `{"version": 1,`, "decoding the install state %s: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := Store{Dir: t.TempDir()}
			p := filepath.Join(st.Dir, "state.json")
			if err := os.WriteFile(p, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := st.Load()
			want := strings.ReplaceAll(tt.want, "%s", p)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Load = %+v, %v; want error %q", s, err, want)
			}
		})
	}
}

func TestBackup(t *testing.T) {
	t.Parallel()
	st := Store{Dir: filepath.Join(t.TempDir(), "install")}
	data := []byte("version = 3\n")
	sum, err := st.SaveBackup(data)
	if err != nil {
		t.Fatal(err)
	}
	if sum != hostfs.Sum(data) {
		t.Errorf("SaveBackup = %s, want the checksum %s", sum, hostfs.Sum(data))
	}
	p := filepath.Join(st.Dir, "backup", sum)
	if fi, err := os.Stat(p); err != nil || fi.Mode() != 0o600 {
		t.Errorf("backup file: %v, %v; want mode 0600", fi, err)
	}
	got, err := st.Backup(sum)
	if err != nil || string(got) != string(data) {
		t.Errorf("Backup = %q, %v", got, err)
	}
	// The same content again is the same backup.
	if again, err := st.SaveBackup(data); err != nil || again != sum {
		t.Errorf("second SaveBackup = %s, %v", again, err)
	}
	// An empty file has a backup too.
	esum, err := st.SaveBackup(nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := st.Backup(esum); err != nil || len(b) != 0 {
		t.Errorf("Backup of an empty file = %q, %v", b, err)
	}

	// A corrupted backup is refused, and saving the content again repairs it.
	if err := os.WriteFile(p, []byte("version = 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = st.Backup(sum)
	if want := "backup " + p + " is corrupt: its checksum is " + hostfs.Sum([]byte("version = 2\n")); err == nil || err.Error() != want {
		t.Errorf("Backup of a corrupted file: %v, want %q", err, want)
	}
	if _, err := st.SaveBackup(data); err != nil {
		t.Fatal(err)
	}
	if got, err := st.Backup(sum); err != nil || string(got) != string(data) {
		t.Errorf("Backup after a repair = %q, %v", got, err)
	}

	if _, err := st.Backup(hostfs.Sum([]byte("never saved"))); err == nil || !strings.Contains(err.Error(), "reading backup ") {
		t.Errorf("Backup of a missing file: %v", err)
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	st := Store{Dir: t.TempDir()}
	if err := st.Save(&State{}); err != nil {
		t.Fatal(err)
	}
	sum, err := st.SaveBackup([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{st.Dir, filepath.Join(st.Dir, "backup")} {
		if err := os.WriteFile(filepath.Join(d, hostfs.TempPrefix+"left"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Sweep(); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string][]string{st.Dir: {"backup", "state.json"}, filepath.Join(st.Dir, "backup"): {sum}} {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !reflect.DeepEqual(names, want) {
			t.Errorf("%s holds %q after Sweep, want %q", d, names, want)
		}
	}
	if err := (Store{Dir: filepath.Join(st.Dir, "missing")}).Sweep(); err != nil {
		t.Errorf("Sweep of a missing store: %v", err)
	}
}
