package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// CommitBlob moves a completed spool file into storage as d. The caller has verified
// the digest while writing; CommitBlob checks that the file exists and that its size
// is plausible. On the filesystem driver with the spool on the same filesystem the
// file is renamed into place, so readers that hold it open keep reading the same
// inode; otherwise it is uploaded and removed. Committing a digest that is already
// stored succeeds and removes the spool file.
func (s *Store) CommitBlob(ctx context.Context, d digest.Digest, spoolPath string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	mu := s.stripe(string(d))
	mu.Lock()
	defer mu.Unlock()

	fi, err := os.Stat(spoolPath)
	if errors.Is(err, fs.ErrNotExist) {
		if have, err := s.storedSize(ctx, d); err == nil {
			s.touch(d, have)
			return nil // an earlier commit of the same digest went through
		}
		return fmt.Errorf("commit blob %s: spool file %s: %w", d, spoolPath, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("commit blob %s: %w", d, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("commit blob %s: %s is not a regular file: %w", d, spoolPath, errdefs.ErrInvalidArgument)
	}
	size := fi.Size()
	if (size == 0) != (d == d.Algorithm().FromBytes(nil)) {
		return fmt.Errorf("commit blob %s: spool file has %d bytes, impossible for this digest: %w", d, size, errdefs.ErrInvalidArgument)
	}

	if have, err := s.storedSize(ctx, d); err == nil {
		if have == size {
			if err := os.Remove(spoolPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("commit blob %s: remove spool file: %w", d, err)
			}
			s.touch(d, size)
			return nil
		}
		// Same digest, different size: the stored copy is damaged. Replace it.
		s.log.Warn("stored blob has the wrong size; replacing it", "digest", d, "stored", have, "want", size)
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("commit blob %s: %w", d, err)
	}

	if err := s.publish(ctx, d, spoolPath, size); err != nil {
		s.noteWrite(d, size, true, err)
		return fmt.Errorf("commit blob %s: %w", d, err)
	}
	s.noteWrite(d, size, true, nil)
	s.mu.Lock()
	e := &entry{kind: kindBlob, size: size, access: s.now()}
	if old := s.entries[d]; old != nil && old.kind == kindManifest {
		e.kind, e.mediaType, e.refs = kindManifest, old.mediaType, old.refs
	}
	s.putEntryLocked(d, e)
	s.mu.Unlock()
	return nil
}

// publish puts the spool file's bytes at d's blob path and removes the spool file.
func (s *Store) publish(ctx context.Context, d digest.Digest, spoolPath string, size int64) error {
	if s.fsRoot != "" && !s.noRename {
		err := s.rename(d, spoolPath)
		if err == nil || !errors.Is(err, syscall.EXDEV) {
			return err
		}
	}
	if err := s.upload(ctx, d, spoolPath, size); err != nil {
		return err
	}
	if err := os.Remove(spoolPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("removing a committed spool file failed", "path", spoolPath, "error", err)
	}
	return nil
}

// rename moves the spool file into the filesystem driver's tree, durably: the data
// is synced before the name appears, and the directory after.
func (s *Store) rename(d digest.Digest, spoolPath string) error {
	dst := s.fsPath(blobPath(d))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.Open(spoolPath)
	if err != nil {
		return err
	}
	err = f.Sync()
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", spoolPath, err)
	}
	if err := os.Rename(spoolPath, dst); err != nil {
		return err
	}
	// The fill hashed these bytes as it wrote them: the first warm read need not.
	if fi, err := os.Stat(dst); err == nil {
		s.noteVerified(verifyKey{d: d, id: osFileID(fi)})
	}
	return syncDir(filepath.Dir(dst))
}

// upload copies the spool file through a driver Writer.
func (s *Store) upload(ctx context.Context, d digest.Digest, spoolPath string, size int64) error {
	src, err := os.Open(spoolPath)
	if err != nil {
		return err
	}
	defer src.Close()
	final := blobPath(d)
	target := final
	if !s.directWrite {
		target = path.Join(tmpDir, "blob-"+randomName())
	}
	w, err := s.drv.Writer(ctx, target, false)
	if err != nil {
		return fmt.Errorf("open writer: %w", err)
	}
	n, err := io.Copy(w, src)
	if err == nil && n != size {
		err = fmt.Errorf("copied %d of %d bytes", n, size)
	}
	if err == nil {
		err = w.Commit(ctx)
	}
	if err != nil {
		_ = w.Cancel(ctx)
		_ = w.Close()
		return fmt.Errorf("upload: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("upload: close: %w", err)
	}
	if target != final {
		if err := s.drv.Move(ctx, target, final); err != nil {
			_ = s.drv.Delete(ctx, target)
			return fmt.Errorf("move into place: %w", err)
		}
	}
	// The fill hashed these bytes as it wrote them: no master need hash them again.
	if fi, err := s.drv.Stat(ctx, final); err == nil {
		key := verifyKey{d: d, id: driverFileID(fi)}
		s.noteVerified(key)
		s.recordVerified(ctx, key)
	}
	return nil
}

// storedSize asks the driver, not the index, for d's size: a commit must not drop
// its spool file on the word of an index entry whose file is gone.
func (s *Store) storedSize(ctx context.Context, d digest.Digest) (int64, error) {
	fi, err := s.drv.Stat(ctx, blobPath(d))
	if isNotFound(err) {
		return 0, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("stat blob %s: %w", d, err)
	}
	if fi.IsDir() {
		return 0, fmt.Errorf("blob %s: stored path is a directory: %w", d, errdefs.ErrDataLoss)
	}
	return fi.Size(), nil
}

// StatBlob returns d's size, or an error wrapping errdefs.ErrNotFound.
func (s *Store) StatBlob(ctx context.Context, d digest.Digest) (int64, error) {
	if err := checkDigest(d); err != nil {
		return 0, err
	}
	s.mu.Lock()
	e := s.entries[d]
	s.mu.Unlock()
	if e != nil {
		return e.size, nil
	}
	size, err := s.storedSize(ctx, d)
	if err != nil {
		return 0, err
	}
	// Committed by another master sharing the storage, or lost from the index.
	s.mu.Lock()
	if s.entries[d] == nil {
		s.putEntryLocked(d, &entry{kind: kindBlob, size: size, access: s.now()})
	}
	s.mu.Unlock()
	return size, nil
}

// OpenBlob opens d for reading and records the access. Unless the blob was verified
// before and has not changed since, the reader verifies the digest: reading
// sequentially from 0, it holds back the final bytes until the digest matches; a
// read that starts elsewhere first reads the whole blob once. On a mismatch Read
// returns an error wrapping errdefs.ErrDataLoss (never io.EOF) and the blob is
// removed so that the next request fetches it again.
//
// On the filesystem driver a verified blob is returned as its *os.File, for
// http.ServeContent's sendfile path; removing the blob meanwhile does not disturb it.
func (s *Store) OpenBlob(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, int64, error) {
	return s.openBlob(ctx, d, false, true)
}

// VerifyBlob hashes all of the stored blob d now, even if it was verified before and
// looks unchanged (same size, mtime and inode): a client that found the bytes it was
// served to be wrong asks for this with Cache-Control: no-cache. A copy that does not
// match is removed as OpenBlob's reader removes one, and VerifyBlob returns an error
// wrapping errdefs.ErrDataLoss; a missing blob is errdefs.ErrNotFound. A copy that
// matches is remembered as verified, so that the OpenBlob that follows serves it
// straight from the file.
func (s *Store) VerifyBlob(ctx context.Context, d digest.Digest) error {
	r, _, err := s.openBlob(ctx, d, true, true)
	if err != nil {
		return err
	}
	defer r.Close()
	return r.(*verifyingReader).verify()
}

// openBlob is OpenBlob; recheck returns a verifying reader whatever the blob's
// verified state, and touch records the access (the scrub's reads are no use).
func (s *Store) openBlob(ctx context.Context, d digest.Digest, recheck, touch bool) (io.ReadSeekCloser, int64, error) {
	if err := checkDigest(d); err != nil {
		return nil, 0, err
	}
	p := blobPath(d)
	var (
		r    io.ReadSeekCloser
		id   fileID
		same func(context.Context) bool
	)
	if s.fsRoot != "" {
		full := s.fsPath(p)
		f, err := os.Open(full)
		if errors.Is(err, fs.ErrNotExist) {
			s.forget(d)
			return nil, 0, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("open blob %s: %w", d, err)
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close()
			return nil, 0, fmt.Errorf("open blob %s: %w", d, err)
		}
		if !fi.Mode().IsRegular() {
			_ = f.Close()
			return nil, 0, fmt.Errorf("blob %s: stored path is not a regular file: %w", d, errdefs.ErrDataLoss)
		}
		r, id = f, osFileID(fi)
		same = func(context.Context) bool {
			fi, err := os.Stat(full)
			return err == nil && osFileID(fi) == id
		}
	} else {
		fi, err := s.drv.Stat(ctx, p)
		if isNotFound(err) {
			s.forget(d)
			return nil, 0, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("open blob %s: %w", d, err)
		}
		if fi.IsDir() {
			return nil, 0, fmt.Errorf("blob %s: stored path is a directory: %w", d, errdefs.ErrDataLoss)
		}
		id = driverFileID(fi)
		dr := &driverReader{ctx: ctx, drv: s.drv, path: p, size: id.size}
		// Open now: a stream already open survives the blob's eviction.
		if err := dr.open(); err != nil {
			if errdefs.IsNotFound(err) {
				s.forget(d)
			}
			return nil, 0, fmt.Errorf("open blob %s: %w", d, err)
		}
		r = dr
		same = func(ctx context.Context) bool {
			fi, err := s.drv.Stat(ctx, p)
			return err == nil && driverFileID(fi) == id
		}
	}
	if want, ok := s.recordedSize(d); ok && want != id.size {
		// One digest has one size: the stored copy was cut or grown since it was
		// committed. It is removed, and the caller fills it again as a miss,
		// before any header names the wrong size.
		_ = r.Close()
		why := fmt.Sprintf("%d bytes stored, %d committed", id.size, want)
		s.verifyFailed(d, why, same)
		return nil, 0, fmt.Errorf("blob %s: stored copy has the wrong size (%s), removed: %w (%w)", d, why, errdefs.ErrNotFound, errdefs.ErrDataLoss)
	}
	if touch {
		s.touch(d, id.size)
	}
	key := verifyKey{d: d, id: id}
	if !recheck && (s.verified.has(key) || s.sharedVerified(ctx, key)) {
		return r, id.size, nil
	}
	return &verifyingReader{s: s, d: d, r: r, size: id.size, key: key, same: same,
		dg: d.Algorithm().Digester()}, id.size, nil
}
