package hosts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// StateFile is the Manager's record of what it owns, in its state directory.
const StateFile = "state.json"

// backupDir holds, in the state directory, the foreign hosts.toml files we replaced.
const backupDir = "backups"

const stateVersion = 1

// fileMode is the mode of every hosts.toml we write: a file may carry a credential,
// and one mode for all keeps it from staying world-readable when one is added.
const fileMode = 0o600

// ErrForeign marks a hosts.toml or directory that someone else wrote where the
// Manager would write: it is left as it is.
var ErrForeign = errors.New("written by someone else")

// Dir returns the directory, under containerd's config_path, of the image host's
// hosts.toml: the host as written in image references (host[:port]). It refuses a
// name that is not an image host, and so any name that would leave the directory.
func Dir(host string) (string, error) {
	switch {
	case host == "":
		return "", fmt.Errorf("empty image host: %w", errdefs.ErrInvalidArgument)
	case strings.ContainsAny(host, "/\\\x00") || strings.Contains(host, ".."):
		return "", fmt.Errorf("image host %q would escape the hosts directory: %w", host, errdefs.ErrInvalidArgument)
	}
	if err := conf.CheckHost(host); err != nil {
		return "", fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return host, nil
}

// shadowDir is the directory that containerd looks at before Dir(host) for a host
// with a port: "registry.example_5000_" for "registry.example:5000". It is "" when
// there is none.
func shadowDir(host string) string {
	// The same rule as containerd's, which also applies it to "[::1]".
	if i := strings.LastIndex(host, ":"); i > 0 {
		return host[:i] + "_" + host[i+1:] + "_"
	}
	return ""
}

// Manager writes the hosts.toml of image hosts under containerd's config_path and
// keeps track, in its state directory, of the directories it owns, so that Uninstall
// leaves config_path as it found it. Its methods may be called concurrently; one
// state directory must have one Manager at a time.
//
// A host directory is ours once the state file records it, or when its hosts.toml
// starts with our Header. The rules:
//
//   - A directory that does not exist is created (and removed again by Remove, if
//     empty then).
//   - A foreign hosts.toml found at the first Write is backed up, bytes, mode and
//     owner, into the state directory, and recorded, before it is replaced.
//   - A foreign hosts.toml that appears after that (without our Header and not
//     byte for byte the one we backed up) is someone else's new configuration: it is
//     never overwritten or removed. Write fails with ErrForeign, naming the path;
//     Remove leaves it in place, and fails with ErrForeign (keeping the backup) only
//     when it would have restored a backup over it.
//   - A directory "host_port_" next to "host:port" is read by containerd instead of
//     ours: Write fails with ErrForeign until it is removed.
//
// Symbolic links are never followed: a host directory or hosts.toml that is one is
// refused.
type Manager struct {
	root     string
	stateDir string
	// id is the hosts directory as the state records it: root, or, for a Manager
	// opened from outside the node (OpenUnder), the node's own path.
	id string

	// rename and sync are os.Rename and (*os.File).Sync, but for tests.
	rename func(oldpath, newpath string) error
	sync   func(*os.File) error

	mu sync.Mutex
	st state
}

type state struct {
	Version int `json:"version"`
	// ConfigPath is the root the state belongs to.
	ConfigPath string            `json:"config_path"`
	Hosts      map[string]*entry `json:"hosts"`
}

// entry is what we know of one host directory we own.
type entry struct {
	// CreatedDir is set when we created the directory.
	CreatedDir bool `json:"created_dir,omitempty"`
	// Backup describes the foreign hosts.toml we replaced, kept in
	// backups/<host>.hosts.toml; nil when there was none.
	Backup *backup `json:"backup,omitempty"`
}

type backup struct {
	Mode   fs.FileMode `json:"mode"`
	UID    int         `json:"uid"`
	GID    int         `json:"gid"`
	SHA256 string      `json:"sha256"`
}

// Open returns the Manager of the host directories under configPath (containerd's
// config_path, which must exist), with its state in stateDir, created if missing.
// It picks up what an earlier Manager on the same state directory owned.
func Open(configPath, stateDir string) (*Manager, error) {
	root, err := filepath.Abs(configPath)
	if err != nil {
		return nil, fmt.Errorf("hosts directory %s: %w", configPath, err)
	}
	return open(root, stateDir, root)
}

// OpenAs is Open for a node whose root filesystem the caller sees elsewhere, as an
// installer does: configPath and stateDir are where the caller finds them, and
// nodeConfigPath is the node's own path of configPath, which the plugin on the node
// recorded in its state.
func OpenAs(configPath, stateDir, nodeConfigPath string) (*Manager, error) {
	root, err := filepath.Abs(configPath)
	if err != nil {
		return nil, fmt.Errorf("hosts directory %s: %w", configPath, err)
	}
	return open(root, stateDir, filepath.Clean(nodeConfigPath))
}

func open(root, stateDir, id string) (*Manager, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("hosts directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("hosts directory %s: not a directory", root)
	}
	sd, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	if err := os.MkdirAll(sd, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	m := &Manager{root: root, stateDir: sd, id: id, rename: os.Rename, sync: (*os.File).Sync}
	if err := m.load(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Manager) load() error {
	p := filepath.Join(m.stateDir, StateFile)
	m.st = state{Version: stateVersion, ConfigPath: m.id, Hosts: map[string]*entry{}}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("hosts state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("hosts state %s: %w", p, err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("hosts state %s: version %d, want %d", p, st.Version, stateVersion)
	}
	if st.ConfigPath != m.id {
		return fmt.Errorf("hosts state %s: belongs to hosts directory %s, not %s", p, st.ConfigPath, m.id)
	}
	for h, e := range st.Hosts {
		if _, err := Dir(h); err != nil || e == nil {
			return fmt.Errorf("hosts state %s: bad entry %q", p, h)
		}
	}
	if st.Hosts == nil {
		st.Hosts = map[string]*entry{}
	}
	m.st = st
	return nil
}

// save writes the state file atomically.
func (m *Manager) save() error {
	b, err := json.MarshalIndent(m.st, "", "  ")
	if err != nil {
		return fmt.Errorf("hosts state: %w", err)
	}
	return m.writeFile(m.stateDir, StateFile, append(b, '\n'), 0o600, nil)
}

// Owned returns the image hosts whose directories the Manager owns, sorted.
func (m *Manager) Owned() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	hosts := make([]string, 0, len(m.st.Hosts))
	for h := range m.st.Hosts {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	return hosts
}

// Path returns the hosts.toml of the image host under the Manager's config_path.
func (m *Manager) Path(host string) (string, error) {
	d, err := Dir(host)
	if err != nil {
		return "", err
	}
	return filepath.Join(m.root, d, FileName), nil
}

// Write makes content, which must start with Header(host) on a line of its own, the
// hosts.toml of the image host, atomically, and reports whether it wrote: it does
// not when the file already holds content with our mode.
func (m *Manager) Write(host string, content []byte) (bool, error) {
	dirName, err := Dir(host)
	if err != nil {
		return false, err
	}
	if !bytes.HasPrefix(content, []byte(Header(host)+"\n")) {
		return false, fmt.Errorf("hosts.toml of %q: content does not start with the line %q: %w", host, Header(host), errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	dir := filepath.Join(m.root, dirName)
	path := filepath.Join(dir, FileName)
	if s := shadowDir(host); s != "" {
		sp := filepath.Join(m.root, s)
		if _, err := os.Lstat(sp); err == nil {
			return false, fmt.Errorf("%s: containerd reads it instead of %s: remove it: %w", sp, dir, ErrForeign)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("hosts.toml of %q: %w", host, err)
		}
	}
	e := m.st.Hosts[host]
	dirExists, err := isDir(dir)
	if err != nil {
		return false, err
	}
	if !dirExists {
		// Recorded first, so that a crash after the mkdir still leaves it ours.
		created := entry{CreatedDir: true}
		if e != nil {
			created.Backup = e.Backup
		}
		if err := m.record(host, &created); err != nil {
			return false, err
		}
		e = &created
		if err := os.Mkdir(dir, 0o755); err != nil {
			return false, fmt.Errorf("hosts directory: %w", err)
		}
		if err := m.syncDir(m.root); err != nil {
			return false, err
		}
	}
	cur, fi, err := readFile(path)
	if err != nil {
		return false, err
	}
	switch {
	case fi == nil:
		if e == nil {
			if err := m.record(host, &entry{}); err != nil {
				return false, err
			}
		}
	case isOurs(host, cur):
		if e == nil {
			// Ours by its header: the state was lost, or the file came from elsewhere.
			if err := m.record(host, &entry{}); err != nil {
				return false, err
			}
		}
		if bytes.Equal(cur, content) && fi.Mode().Perm() == fileMode {
			return false, nil
		}
	case e == nil:
		if err := m.takeOver(host, dirName, cur, fi); err != nil {
			return false, err
		}
	case e.Backup != nil && sum(cur) == e.Backup.SHA256:
		// The file we backed up, still or again in place: replacing it loses nothing.
	default:
		return false, fmt.Errorf("%s: a hosts.toml without the hopless header replaced ours: refusing to overwrite it: %w", path, ErrForeign)
	}
	if err := m.writeFile(dir, FileName, content, fileMode, nil); err != nil {
		return false, err
	}
	return true, nil
}

// takeOver backs up the foreign hosts.toml cur of host and records it.
func (m *Manager) takeOver(host, dirName string, cur []byte, fi fs.FileInfo) error {
	uid, gid := owner(fi)
	b := &backup{Mode: fi.Mode().Perm(), UID: uid, GID: gid, SHA256: sum(cur)}
	bd := filepath.Join(m.stateDir, backupDir)
	if err := os.MkdirAll(bd, 0o700); err != nil {
		return fmt.Errorf("hosts backups: %w", err)
	}
	if err := m.writeFile(bd, backupName(dirName), cur, 0o600, nil); err != nil {
		return err
	}
	return m.record(host, &entry{Backup: b})
}

// record makes e the entry of host (nil: none) and saves the state. On failure the
// state stays as it was in memory too: nothing may act on a record that is not on
// disk, such as replacing a file whose backup the state does not know.
func (m *Manager) record(host string, e *entry) error {
	prev, had := m.st.Hosts[host]
	if e == nil {
		delete(m.st.Hosts, host)
	} else {
		m.st.Hosts[host] = e
	}
	if err := m.save(); err != nil {
		if had {
			m.st.Hosts[host] = prev
		} else {
			delete(m.st.Hosts, host)
		}
		return err
	}
	return nil
}

func backupName(dirName string) string { return dirName + "." + FileName }

// Remove gives up the directory of the image host: it restores the foreign
// hosts.toml it replaced, or removes its own (and the directory, when it created it
// and nothing else is left in it). A host it does not own (not recorded, and no
// hosts.toml with our Header) is left alone.
func (m *Manager) Remove(host string) error {
	dirName, err := Dir(host)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.remove(host, dirName)
}

func (m *Manager) remove(host, dirName string) error {
	dir := filepath.Join(m.root, dirName)
	path := filepath.Join(dir, FileName)
	e := m.st.Hosts[host]
	dirExists, err := isDir(dir)
	if err != nil {
		return err
	}
	var cur []byte
	var fi fs.FileInfo
	if dirExists {
		if cur, fi, err = readFile(path); err != nil {
			return err
		}
	}
	ours := fi != nil && isOurs(host, cur)
	if e == nil {
		if !ours {
			return nil
		}
		e = &entry{}
	}
	switch {
	case e.Backup != nil:
		if fi != nil && !ours && sum(cur) != e.Backup.SHA256 {
			return fmt.Errorf("%s: a hosts.toml without the hopless header replaced ours: not restoring the one hopless replaced over it, which stays in %s: %w",
				path, filepath.Join(m.stateDir, backupDir, backupName(dirName)), ErrForeign)
		}
		if err := m.restore(host, dirName, dir, e.Backup); err != nil {
			return err
		}
	case ours:
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("hosts.toml: %w", err)
		}
		if err := m.syncDir(dir); err != nil {
			return err
		}
	}
	if e.CreatedDir && e.Backup == nil {
		// Only an empty directory goes: anything else in it is someone else's.
		if err := os.Remove(dir); err == nil {
			if err := m.syncDir(m.root); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("hosts directory: %w", err)
		}
	}
	if _, recorded := m.st.Hosts[host]; recorded {
		if err := m.record(host, nil); err != nil {
			return err
		}
	}
	if e.Backup != nil {
		if err := os.Remove(filepath.Join(m.stateDir, backupDir, backupName(dirName))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("hosts backup: %w", err)
		}
	}
	return nil
}

// restore puts the backed-up hosts.toml of host back, bytes, mode and owner.
func (m *Manager) restore(host, dirName, dir string, b *backup) error {
	bp := filepath.Join(m.stateDir, backupDir, backupName(dirName))
	data, err := os.ReadFile(bp)
	if err != nil {
		return fmt.Errorf("hosts backup of %q: %w", host, err)
	}
	if sum(data) != b.SHA256 {
		return fmt.Errorf("hosts backup %s: content does not match its recorded sha256 %s", bp, b.SHA256)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("hosts directory: %w", err)
	}
	return m.writeFile(dir, FileName, data, b.Mode, &[2]int{b.UID, b.GID})
}

// Uninstall gives up every directory the Manager owns, as Remove, and then removes
// its state. A host it cannot give up stays recorded, with its backup, so that
// Uninstall may be run again once the problem is solved; its errors are joined.
func (m *Manager) Uninstall() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	hosts := make([]string, 0, len(m.st.Hosts))
	for h := range m.st.Hosts {
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	var errs []error
	for _, h := range hosts {
		// The state's hosts were checked when it was loaded.
		d, _ := Dir(h)
		if err := m.remove(h, d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(filepath.Join(m.stateDir, StateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hosts state: %w", err)
	}
	// Every recorded backup is restored by now; what is left is from a takeover whose
	// state was never saved, and so whose file was never replaced.
	if err := os.RemoveAll(filepath.Join(m.stateDir, backupDir)); err != nil {
		return fmt.Errorf("hosts backups: %w", err)
	}
	return m.syncDir(m.stateDir)
}

// writeFile replaces dir/name with data atomically: a temporary file in dir is
// written, synced and renamed over it, and dir is synced. The file gets mode perm
// and, when own is set, that owner (uid, gid). The temporary file never outlives a
// failure.
func (m *Manager) writeFile(dir, name string, data []byte, perm fs.FileMode, own *[2]int) (err error) {
	target := filepath.Join(dir, name)
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return fmt.Errorf("writing %s: %w", target, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("writing %s: %w", target, err)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if own != nil {
		if err := chown(f, own[0], own[1]); err != nil {
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := m.sync(f); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := m.rename(tmp, target); err != nil {
		return err
	}
	return m.syncDir(dir)
}

func (m *Manager) syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	defer d.Close()
	if err := m.sync(d); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// isDir reports whether p is a directory, and fails when it is anything else.
func isDir(p string) (bool, error) {
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("hosts directory: %w", err)
	case !fi.IsDir():
		return false, fmt.Errorf("hosts directory %s: not a directory (%s): %w", p, fi.Mode().Type(), ErrForeign)
	}
	return true, nil
}

// readFile returns the content and FileInfo of the regular file p, or nil for both
// when it does not exist.
func readFile(p string) ([]byte, fs.FileInfo, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("hosts.toml: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file (%s): %w", p, fi.Mode().Type(), ErrForeign)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, fmt.Errorf("hosts.toml: %w", err)
	}
	return b, fi, nil
}

// isOurs reports whether b starts with the Header of host on a line of its own.
func isOurs(host string, b []byte) bool {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return string(line) == Header(host)
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
