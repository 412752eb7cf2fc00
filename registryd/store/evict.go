package store

import (
	"cmp"
	"container/heap"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// EvictStats reports one eviction run.
type EvictStats struct {
	Manifests int   // manifests removed
	Blobs     int   // blobs removed
	Bytes     int64 // bytes removed
	Tags      int   // tags removed because their manifest was
	// Skipped counts planned removals dropped because the content was used or
	// referenced meanwhile.
	Skipped int
	// Pending counts, on shared storage, planned removals waiting out the grace.
	Pending int
}

type victim struct {
	d    digest.Digest
	kind kind
	size int64
	// access is the entry's access time when planned (UnixNano); a victim whose
	// access moved since is kept.
	access int64
	reason string
}

// plan is the removals of one eviction run, made from one snapshot of the index.
type plan struct {
	victims   []victim
	protected map[digest.Digest]bool
	gen       uint64
}

// indexItem is one entry in a snapshot of the index: what planning needs, copied
// under s.mu so that the plan can be made without it. refs is shared with the entry;
// an entry's refs are never changed in place.
type indexItem struct {
	d      digest.Digest
	refs   []digest.Digest // manifests only
	access int64           // UnixNano
	size   int64
	kind   kind
}

// indexView is a snapshot of the index for planning.
type indexView struct {
	items     []indexItem
	protected map[digest.Digest]bool
	gen       uint64
	size      int64
	now       time.Time
}

// Reasons of eviction, the values of the reason label.
const (
	reasonTTL  = "ttl"
	reasonSize = "size"
	// reasonSpace is eviction to keep a filesystem above storage.min_free.
	reasonSpace = "space"
)

// Evict removes content: first manifests and blobs unused for longer than ttl (0
// disables), then, while Size() plus the spool files' bytes exceed maxBytes (0 =
// unbounded), the least recently used. It never removes what is reachable from a
// pinned manifest, nor a blob that a remaining manifest references; an evicted
// manifest releases its blobs and takes its tags along. Readers are blocked only while
// the planning copies what it needs of the index; a reader that has a blob open keeps
// reading it after it is removed. While the index is rebuilt Evict removes nothing and
// returns an error wrapping errdefs.ErrUnavailable.
func (s *Store) Evict(ctx context.Context, maxBytes int64, ttl time.Duration) (EvictStats, error) {
	return s.evict(ctx, maxBytes, ttl, reasonSize)
}

// evict is Evict; reason labels what is removed beyond maxBytes.
func (s *Store) evict(ctx context.Context, maxBytes int64, ttl time.Duration, reason string) (EvictStats, error) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	if s.shared != nil {
		return s.evictShared(ctx, maxBytes, ttl, reason)
	}
	p, err := s.plan(maxBytes, ttl, s.spoolBytes(), reason)
	if err != nil {
		return EvictStats{}, err
	}

	var st EvictStats
	gone := make(map[digest.Digest]bool)
	for _, v := range p.victims {
		if err = ctx.Err(); err != nil {
			break
		}
		removed, rerr := s.evictOne(ctx, v, &p)
		if rerr != nil {
			s.log.Warn("evicting failed", "digest", v.d, "error", rerr)
			err = rerr
			continue
		}
		if !removed {
			st.Skipped++
			continue
		}
		s.countEvicted(&st, v, gone)
	}
	st.Tags = s.dropTags(ctx, gone)
	return st, err
}

// countEvicted adds a removed victim to st, its metrics and the log; a manifest goes
// into gone, for its tags.
func (s *Store) countEvicted(st *EvictStats, v victim, gone map[digest.Digest]bool) {
	if v.kind == kindManifest {
		st.Manifests++
		gone[v.d] = true
	} else {
		st.Blobs++
	}
	st.Bytes += v.size
	if s.m != nil {
		s.m.Evictions.WithLabelValues(v.reason).Inc()
		s.m.EvictedBytes.WithLabelValues(v.reason).Add(float64(v.size))
	}
	s.log.Debug("evicted", "digest", v.d, "kind", v.kind, "size", v.size, "reason", v.reason)
}

// plan plans the removals of evict; spool is the bytes of the spool files, which count
// against maxBytes. It holds s.mu only to take a snapshot of the index, and refuses
// with an error wrapping errdefs.ErrUnavailable while the index is rebuilt: the
// provisional index may lack references that keep content.
func (s *Store) plan(maxBytes int64, ttl time.Duration, spool int64, reason string) (plan, error) {
	start := time.Now()
	s.mu.Lock()
	n, rebuilding := len(s.entries), s.rb != nil
	s.mu.Unlock()
	// A rebuild runs only from New on: once done, it does not start again.
	if rebuilding {
		return plan{}, fmt.Errorf("eviction waits for the index rebuild: %w", errdefs.ErrUnavailable)
	}
	// Allocated before the snapshot, so that the lock is not held while memory is
	// found and cleared.
	items := make([]indexItem, 0, n+n/16+16)

	locked := time.Now()
	s.mu.Lock()
	v := s.viewLocked(items)
	s.mu.Unlock()
	held := time.Since(locked)
	p := makePlan(v, maxBytes, ttl, spool, reason)
	if s.m != nil {
		s.m.EvictLockDuration.Observe(held.Seconds())
		s.m.EvictPlanDuration.Observe(time.Since(start).Seconds())
	}
	return p, nil
}

// viewLocked takes the snapshot that planning needs, appending the items to items.
func (s *Store) viewLocked(items []indexItem) indexView {
	v := indexView{items: items, protected: s.protectedLocked(), gen: s.gen, size: s.size, now: s.now()}
	for d, e := range s.entries {
		it := indexItem{d: d, access: e.access.UnixNano(), size: e.size, kind: e.kind}
		if e.kind == kindManifest {
			it.refs = e.refs
		}
		v.items = append(v.items, it)
	}
	return v
}

// makePlan plans from a snapshot: first what is unused for longer than ttl (0
// disables), manifests first, then the least recently used while the index plus spool
// bytes exceed maxBytes (0 = unbounded), taking the blobs a taken manifest releases
// into account. Nothing protected (reachable from a pin) is taken, nor a blob that a
// manifest left in place references.
func makePlan(v indexView, maxBytes int64, ttl time.Duration, spool int64, reason string) plan {
	p := plan{protected: v.protected, gen: v.gen}
	items := v.items
	refc := make(map[digest.Digest]int)
	for i := range items {
		for _, r := range items[i].refs {
			refc[r]++
		}
	}
	gone := make([]bool, len(items))
	size := v.size + spool
	take := func(i int, reason string) {
		it := &items[i]
		p.victims = append(p.victims, victim{d: it.d, kind: it.kind, size: it.size, access: it.access, reason: reason})
		gone[i] = true
		size -= it.size
		for _, r := range it.refs {
			refc[r]--
		}
	}
	evictable := func(i int) bool {
		it := &items[i]
		return !gone[i] && !p.protected[it.d] && (it.kind == kindManifest || refc[it.d] <= 0)
	}
	older := func(a, b int) int {
		if c := cmp.Compare(items[a].access, items[b].access); c != 0 {
			return c
		}
		return cmp.Compare(items[a].d, items[b].d)
	}

	if ttl > 0 {
		cutoff := v.now.Add(-ttl).UnixNano()
		var expired []int
		for i := range items {
			if items[i].access < cutoff && !p.protected[items[i].d] {
				expired = append(expired, i)
			}
		}
		slices.SortFunc(expired, older)
		// Manifests first: their blobs become free only once they are gone.
		for _, k := range []kind{kindManifest, kindBlob} {
			for _, i := range expired {
				if items[i].kind == k && evictable(i) {
					take(i, reasonTTL)
				}
			}
		}
	}

	if maxBytes > 0 && size > maxBytes {
		h := lruHeap{less: older}
		for i := range items {
			if evictable(i) {
				h.items = append(h.items, i)
			}
		}
		heap.Init(&h)
		var byDigest map[digest.Digest]int
		for size > maxBytes && h.Len() > 0 {
			i := heap.Pop(&h).(int)
			if !evictable(i) {
				continue
			}
			take(i, reason)
			if items[i].kind != kindManifest {
				continue
			}
			if byDigest == nil {
				byDigest = make(map[digest.Digest]int, len(items))
				for j := range items {
					byDigest[items[j].d] = j
				}
			}
			for _, r := range items[i].refs {
				if j, ok := byDigest[r]; ok && items[j].kind == kindBlob && refc[r] == 0 && evictable(j) {
					heap.Push(&h, j)
				}
			}
		}
	}
	return p
}

// evictOne removes one planned victim unless it was used, re-referenced or pinned
// since the plan was made.
func (s *Store) evictOne(ctx context.Context, v victim, p *plan) (bool, error) {
	mu := s.stripe(string(v.d))
	mu.Lock()
	defer mu.Unlock()

	s.mu.Lock()
	e := s.entries[v.d]
	// Access times move in steps of accessGranularity: content read within that step
	// of its planned access time may still go, as the least recently used does.
	if e == nil || e.kind != v.kind || e.access.UnixNano() != v.access {
		s.mu.Unlock()
		return false, nil
	}
	if s.gen != p.gen {
		p.protected, p.gen = s.protectedLocked(), s.gen
	}
	if p.protected[v.d] || (e.kind == kindBlob && s.refcount[v.d] > 0) {
		s.mu.Unlock()
		return false, nil
	}
	s.removeEntryLocked(v.d)
	s.dropLinksLocked(v.d)
	s.mu.Unlock()
	if err := s.deleteOrRestore(ctx, v.d, e); err != nil {
		return false, err
	}
	return true, nil
}

// deleteOrRestore removes d's content, whose entry e (nil if there was none) was
// just dropped from the index; if the removal fails, e is put back unless d was
// stored again meanwhile.
func (s *Store) deleteOrRestore(ctx context.Context, d digest.Digest, e *entry) error {
	err := s.deleteContent(ctx, d)
	if err != nil && e != nil {
		s.mu.Lock()
		if s.entries[d] == nil {
			s.putEntryLocked(d, e)
		}
		s.mu.Unlock()
	}
	return err
}

// dropTags removes the tags that point to evicted manifests.
func (s *Store) dropTags(ctx context.Context, gone map[digest.Digest]bool) int {
	if len(gone) == 0 {
		return 0
	}
	s.mu.Lock()
	var keys []tagKey
	for k, t := range s.tags {
		if gone[t.Digest] {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, k := range keys {
		p, err := tagPath(k)
		if err != nil {
			continue
		}
		mu := s.stripe(p)
		mu.Lock()
		s.mu.Lock()
		t, ok := s.tags[k]
		// Re-pointed, or its manifest stored again, while we were evicting.
		if !ok || !gone[t.Digest] || s.entries[t.Digest] != nil {
			s.mu.Unlock()
			mu.Unlock()
			continue
		}
		s.deleteTagLocked(k)
		s.mu.Unlock()
		if err := s.drv.Delete(ctx, p); err != nil && !isNotFound(err) {
			s.log.Warn("removing a tag failed", "path", p, "error", err)
		}
		mu.Unlock()
		n++
	}
	return n
}

// lruHeap orders indexes of a snapshot's items, least recently used first.
type lruHeap struct {
	items []int
	less  func(a, b int) int
}

func (h lruHeap) Len() int           { return len(h.items) }
func (h lruHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) < 0 }
func (h lruHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *lruHeap) Push(x any)        { h.items = append(h.items, x.(int)) }
func (h *lruHeap) Pop() any {
	old := h.items
	it := old[len(old)-1]
	h.items = old[:len(old)-1]
	return it
}
