package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Shared storage (storage.shared): several masters on one bucket. Content paths are
// common; each master's bookkeeping is its own, under /hopless/masters/<id>/:
//
//	index.json   its index (entries it stored or served, their access times)
//	pins.json    the leases it holds
//	state.json   its accesses of the last recentWindow and its recent removals,
//	             written every publishInterval: also its heartbeat
//
// and /hopless/verified/<alg>/<hex[:2]>/<hex> records that some master hashed a blob
// (its size and mtime), so that a blob is hashed once for the cluster.
//
// Eviction: the evictor is the live master (state written within liveWindow) with
// the smallest id. It plans over the merged view, every master's entries, access
// times (the latest of all) and leases, and removes a victim only when two of its
// runs at least storage.evict_grace apart planned it with the same access time: a
// use by any master in between is published within publishInterval and moves the
// access time, which cancels the removal. Another master that evicts at the same
// time (during a change of evictor) removes only what passes the same test, so two
// evictors waste work but lose nothing. Masters forget the removals they read in
// the others' states.
const (
	mastersDir  = rootDir + "/masters"
	verifiedDir = rootDir + "/verified"
	// publishInterval is how often a master writes its state.json.
	publishInterval = 10 * time.Second
	// recentWindow is how far back state.json lists accesses; older ones are in the
	// master's index, written at least every accessFlushInterval.
	recentWindow = 3 * accessFlushInterval
	// liveWindow is how recent a master's state must be for it to count as live.
	liveWindow = 3 * publishInterval
	// evictedKeep is how long a removal stays in the remover's state.
	evictedKeep = time.Hour
	// adoptWait bounds how long a fill from the owner peer waits for the owner's copy
	// to appear before it uploads its own.
	adoptWait = 30 * time.Second
	// sharedStateVersion is the version of state.json.
	sharedStateVersion = 1
)

// sharedState is the bookkeeping of a store on shared storage.
type sharedState struct {
	id    string
	grace time.Duration
	// adoptPoll is the first wait between two looks for the owner's copy, and
	// adoptWait the longest wait for it.
	adoptPoll, adoptWait time.Duration
	// ticks drives the state writer; nil is a ticker of publishInterval that also
	// writes at start (tests set their own).
	ticks <-chan time.Time

	mu sync.Mutex
	// marks are the planned removals waiting out the grace, by digest.
	marks map[digest.Digest]mark
	// evicted are this master's removals of the last evictedKeep.
	evicted map[digest.Digest]time.Time
	// published is when state.json was last written, by the store's clock.
	published time.Time
	// indexes caches the other masters' index files by path, with the mtime read.
	indexes map[string]cachedIndex
}

type mark struct {
	access int64 // the victim's merged access time when planned (UnixNano)
	at     time.Time
}

type cachedIndex struct {
	mtime time.Time
	f     *indexFile
}

// sharedStateFile is state.json.
type sharedStateFile struct {
	Version int            `json:"version"`
	Master  string         `json:"master"`
	Written time.Time      `json:"written"`
	Recent  []accessRecord `json:"recent"`
	Evicted []accessRecord `json:"evicted,omitempty"`
}

// accessRecord is a digest and a time: its last access, or its removal.
type accessRecord struct {
	Digest digest.Digest `json:"digest"`
	At     time.Time     `json:"at"`
}

// otherMaster is what a master on shared storage read of another one.
type otherMaster struct {
	id     string
	state  *sharedStateFile
	index  *indexFile
	leases []Lease
}

func newSharedState(id string, grace time.Duration) *sharedState {
	return &sharedState{id: id, grace: grace, adoptPoll: 100 * time.Millisecond, adoptWait: adoptWait,
		marks: make(map[digest.Digest]mark), evicted: make(map[digest.Digest]time.Time),
		indexes: make(map[string]cachedIndex)}
}

func masterPath(id, name string) string { return path.Join(mastersDir, id, name) }

func verifiedPath(d digest.Digest) string { return contentPath(verifiedDir, d) }

// publishLoop writes this master's state every publishInterval until the store stops.
func (s *Store) publishLoop() {
	defer s.wg.Done()
	ticks := s.shared.ticks
	if ticks == nil {
		t := time.NewTicker(publishInterval)
		defer t.Stop()
		ticks = t.C
		s.publishNow()
	}
	for {
		select {
		case <-s.stop:
			return
		case <-ticks:
		}
		s.publishNow()
	}
}

func (s *Store) publishNow() {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := s.PublishState(ctx); err != nil {
		s.log.Warn("writing this master's state on shared storage failed; will retry", "error", err)
	}
}

// PublishState writes this master's state.json on shared storage now: the accesses
// of the last recentWindow and the removals of the last evictedKeep. The store does
// it every publishInterval; it is exported for tests that drive the store's clock.
func (s *Store) PublishState(ctx context.Context) error {
	sh := s.shared
	if sh == nil {
		return nil
	}
	now := s.now()
	f := sharedStateFile{Version: sharedStateVersion, Master: sh.id, Written: now}
	cutoff := now.Add(-recentWindow)
	s.mu.Lock()
	for d, e := range s.entries {
		if e.access.After(cutoff) {
			f.Recent = append(f.Recent, accessRecord{Digest: d, At: e.access})
		}
	}
	s.mu.Unlock()
	sh.mu.Lock()
	for d, at := range sh.evicted {
		if now.Sub(at) > evictedKeep {
			delete(sh.evicted, d)
			continue
		}
		f.Evicted = append(f.Evicted, accessRecord{Digest: d, At: at})
	}
	sh.mu.Unlock()
	err := s.putAtomic(ctx, masterPath(sh.id, "state.json"), f)
	result := "ok"
	if err != nil {
		result = "error"
		err = fmt.Errorf("write %s: %w", masterPath(sh.id, "state.json"), err)
	} else {
		sh.mu.Lock()
		sh.published = now
		sh.mu.Unlock()
	}
	if s.m != nil {
		s.m.SharedPublishes.WithLabelValues(result).Inc()
	}
	return err
}

// readOthers reads the other masters' state, index and leases. A master whose files
// cannot be read is left out with a warning: its accesses are then unknown, so
// reading fails the eviction run instead when the listing itself fails.
func (s *Store) readOthers(ctx context.Context) ([]otherMaster, error) {
	sh := s.shared
	dirs, err := s.drv.List(ctx, mastersDir)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("list %s: %w", mastersDir, err)
	}
	var out []otherMaster
	for _, dir := range dirs {
		id := path.Base(dir)
		if id == sh.id {
			continue
		}
		o := otherMaster{id: id}
		if data, err := s.drv.GetContent(ctx, masterPath(id, "state.json")); err == nil {
			var f sharedStateFile
			if json.Unmarshal(data, &f) == nil && f.Version == sharedStateVersion {
				o.state = &f
			} else {
				s.log.Warn("another master's state is corrupt; ignoring it", "master", id)
			}
		} else if !isNotFound(err) {
			return nil, fmt.Errorf("read the state of master %s: %w", id, err)
		}
		idx, err := s.readOtherIndex(ctx, masterPath(id, "index.json"))
		if err != nil {
			return nil, fmt.Errorf("read the index of master %s: %w", id, err)
		}
		o.index = idx
		if data, err := s.drv.GetContent(ctx, masterPath(id, "pins.json")); err == nil {
			var f pinsFile
			if json.Unmarshal(data, &f) == nil && f.Version == pinsVersion {
				o.leases = f.Leases
			} else {
				// Its pins are unknown: nothing may be removed until it is readable.
				return nil, fmt.Errorf("the pins of master %s are corrupt or of another version: %w", id, errdefs.ErrDataLoss)
			}
		} else if !isNotFound(err) {
			return nil, fmt.Errorf("read the pins of master %s: %w", id, err)
		}
		out = append(out, o)
	}
	return out, nil
}

// readOtherIndex reads another master's index, again only when its mtime moved. A
// missing or corrupt one is nil: that master's entries are then known from its
// state's recent accesses alone, and content it lists nowhere is what a rebuild
// there will find.
func (s *Store) readOtherIndex(ctx context.Context, p string) (*indexFile, error) {
	sh := s.shared
	fi, err := s.drv.Stat(ctx, p)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sh.mu.Lock()
	c, ok := sh.indexes[p]
	sh.mu.Unlock()
	if ok && c.mtime.Equal(fi.ModTime()) {
		return c.f, nil
	}
	data, err := s.drv.GetContent(ctx, p)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	f := &indexFile{}
	if err := json.Unmarshal(data, f); err != nil || f.Version != indexVersion {
		s.log.Warn("another master's index is corrupt; using its recent accesses alone", "path", p)
		f = nil
	}
	sh.mu.Lock()
	sh.indexes[p] = cachedIndex{mtime: fi.ModTime(), f: f}
	sh.mu.Unlock()
	return f, nil
}

// evictorAmong reports whether this master evicts: it wrote its own state within
// liveWindow, and no live master has a smaller id.
func (s *Store) evictorAmong(others []otherMaster, now time.Time) bool {
	sh := s.shared
	sh.mu.Lock()
	published := sh.published
	sh.mu.Unlock()
	if now.Sub(published) > liveWindow {
		return false
	}
	for _, o := range others {
		if o.state != nil && now.Sub(o.state.Written) <= liveWindow && o.id < sh.id {
			return false
		}
	}
	return true
}

// forgetRemoved drops from this master's index what other masters removed after
// this master's last use, once the driver confirms it is gone.
func (s *Store) forgetRemoved(ctx context.Context, others []otherMaster) {
	for _, o := range others {
		if o.state == nil {
			continue
		}
		for _, r := range o.state.Evicted {
			s.mu.Lock()
			e := s.entries[r.Digest]
			stale := e != nil && e.access.Before(r.At)
			s.mu.Unlock()
			if !stale {
				continue
			}
			if _, err := s.drv.Stat(ctx, blobPath(r.Digest)); isNotFound(err) {
				s.forget(r.Digest)
			}
		}
	}
}

// mergedView is the snapshot eviction plans from on shared storage: this master's
// entries merged with every other master's, each with the latest access any of them
// recorded, without what some master removed after its last recorded use, and the
// set of digests reachable from any master's leases.
func (s *Store) mergedView(others []otherMaster) indexView {
	s.mu.Lock()
	v := s.viewLocked(make([]indexItem, 0, len(s.entries)))
	leases := make(map[string]Lease, len(s.pins))
	for src, l := range s.pins {
		leases[src] = l
	}
	s.mu.Unlock()
	s.shared.mu.Lock()
	removed := make(map[digest.Digest]time.Time, len(s.shared.evicted))
	for d, at := range s.shared.evicted {
		removed[d] = at
	}
	s.shared.mu.Unlock()

	byDigest := make(map[digest.Digest]int, len(v.items))
	for i := range v.items {
		byDigest[v.items[i].d] = i
	}
	merge := func(it indexItem) {
		i, ok := byDigest[it.d]
		if !ok {
			byDigest[it.d] = len(v.items)
			v.items = append(v.items, it)
			return
		}
		have := &v.items[i]
		have.access = max(have.access, it.access)
		if have.kind != kindManifest && it.kind == kindManifest {
			have.kind, have.refs = kindManifest, it.refs
		}
	}
	recent := make(map[digest.Digest]int64)
	for _, o := range others {
		if o.state != nil {
			for _, r := range o.state.Evicted {
				if r.At.After(removed[r.Digest]) {
					removed[r.Digest] = r.At
				}
			}
			for _, r := range o.state.Recent {
				recent[r.Digest] = max(recent[r.Digest], r.At.UnixNano())
			}
		}
		if o.index != nil {
			for _, ie := range o.index.Entries {
				e, ok := ie.entry()
				if !ok {
					continue
				}
				it := indexItem{d: ie.Digest, access: e.access.UnixNano(), size: e.size, kind: e.kind, refs: e.refs}
				merge(it)
			}
		}
		now := v.now
		for _, l := range o.leases {
			if !now.Before(l.Expires) || len(l.Manifests) == 0 {
				continue
			}
			if old, ok := leases[l.Source]; !ok || l.Reported.After(old.Reported) {
				leases[l.Source] = l
			}
		}
	}
	for d, at := range recent {
		if i, ok := byDigest[d]; ok {
			v.items[i].access = max(v.items[i].access, at)
		}
	}
	// Drop what was removed after its last known use; recompute the size.
	v.size = 0
	v.items = slices.DeleteFunc(v.items, func(it indexItem) bool {
		at, ok := removed[it.d]
		return ok && it.access < at.UnixNano()
	})
	for _, it := range v.items {
		v.size += it.size
	}
	v.protected = reachable(v.items, leases, v.now)
	return v
}

// reachable is the set of digests reachable from the manifests of the leases that
// hold at now, through the manifests' references among items.
func reachable(items []indexItem, leases map[string]Lease, now time.Time) map[digest.Digest]bool {
	refs := make(map[digest.Digest][]digest.Digest)
	for _, it := range items {
		if it.kind == kindManifest {
			refs[it.d] = it.refs
		}
	}
	var roots []digest.Digest
	for _, l := range leases {
		if now.Before(l.Expires) {
			roots = append(roots, l.Manifests...)
		}
	}
	return reachableFrom(roots, func(d digest.Digest) []digest.Digest { return refs[d] })
}

// evictShared is evict on shared storage.
func (s *Store) evictShared(ctx context.Context, maxBytes int64, ttl time.Duration, reason string) (EvictStats, error) {
	sh := s.shared
	s.mu.Lock()
	rebuilding := s.rb != nil
	s.mu.Unlock()
	if rebuilding {
		return EvictStats{}, fmt.Errorf("eviction waits for the index rebuild: %w", errdefs.ErrUnavailable)
	}
	others, err := s.readOthers(ctx)
	if err != nil {
		return EvictStats{}, fmt.Errorf("eviction on shared storage: %w", err)
	}
	s.forgetRemoved(ctx, others)
	now := s.now()
	if !s.evictorAmong(others, now) {
		sh.mu.Lock()
		clear(sh.marks)
		sh.mu.Unlock()
		s.setEvictorMetrics(false, 0)
		return EvictStats{}, nil
	}
	start := time.Now()
	v := s.mergedView(others)
	p := makePlan(v, maxBytes, ttl, s.spoolBytes(), reason)
	if s.m != nil {
		s.m.EvictPlanDuration.Observe(time.Since(start).Seconds())
	}

	var (
		st   EvictStats
		due  []victim
		errs []error
	)
	sh.mu.Lock()
	planned := make(map[digest.Digest]bool, len(p.victims))
	for _, vi := range p.victims {
		planned[vi.d] = true
		m, ok := sh.marks[vi.d]
		switch {
		case !ok:
			sh.marks[vi.d] = mark{access: vi.access, at: now}
		case m.access != vi.access:
			sh.marks[vi.d] = mark{access: vi.access, at: now}
			st.Skipped++
		case now.Sub(m.at) >= sh.grace:
			due = append(due, vi)
		}
	}
	for d := range sh.marks {
		if !planned[d] {
			delete(sh.marks, d)
			st.Skipped++
		}
	}
	sh.mu.Unlock()
	if s.m != nil {
		s.m.EvictCancelled.Add(float64(st.Skipped))
	}

	gone := make(map[digest.Digest]bool)
	own := ownProtection{}
	for _, vi := range due {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		outcome, err := s.evictSharedOne(ctx, vi, p.protected, &own)
		sh.mu.Lock()
		delete(sh.marks, vi.d)
		sh.mu.Unlock()
		switch {
		case err != nil:
			s.log.Warn("evicting failed", "digest", vi.d, "error", err)
			errs = append(errs, err)
		case outcome == evictKept:
			st.Skipped++
			if s.m != nil {
				s.m.EvictCancelled.Inc()
			}
		case outcome == evictRemoved:
			s.countEvicted(&st, vi, gone)
		}
	}
	st.Tags = s.dropTags(ctx, gone)
	sh.mu.Lock()
	st.Pending = len(sh.marks)
	sh.mu.Unlock()
	s.setEvictorMetrics(true, st.Pending)
	return st, errors.Join(errs...)
}

func (s *Store) setEvictorMetrics(evictor bool, pending int) {
	if s.m == nil {
		return
	}
	if evictor {
		s.m.Evictor.Set(1)
	} else {
		s.m.Evictor.Set(0)
	}
	s.m.EvictPending.Set(float64(pending))
}

// The outcomes of evictSharedOne.
type evictOutcome int

const (
	evictKept    evictOutcome = iota // used, referenced or pinned since: kept
	evictRemoved                     // removed from the storage
	evictAbsent                      // already gone from the storage
)

// ownProtection caches this master's own protected set within one eviction run,
// computed again only when its pins or manifests change (s.gen).
type ownProtection struct {
	set map[digest.Digest]bool
	gen uint64
}

func (s *Store) ownProtectedLocked(o *ownProtection) map[digest.Digest]bool {
	if o.set == nil || o.gen != s.gen {
		o.set, o.gen = s.protectedLocked(), s.gen
	}
	return o.set
}

// evictSharedOne removes a victim whose grace is over, unless this master used it,
// references it or pins it since the run's merged view was read. A victim that is
// no longer stored (listed only by a stale index of another master) is recorded as
// removed, so that the others forget it, and is not counted.
func (s *Store) evictSharedOne(ctx context.Context, v victim, protected map[digest.Digest]bool, own *ownProtection) (evictOutcome, error) {
	mu := s.stripe(string(v.d))
	mu.Lock()
	defer mu.Unlock()
	s.mu.Lock()
	e := s.entries[v.d]
	if e != nil && (e.access.UnixNano() > v.access || e.kind != v.kind) {
		s.mu.Unlock()
		return evictKept, nil
	}
	if protected[v.d] || s.ownProtectedLocked(own)[v.d] || (v.kind == kindBlob && s.refcount[v.d] > 0) {
		s.mu.Unlock()
		return evictKept, nil
	}
	s.mu.Unlock()
	_, err := s.drv.Stat(ctx, blobPath(v.d))
	if err != nil && !isNotFound(err) {
		return evictKept, fmt.Errorf("stat %s: %w", v.d, err)
	}
	stored := err == nil
	s.mu.Lock()
	if e != nil && s.entries[v.d] == e {
		s.removeEntryLocked(v.d)
		s.dropLinksLocked(v.d)
	}
	s.mu.Unlock()
	if stored {
		if err := s.deleteOrRestore(ctx, v.d, e); err != nil {
			return evictKept, err
		}
	}
	s.shared.mu.Lock()
	s.shared.evicted[v.d] = s.now()
	s.shared.mu.Unlock()
	if !stored {
		return evictAbsent, nil
	}
	return evictRemoved, nil
}

// verifiedRecord is a /hopless/verified file: the blob version whose bytes some
// master hashed and found to match.
type verifiedRecord struct {
	Size  int64 `json:"size"`
	MTime int64 `json:"mtime"` // UnixNano, the driver's modification time
}

// recordVerified writes that key's blob version was hashed, for the other masters.
func (s *Store) recordVerified(ctx context.Context, key verifyKey) {
	if s.shared == nil || key.id.inode != 0 {
		return
	}
	if err := s.putAtomic(ctx, verifiedPath(key.d), verifiedRecord{Size: key.id.size, MTime: key.id.mtime}); err != nil {
		s.log.Warn("recording a verified blob on shared storage failed", "digest", key.d, "error", err)
	}
}

// sharedVerified reports whether some master recorded key's blob version as hashed.
func (s *Store) sharedVerified(ctx context.Context, key verifyKey) bool {
	if s.shared == nil {
		return false
	}
	data, err := s.drv.GetContent(ctx, verifiedPath(key.d))
	if err != nil {
		return false
	}
	var r verifiedRecord
	if json.Unmarshal(data, &r) != nil || r.Size != key.id.size || r.MTime != key.id.mtime {
		return false
	}
	s.verified.add(key)
	if s.m != nil {
		s.m.SharedVerified.Inc()
	}
	return true
}

// AdoptBlob is for a fill of d from its owner peer, whose spool file is complete and
// verified: on shared storage the owner commits the same bytes, so AdoptBlob waits
// up to adoptWait for the owner's copy and, once it is there with the same size,
// records it and removes the spool file instead of uploading a second copy. It
// reports whether it did; when it did not, the caller commits as usual.
//
// The owner records its hash of the copy just after the copy appears; AdoptBlob
// waits for that record too (within adoptWait), so that this master's first read
// of the copy trusts it instead of hashing it again. A copy without a record (its
// owner died in between) is adopted all the same and hashed on its first read.
func (s *Store) AdoptBlob(ctx context.Context, d digest.Digest, spoolPath string, size int64) (bool, error) {
	if s.shared == nil {
		return false, nil
	}
	if err := checkDigest(d); err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.shared.adoptWait)
	defer cancel()
	wait := s.shared.adoptPoll
	stored := false
	for {
		fi, err := s.drv.Stat(ctx, blobPath(d))
		if err != nil && !isNotFound(err) && ctx.Err() == nil {
			return false, fmt.Errorf("adopt blob %s: stat the owner's copy: %w", d, err)
		}
		if err == nil && !fi.IsDir() && fi.Size() == size {
			stored = true
			if s.sharedVerified(ctx, verifyKey{d: d, id: driverFileID(fi)}) {
				break
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
		wait = min(2*wait, 2*time.Second)
	}
	if !stored {
		return false, nil
	}
	mu := s.stripe(string(d))
	mu.Lock()
	defer mu.Unlock()
	if err := os.Remove(spoolPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("adopt blob %s: remove spool file: %w", d, err)
	}
	s.touch(d, size)
	if s.m != nil {
		s.m.FillsAdopted.Inc()
	}
	return true, nil
}
