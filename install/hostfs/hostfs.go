// Package hostfs writes into a node's root filesystem mounted at a directory (the
// installer's --host-root): paths are resolved inside it, symlinks included, and
// every file lands whole or not at all.
package hostfs

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// TempPrefix starts the name of every file the installer stages. The name ends in
// no suffix that a reader globs for (*.toml, *.conf), so a staged file that a kill
// leaves behind is never read; Sweep removes it on the next run.
const TempPrefix = ".hopless-tmp-"

// Root is a node's root filesystem as seen from the installer.
type Root struct {
	// Dir is where it is mounted, e.g. /host; "/" is the installer's own root.
	Dir string
}

// Path resolves the node path p inside the root. Symlinks on the way are followed
// as the node would follow them, so an absolute link (/var/run -> /run) never
// leads out of the root.
func (r Root) Path(p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("node path %q is not absolute", p)
	}
	out, err := securejoin.SecureJoin(r.Dir, p)
	if err != nil {
		return "", fmt.Errorf("resolving %s under %s: %w", p, r.Dir, err)
	}
	return out, nil
}

// Sum is the hex SHA-256 of b.
func Sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ReadFile reads the file at the resolved path p; a missing file is (nil, nil,
// nil).
func ReadFile(p string) ([]byte, fs.FileInfo, error) {
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", p, fi.Mode().Type())
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return b, fi, nil
}

// Stage writes data to a new file in dir named after base, synced, with mode: the
// first half of WriteFile, for content that is checked before it is renamed into
// place. The caller renames or removes it.
func Stage(dir, base string, data []byte, mode fs.FileMode) (string, error) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", fmt.Errorf("staging %s: %w", base, err)
	}
	tmp := filepath.Join(dir, TempPrefix+base+"-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("staging %s in %s: %w", base, dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return "", fmt.Errorf("staging %s in %s: %w", base, dir, err)
	}
	// Chmod, not the open mode: the umask must not narrow or widen it.
	if err := f.Chmod(mode); err != nil {
		return "", fmt.Errorf("staging %s in %s: %w", base, dir, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("staging %s in %s: %w", base, dir, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("staging %s in %s: %w", base, dir, err)
	}
	ok = true
	return tmp, nil
}

// Commit renames a staged file to dst and syncs dst's directory.
func Commit(staged, dst string) error {
	if err := os.Rename(staged, dst); err != nil {
		_ = os.Remove(staged)
		return fmt.Errorf("renaming %s into place: %w", dst, err)
	}
	return SyncDir(filepath.Dir(dst))
}

// WriteFile writes data to dst atomically: staged in stageDir (dst's directory when
// empty, which must be on the same filesystem), synced, given mode, renamed.
func WriteFile(dst string, data []byte, mode fs.FileMode, stageDir string) error {
	if stageDir == "" {
		stageDir = filepath.Dir(dst)
	}
	tmp, err := Stage(stageDir, filepath.Base(dst), data, mode)
	if err != nil {
		return err
	}
	return Commit(tmp, dst)
}

// SyncDir fsyncs a directory, so that a rename in it survives a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// Sweep removes the staged files that an interrupted run left in dir; a missing dir
// has none.
func Sweep(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking for leftovers in %s: %w", dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("removing leftover %s: %w", filepath.Join(dir, e.Name()), err)
			}
		}
	}
	return nil
}
