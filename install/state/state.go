// Package state is the installer's record of a node: every file it replaced or
// created, with the checksum and mode it had before, a backup of its content, and
// what was written in its place. Uninstall restores from it byte for byte; status
// compares the node against it.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/hopless/hopless/install/hostfs"
)

// Dir is the node directory that holds the state file and the backups.
const Dir = "/var/lib/hopless/install"

// fileName is the state file inside Dir.
const fileName = "state.json"

// version is the state file's format.
const version = 1

// State is what the installer did to a node.
type State struct {
	Version int `json:"version"`
	// Mode is the node mode installed: inprocess or nri.
	Mode string `json:"mode,omitempty"`
	// Release is the hopless release installed.
	Release string `json:"release,omitempty"`
	// Node is the node's name.
	Node string `json:"node,omitempty"`
	// Updated is when a run last changed something.
	Updated time.Time `json:"updated"`
	// Complete says the last run got to its end; a run that was killed leaves it
	// false, and the next run finishes the job.
	Complete bool `json:"complete"`
	// HostsDir and NRIStateDir are hopless-nri's config_path and state_dir: what
	// the plugin wrote there is restored on uninstall.
	HostsDir    string `json:"hosts_dir,omitempty"`
	NRIStateDir string `json:"nri_state_dir,omitempty"`
	// Socket and Unit are containerd's socket and systemd unit, for the
	// restart and checks of an uninstall.
	Socket string `json:"socket,omitempty"`
	Unit   string `json:"unit,omitempty"`
	// Files are the files the installer owns, in the order it first wrote them.
	Files []File `json:"files"`
	// Dirs are the node directories it created, parents first.
	Dirs []string `json:"dirs,omitempty"`
}

// File is one file the installer owns.
type File struct {
	// Path is the node path.
	Path string `json:"path"`
	// Role says what it is, e.g. "containerd drop-in".
	Role string `json:"role"`
	// Existed says a file was there before the first install; Original and
	// OriginalMode are its checksum (also the name of its backup) and mode.
	Existed      bool   `json:"existed"`
	Original     string `json:"original,omitempty"`
	OriginalMode uint32 `json:"original_mode,omitempty"`
	// StageDir is where the file is staged before its rename when that is not
	// beside it: a file in containerd's NRI plugin directory.
	StageDir string `json:"stage_dir,omitempty"`
	// SHA256 and Mode are what the installer wrote; empty until it has.
	SHA256 string `json:"sha256,omitempty"`
	Mode   uint32 `json:"mode,omitempty"`
}

// Lookup returns the entry of the node path p, or nil.
func (s *State) Lookup(p string) *File {
	for i := range s.Files {
		if s.Files[i].Path == p {
			return &s.Files[i]
		}
	}
	return nil
}

// Installed reports whether the state records anything.
func (s *State) Installed() bool { return len(s.Files) > 0 }

// Store keeps the state file and backups in a resolved directory of the node.
type Store struct {
	// Dir is Dir resolved under the host root.
	Dir string
}

// Exists reports whether the state file exists.
func (st Store) Exists() (bool, error) {
	_, err := os.Stat(filepath.Join(st.Dir, fileName))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking for the install state: %w", err)
	}
	return true, nil
}

// Load reads the state; none yet is an empty state.
func (st Store) Load() (*State, error) {
	p := filepath.Join(st.Dir, fileName)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Version: version}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the install state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding the install state %s: %w", p, err)
	}
	if s.Version != version {
		return nil, fmt.Errorf("install state %s has version %d; this installer reads version %d", p, s.Version, version)
	}
	return &s, nil
}

// Save writes the state atomically.
func (st Store) Save(s *State) error {
	s.Version = version
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the install state: %w", err)
	}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", st.Dir, err)
	}
	return hostfs.WriteFile(filepath.Join(st.Dir, fileName), append(b, '\n'), 0o600, "")
}

func (st Store) backupDir() string { return filepath.Join(st.Dir, "backup") }

// SaveBackup keeps b under its checksum and returns the checksum.
func (st Store) SaveBackup(b []byte) (string, error) {
	sum := hostfs.Sum(b)
	dir := st.backupDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	p := filepath.Join(dir, sum)
	if old, err := os.ReadFile(p); err == nil && hostfs.Sum(old) == sum {
		return sum, nil
	}
	if err := hostfs.WriteFile(p, b, 0o600, ""); err != nil {
		return "", fmt.Errorf("backing up: %w", err)
	}
	return sum, nil
}

// Backup returns the backup with checksum sum, verified.
func (st Store) Backup(sum string) ([]byte, error) {
	p := filepath.Join(st.backupDir(), sum)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading backup %s: %w", p, err)
	}
	if got := hostfs.Sum(b); got != sum {
		return nil, fmt.Errorf("backup %s is corrupt: its checksum is %s", p, got)
	}
	return b, nil
}

// Sweep removes staged files that a killed run left in the store.
func (st Store) Sweep() error {
	if err := hostfs.Sweep(st.Dir); err != nil {
		return err
	}
	return hostfs.Sweep(st.backupDir())
}

// Remove deletes the store: the state file and every backup.
func (st Store) Remove() error {
	if err := os.RemoveAll(st.Dir); err != nil {
		return fmt.Errorf("removing the install state %s: %w", st.Dir, err)
	}
	return nil
}
