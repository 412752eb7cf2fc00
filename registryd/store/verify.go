package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// fileID identifies one version of a stored file: any rewrite changes it.
type fileID struct {
	size  int64
	mtime int64
	inode uint64 // 0 off the filesystem driver
}

func osFileID(fi os.FileInfo) fileID {
	return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano(), inode: inode(fi)}
}

func driverFileID(fi storagedriver.FileInfo) fileID {
	return fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}

type verifyKey struct {
	d  digest.Digest
	id fileID
}

// verifiedCache remembers blobs whose bytes matched their digest, bounded, forgetting
// the oldest first.
type verifiedCache struct {
	mu   sync.Mutex
	m    map[verifyKey]struct{}
	ring []verifyKey
	next int
}

func newVerifiedCache(n int) *verifiedCache {
	return &verifiedCache{m: make(map[verifyKey]struct{}, n), ring: make([]verifyKey, 0, n)}
}

func (c *verifiedCache) has(k verifyKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[k]
	return ok
}

func (c *verifiedCache) add(k verifyKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; ok {
		return
	}
	if len(c.ring) < cap(c.ring) {
		c.ring = append(c.ring, k)
	} else {
		delete(c.m, c.ring[c.next])
		c.ring[c.next] = k
		c.next = (c.next + 1) % len(c.ring)
	}
	c.m[k] = struct{}{}
}

// verifyingReader serves a blob while checking its digest. Reading sequentially from
// 0 it hashes as it goes but stops short of the last holdback bytes; those are read,
// hashed and released only when the digest matches. A read anywhere else first
// hashes the rest of the blob. After a match it reads straight through.
type verifyingReader struct {
	s    *Store
	d    digest.Digest
	r    io.ReadSeekCloser
	size int64
	key  verifyKey
	// same reports whether the stored blob is still the one this reader opened, so
	// that a mismatch never removes a copy committed meanwhile.
	same func(context.Context) bool

	dg     digest.Digester
	hashed int64 // bytes [0, hashed) went into dg; while unverified r is at hashed
	upos   int64 // r's position
	pos    int64 // the caller's position
	tail   []byte
	ok     bool
	err    error
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if !v.ok {
		if v.pos == v.hashed && v.pos < v.size-holdback {
			return v.readSequential(p)
		}
		if err := v.verify(); err != nil {
			return 0, err
		}
	}
	if v.pos >= v.size {
		return 0, io.EOF
	}
	if start := v.size - int64(len(v.tail)); v.tail != nil && v.pos >= start {
		n := copy(p, v.tail[v.pos-start:])
		v.pos += int64(n)
		return n, nil
	}
	if v.upos != v.pos {
		if _, err := v.r.Seek(v.pos, io.SeekStart); err != nil {
			return 0, err
		}
		v.upos = v.pos
	}
	n, err := v.r.Read(p)
	v.pos += int64(n)
	v.upos += int64(n)
	return n, err
}

func (v *verifyingReader) readSequential(p []byte) (int, error) {
	if room := v.size - holdback - v.pos; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := v.r.Read(p)
	v.dg.Hash().Write(p[:n])
	v.hashed += int64(n)
	v.upos += int64(n)
	v.pos += int64(n)
	if err == io.EOF {
		return n, v.fail(fmt.Sprintf("content ends at byte %d of %d", v.hashed, v.size))
	}
	return n, err
}

// verify hashes [hashed, size) and compares the digest, keeping the last chunk.
func (v *verifyingReader) verify() error {
	if v.upos != v.hashed {
		if _, err := v.r.Seek(v.hashed, io.SeekStart); err != nil {
			return fmt.Errorf("read blob %s: %w", v.d, err)
		}
		v.upos = v.hashed
	}
	buf := make([]byte, min(holdback, v.size-v.hashed))
	h := v.dg.Hash()
	var last []byte
	for v.hashed < v.size {
		chunk := buf[:min(int64(len(buf)), v.size-v.hashed)]
		n, err := io.ReadFull(v.r, chunk)
		h.Write(chunk[:n])
		v.hashed += int64(n)
		v.upos += int64(n)
		// Only a plain EOF means the content is short; driverReader wraps a cut
		// stream so that it is a transient error, not data loss.
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return v.fail(fmt.Sprintf("content ends at byte %d of %d", v.hashed, v.size))
		}
		if err != nil {
			return fmt.Errorf("read blob %s: %w", v.d, err)
		}
		last = chunk
	}
	v.s.verifications.Add(1)
	if got := v.dg.Digest(); got != v.d {
		v.s.countHash("mismatch")
		return v.fail("content hashes to " + got.String())
	}
	v.s.countHash("ok")
	v.tail = last
	if v.tail == nil {
		v.tail = []byte{}
	}
	v.ok = true
	v.s.noteVerified(v.key)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	v.s.recordVerified(ctx, v.key)
	return nil
}

func (s *Store) countHash(result string) {
	if s.m != nil {
		s.m.BlobHashes.WithLabelValues(result).Inc()
	}
}

func (v *verifyingReader) fail(why string) error {
	v.err = fmt.Errorf("blob %s: stored content is corrupt (%s): %w", v.d, why, errdefs.ErrDataLoss)
	v.s.verifyFailed(v.d, why, v.same)
	return v.err
}

func (v *verifyingReader) Seek(offset int64, whence int) (int64, error) {
	abs, err := seekTarget(v.pos, v.size, offset, whence)
	if err != nil {
		return 0, err
	}
	v.pos = abs // lazily: ServeContent seeks to the end and back to learn the size
	return abs, nil
}

func (v *verifyingReader) Close() error { return v.r.Close() }

// verifyFailed counts a mismatch and removes the blob, if it is still the same one.
func (s *Store) verifyFailed(d digest.Digest, why string, same func(context.Context) bool) {
	if s.m != nil {
		s.m.VerifyFailures.WithLabelValues("store").Inc()
	}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	mu := s.stripe(string(d))
	mu.Lock()
	defer mu.Unlock()
	if same != nil && !same(ctx) {
		s.log.Warn("stored content did not match its digest, but was replaced meanwhile", "digest", d, "why", why)
		return
	}
	s.forget(d)
	err := s.deleteContent(ctx, d)
	s.log.Error("stored content did not match its digest; removed it", "digest", d, "why", why, "remove_error", err)
}

// deleteContent removes d's payload and manifest record, whichever exist.
func (s *Store) deleteContent(ctx context.Context, d digest.Digest) error {
	var errs []error
	paths := []string{metaPath(d), blobPath(d)}
	if s.shared != nil {
		paths = append(paths, verifiedPath(d))
	}
	for _, p := range paths {
		if err := s.drv.Delete(ctx, p); err != nil && !isNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// driverReader reads a stored file through the driver, opening a new driver reader
// at the offset after each Seek that moves.
type driverReader struct {
	ctx  context.Context
	drv  storagedriver.StorageDriver
	path string
	size int64
	off  int64
	rc   io.ReadCloser
}

func (r *driverReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if err := r.open(); err != nil {
		return 0, err
	}
	if rest := r.size - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.rc.Read(p)
	r.off += int64(n)
	if err == io.EOF {
		if r.off < r.size {
			return n, fmt.Errorf("read %s: stream ended at byte %d of %d: %w", r.path, r.off, r.size, io.ErrUnexpectedEOF)
		}
		err = nil
	}
	return n, err
}

func (r *driverReader) open() error {
	if r.rc != nil || r.off >= r.size {
		return nil
	}
	rc, err := r.drv.Reader(r.ctx, r.path, r.off)
	if isNotFound(err) {
		return fmt.Errorf("read %s: %w", r.path, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", r.path, err)
	}
	r.rc = rc
	return nil
}

func (r *driverReader) Seek(offset int64, whence int) (int64, error) {
	abs, err := seekTarget(r.off, r.size, offset, whence)
	if err != nil {
		return 0, err
	}
	if abs != r.off && r.rc != nil {
		_ = r.rc.Close()
		r.rc = nil
	}
	r.off = abs
	return abs, nil
}

func (r *driverReader) Close() error {
	if r.rc == nil {
		return nil
	}
	err := r.rc.Close()
	r.rc = nil
	return err
}

func seekTarget(cur, size, offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = cur + offset
	case io.SeekEnd:
		abs = size + offset
	default:
		return 0, fmt.Errorf("seek: bad whence %d: %w", whence, errdefs.ErrInvalidArgument)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek: negative position %d: %w", abs, errdefs.ErrInvalidArgument)
	}
	return abs, nil
}
