package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/space"
)

// Disk space. The store measures the filesystems it writes to (the spool's and, for
// the filesystem driver, the root's) and keeps each above its floor, storage.min_free:
//
//   - A fill reserves the bytes it still has to write once the first answer gives the
//     blob's size (ReserveSpool). If they would take a filesystem below its floor, the
//     store first evicts, as eviction always does (least recently used first, never
//     pinned or referenced content), and only when that can make room; otherwise the
//     fill is refused with space.ErrNoSpace and the blob is served without caching.
//   - Below the floor no fill starts (CanFill); eviction runs at once.
//   - A write that fails with ENOSPC or EDQUOT (a spool write, a commit, a manifest or
//     tag) is remembered, with the bytes it needed, until a later blob commit succeeds
//     or the filesystems have that room again. Nothing already written is dropped for
//     it: a spool file cut short by a full disk is a good leftover.
//
// Spool files count in max_bytes, and one that no fill holds is removed once it has
// not been written for storage.spool_max_age.

// maxRefused bounds the memory of blobs refused for lack of space.
const maxRefused = 4096

// spaceState is what the store knows of its disk space. Its mutex is taken after the
// stripes and s.mu, never before them: nothing that holds it evicts.
type spaceState struct {
	mu sync.Mutex
	// holds are the spool files that fills use, by digest.
	holds map[digest.Digest]*spoolHold
	// failure is the last write that failed for lack of space, until one succeeds.
	failure *spaceFailure
	// refused are blobs whose fill found no room, with the bytes they need.
	refused map[digest.Digest]int64
	// writable is the last state reported, for logging changes.
	writable bool
	// kick wakes RunEviction. stuck is set when eviction could not bring a
	// filesystem back to its floor: finding it below the floor again then wakes
	// nobody until the next regular run or a new write, so that a disk full of
	// pinned content costs no eviction per request.
	kick  chan struct{}
	stuck bool
}

type spoolHold struct {
	n    int   // fills holding the file
	size int64 // the blob's size once reserved, else -1
}

type spaceFailure struct {
	d    digest.Digest // "" when not a blob
	need int64         // bytes the write needed, if known
	err  error
}

func newSpaceState() spaceState {
	return spaceState{
		holds:    make(map[digest.Digest]*spoolHold),
		refused:  make(map[digest.Digest]int64),
		writable: true,
		kick:     make(chan struct{}, 1),
	}
}

// fsUsage is one filesystem the store writes to.
type fsUsage struct {
	space.Usage
	dir     string // a directory on it, for messages
	floor   int64  // storage.min_free of this filesystem, in bytes
	content bool   // it holds the driver's content, so eviction frees room on it
	spool   bool   // it holds the spool
}

// usages measures the filesystems of the spool and the root. A filesystem that cannot
// be measured (another OS) is left out: nothing is then refused for space.
func (s *Store) usages() []fsUsage {
	dirs := []string{s.spool}
	if s.fsRoot != "" {
		dirs = append(dirs, s.fsRoot)
	}
	var out []fsUsage
	for i, dir := range dirs {
		u, err := space.Stat(dir)
		if err != nil {
			continue
		}
		if i == 1 && len(out) == 1 && out[0].Dev == u.Dev {
			out[0].content = true
			continue
		}
		out = append(out, fsUsage{Usage: u, dir: dir, floor: s.cfg.MinFree.Of(u.Total), content: i == 1, spool: i == 0})
	}
	return out
}

// initMaxBytes sets the bound of the cache: storage.max_bytes, or, when it was left
// out, storage.max_bytes's default share of the root's filesystem.
func (s *Store) initMaxBytes() {
	s.maxBytes = int64(s.cfg.MaxBytes)
	switch {
	case s.maxBytes > 0 || s.cfg.MaxBytesShare <= 0:
		s.log.Info("cache bounds", "max_bytes", s.maxBytes, "min_free", s.cfg.MinFree.String())
	case s.fsRoot == "":
		s.log.Info("cache bounds: max_bytes is unbounded, the driver has no local filesystem to size it from",
			"driver", s.cfg.Driver, "min_free", s.cfg.MinFree.String())
	default:
		u, err := space.Stat(s.fsRoot)
		if err != nil {
			s.log.Warn("cache bounds: max_bytes is unbounded, the root's filesystem cannot be measured", "error", err)
			return
		}
		s.maxBytes = max(int64(float64(u.Total)*s.cfg.MaxBytesShare/100), 1)
		s.log.Info("cache bounds: max_bytes derived from the root's filesystem", "max_bytes", s.maxBytes,
			"share_percent", s.cfg.MaxBytesShare, "filesystem_bytes", u.Total, "min_free", s.cfg.MinFree.String())
	}
}

// MaxBytes is the bound of the cache in bytes (0 is unbounded): storage.max_bytes, or
// the share of the root's filesystem that stands in for it when it was left out.
func (s *Store) MaxBytes() int64 { return s.maxBytes }

// HoldSpool marks d's spool file as used by a fill until release is called: it is not
// collected meanwhile, and the bytes it still needs count against the free space.
func (s *Store) HoldSpool(d digest.Digest) (release func()) {
	s.space.mu.Lock()
	h := s.space.holds[d]
	if h == nil {
		h = &spoolHold{size: -1}
		s.space.holds[d] = h
	}
	h.n++
	s.space.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.space.mu.Lock()
			if h.n--; h.n <= 0 {
				delete(s.space.holds, d)
			}
			s.space.mu.Unlock()
		})
	}
}

// pendingLocked is the bytes that the fills holding reservations still have to write,
// other than d's; s.space.mu is held.
func (s *Store) pendingLocked(except digest.Digest) int64 {
	var n int64
	for d, h := range s.space.holds {
		if d == except || h.size < 0 {
			continue
		}
		have := int64(0)
		if fi, err := os.Stat(s.SpoolPath(d)); err == nil {
			have = fi.Size()
		}
		n += max(h.size-have, 0)
	}
	return n
}

// shortfall is how many bytes are missing on the filesystems for need more spool
// bytes of a blob of size bytes (the commit copies it to the root's filesystem when
// that is another one), beyond the bytes that other fills still have to write; and
// whether eviction can make up for it. It is 0 when there is room.
func shortfall(us []fsUsage, pending, need, size int64) (short int64, where *fsUsage, evictable bool) {
	for i := range us {
		u := &us[i]
		want := u.floor + pending
		switch {
		case u.spool:
			want += need
		case u.content:
			want += size
		}
		if miss := want - u.Avail; miss > short {
			short, where, evictable = miss, u, u.content
		}
	}
	return short, where, evictable
}

// ReserveSpool makes room for the size-have bytes that d's fill still has to write,
// evicting if that is needed and can be enough. It refuses with an error wrapping
// space.ErrNoSpace when the room cannot be made; the refusal is remembered (CanFill)
// until that room exists.
func (s *Store) ReserveSpool(ctx context.Context, d digest.Digest, size, have int64) error {
	need := max(size-have, 0)
	commitSize := size
	for try := 0; ; try++ {
		s.space.mu.Lock()
		us := s.usages()
		short, where, evictable := shortfall(us, s.pendingLocked(d), need, commitSize)
		if short <= 0 {
			if h := s.space.holds[d]; h != nil {
				h.size = size
			}
			delete(s.space.refused, d)
			s.space.mu.Unlock()
			return nil
		}
		s.space.mu.Unlock()
		if try == 0 && evictable {
			if freed := s.evictForSpace(ctx, short); freed > 0 {
				continue
			}
		}
		err := fmt.Errorf("blob %s needs %s more bytes of %s, but the filesystem of %s has %s free and keeps %s (storage.min_free): %w",
			d, human(need), human(size), where.dir, human(where.Avail), human(where.floor), space.ErrNoSpace)
		s.spaceFailed(d, need, err)
		return err
	}
}

// SpoolFull records that d's fill could not write its spool for lack of space, with
// need bytes still to write, and starts an eviction.
func (s *Store) SpoolFull(d digest.Digest, need int64, err error) {
	s.spaceFailed(d, need, err)
}

// spaceFailed remembers a write that failed for lack of space and wakes eviction.
func (s *Store) spaceFailed(d digest.Digest, need int64, err error) {
	s.space.mu.Lock()
	s.space.failure = &spaceFailure{d: d, need: need, err: err}
	if d != "" {
		if len(s.space.refused) >= maxRefused {
			for k := range s.space.refused {
				delete(s.space.refused, k)
				break
			}
		}
		s.space.refused[d] = need
	}
	s.setWritableLocked(false, err.Error())
	s.space.mu.Unlock()
	s.kickEviction()
}

// noteWrite records the outcome of a write to storage: one that failed for lack of
// space is remembered; a blob commit that succeeded (blob set) clears the memory of
// the last failure.
func (s *Store) noteWrite(d digest.Digest, need int64, blob bool, err error) {
	switch {
	case err == nil && blob:
		s.space.mu.Lock()
		delete(s.space.refused, d)
		s.space.failure = nil
		s.space.stuck = false
		s.space.mu.Unlock()
		_ = s.Writable()
	case space.Is(err):
		if !blob {
			d = ""
		}
		s.spaceFailed(d, need, err)
	}
}

func (s *Store) kickEviction() {
	select {
	case s.space.kick <- struct{}{}:
	default:
	}
}

// Writable is nil while the store can take new content, and otherwise an error
// wrapping space.ErrNoSpace that says why: a filesystem is below storage.min_free, or
// the last write failed for lack of space and the room it needed is still missing.
// Below the floor it wakes eviction. It updates hopless_registryd_storage_writable.
func (s *Store) Writable() error {
	s.space.mu.Lock()
	defer s.space.mu.Unlock()
	us := s.usages()
	reasons := s.belowFloorLocked(us)
	if f := s.space.failure; f != nil {
		if short, _, _ := shortfall(us, s.pendingLocked(f.d), max(f.need, 1), 0); short <= 0 && len(us) > 0 {
			s.space.failure = nil
		} else {
			reasons = append(reasons, "the last write failed for lack of space: "+f.err.Error())
		}
	}
	if len(reasons) == 0 {
		s.setWritableLocked(true, "")
		return nil
	}
	msg := strings.Join(reasons, "; ")
	s.setWritableLocked(false, msg)
	return fmt.Errorf("storage cannot take new content: %s: %w", msg, space.ErrNoSpace)
}

// belowFloorLocked says which filesystems are below their floor, and wakes eviction
// if any is; s.space.mu is held.
func (s *Store) belowFloorLocked(us []fsUsage) []string {
	var reasons []string
	for _, u := range us {
		if u.floor > 0 && u.Avail < u.floor {
			reasons = append(reasons, fmt.Sprintf("free space %s on the filesystem of %s is below storage.min_free %s (%s)",
				human(u.Avail), u.dir, s.cfg.MinFree.String(), human(u.floor)))
		}
	}
	if len(reasons) > 0 && !s.space.stuck {
		s.kickEviction()
	}
	return reasons
}

// CanFill is nil when a fill of d may start: no filesystem is below its floor, and d
// was not refused for lack of space earlier while the room it needs is still
// missing. Otherwise d is served without caching, and without a fill that would be
// refused again. The memory of the last failed write (Writable) does not stop fills:
// one blob too large for the disk must not stop the caching of all others.
func (s *Store) CanFill(d digest.Digest) error {
	s.space.mu.Lock()
	defer s.space.mu.Unlock()
	us := s.usages()
	if reasons := s.belowFloorLocked(us); len(reasons) > 0 {
		msg := strings.Join(reasons, "; ")
		s.setWritableLocked(false, msg)
		return fmt.Errorf("storage cannot take new content: %s: %w", msg, space.ErrNoSpace)
	}
	need, ok := s.space.refused[d]
	if !ok {
		return nil
	}
	if short, where, _ := shortfall(us, s.pendingLocked(d), need, 0); short > 0 {
		return fmt.Errorf("blob %s needs %s, but the filesystem of %s has %s free and keeps %s (storage.min_free): %w",
			d, human(need), where.dir, human(where.Avail), human(where.floor), space.ErrNoSpace)
	}
	delete(s.space.refused, d)
	return nil
}

// setWritableLocked updates the gauge and logs changes; s.space.mu is held.
func (s *Store) setWritableLocked(ok bool, why string) {
	if s.m != nil {
		v := 0.0
		if ok {
			v = 1
		}
		s.m.StorageWritable.Set(v)
	}
	if ok != s.space.writable {
		if ok {
			s.log.Info("storage can take new content again")
		} else {
			s.log.Warn("storage cannot take new content; serving what it has and streaming misses through", "reason", why)
		}
		s.space.writable = ok
	}
}

// evictForSpace evicts least recently used content to free want bytes on the
// content's filesystem, if evicting all that may be evicted would free that much. It
// returns the bytes removed.
func (s *Store) evictForSpace(ctx context.Context, want int64) int64 {
	spool := s.spoolBytes()
	p, err := s.plan(1, 0, spool, reasonSpace)
	if err != nil {
		return 0 // the index is rebuilt: nothing is evicted meanwhile
	}
	var can int64
	for _, v := range p.victims {
		can += v.size
	}
	if can < want {
		return 0
	}
	s.mu.Lock()
	total := s.size + spool
	s.mu.Unlock()
	st, err := s.evict(ctx, max(total-want, 1), 0, reasonSpace)
	if err != nil && ctx.Err() == nil {
		s.log.Warn("eviction for space failed", "error", err)
	}
	if st.Bytes > 0 {
		s.log.Info("evicted for space", "manifests", st.Manifests, "blobs", st.Blobs, "bytes", st.Bytes, "wanted", want)
	}
	return st.Bytes
}

// relieve evicts until every filesystem that holds content is at its floor again, if
// eviction can get it there, and notes when it cannot.
func (s *Store) relieve(ctx context.Context) {
	s.space.mu.Lock()
	short, _, evictable := shortfall(s.usages(), s.pendingLocked(""), 0, 0)
	s.space.mu.Unlock()
	freed := int64(0)
	if short > 0 && evictable {
		freed = s.evictForSpace(ctx, short)
	}
	s.space.mu.Lock()
	s.space.stuck = short > 0 && freed == 0
	s.space.mu.Unlock()
}

// spoolFile is one <spool>/<alg>/<hex>.partial.
type spoolFile struct {
	d    digest.Digest
	path string
	size int64
	mod  time.Time
}

func (s *Store) spoolFiles() []spoolFile {
	var out []spoolFile
	algs, err := os.ReadDir(s.spool)
	if err != nil {
		return nil
	}
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(s.spool, a.Name()))
		if err != nil {
			continue
		}
		for _, e := range ents {
			enc, ok := strings.CutSuffix(e.Name(), ".partial")
			d := digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), enc)
			if !ok || d.Validate() != nil || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil {
				continue
			}
			out = append(out, spoolFile{d: d, path: filepath.Join(s.spool, a.Name(), e.Name()), size: fi.Size(), mod: fi.ModTime()})
		}
	}
	return out
}

// spoolBytes is the size of the spool files, which count in max_bytes.
func (s *Store) spoolBytes() int64 {
	var n int64
	for _, f := range s.spoolFiles() {
		n += f.size
	}
	if s.m != nil {
		s.m.SpoolBytes.Set(float64(n))
	}
	return n
}

// CollectSpool removes the spool files that no fill holds and that have not been
// written for storage.spool_max_age (default 1h), and returns how many it removed.
func (s *Store) CollectSpool() int {
	maxAge := s.cfg.SpoolMaxAge.Duration
	if maxAge <= 0 {
		maxAge = conf.DefaultSpoolMaxAge
	}
	cutoff := s.now().Add(-maxAge)
	n := 0
	for _, f := range s.spoolFiles() {
		if !f.mod.Before(cutoff) {
			continue
		}
		s.space.mu.Lock()
		held := s.space.holds[f.d] != nil
		if !held {
			// Under the lock: a fill that holds it from now on opens a new file.
			err := os.Remove(f.path)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("removing an old spool file failed", "path", f.path, "error", err)
			} else if err == nil {
				n++
				s.log.Info("removed an old spool file", "digest", f.d, "bytes", f.size, "written", f.mod)
			}
		}
		s.space.mu.Unlock()
	}
	if n > 0 {
		s.spoolBytes()
	}
	return n
}

// human writes a byte count with a binary unit.
func human(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%dB", n)
	}
	f := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= unit
		if f < unit && f > -unit {
			return fmt.Sprintf("%.1f%s", f, u)
		}
	}
	return fmt.Sprintf("%.1fPiB", f/unit)
}
