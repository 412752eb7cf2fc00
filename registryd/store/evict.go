package store

import (
	"cmp"
	"container/heap"
	"context"
	"slices"
	"time"

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
}

type victim struct {
	d      digest.Digest
	kind   kind
	size   int64
	access time.Time
	reason string
}

// plan is computed under s.mu from one view of the index.
type plan struct {
	victims   []victim
	protected map[digest.Digest]bool
	gen       uint64
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
// manifest releases its blobs and takes its tags along. Readers are blocked only for
// the planning, which touches no storage; a reader that has a blob open keeps reading
// it after it is removed.
func (s *Store) Evict(ctx context.Context, maxBytes int64, ttl time.Duration) (EvictStats, error) {
	return s.evict(ctx, maxBytes, ttl, reasonSize)
}

// evict is Evict; reason labels what is removed beyond maxBytes.
func (s *Store) evict(ctx context.Context, maxBytes int64, ttl time.Duration, reason string) (EvictStats, error) {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	spool := s.spoolBytes()
	s.mu.Lock()
	p := s.planLocked(maxBytes, ttl, spool, reason)
	s.mu.Unlock()

	var st EvictStats
	gone := make(map[digest.Digest]bool)
	var err error
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
	st.Tags = s.dropTags(ctx, gone)
	return st, err
}

// planLocked plans the removals of evict; spool is the bytes of the spool files,
// which count against maxBytes.
func (s *Store) planLocked(maxBytes int64, ttl time.Duration, spool int64, reason string) plan {
	p := plan{protected: s.protectedLocked(), gen: s.gen}
	refc := make(map[digest.Digest]int, len(s.refcount))
	for d, n := range s.refcount {
		refc[d] = n
	}
	gone := make(map[digest.Digest]bool)
	size := s.size + spool
	take := func(d digest.Digest, e *entry, reason string) {
		p.victims = append(p.victims, victim{d: d, kind: e.kind, size: e.size, access: e.access, reason: reason})
		gone[d] = true
		size -= e.size
		if e.kind == kindManifest {
			for _, r := range e.refs {
				refc[r]--
			}
		}
	}
	evictable := func(d digest.Digest, e *entry) bool {
		return !gone[d] && !p.protected[d] && (e.kind == kindManifest || refc[d] <= 0)
	}

	if ttl > 0 {
		cutoff := s.now().Add(-ttl)
		var expired []lruItem
		for d, e := range s.entries {
			if e.access.Before(cutoff) && !p.protected[d] {
				expired = append(expired, lruItem{d: d, e: e})
			}
		}
		slices.SortFunc(expired, compareLRU)
		// Manifests first: their blobs become free only once they are gone.
		for _, k := range []kind{kindManifest, kindBlob} {
			for _, it := range expired {
				if it.e.kind == k && evictable(it.d, it.e) {
					take(it.d, it.e, reasonTTL)
				}
			}
		}
	}

	if maxBytes > 0 && size > maxBytes {
		var h lruHeap
		for d, e := range s.entries {
			if evictable(d, e) {
				h = append(h, lruItem{d: d, e: e})
			}
		}
		heap.Init(&h)
		for size > maxBytes && h.Len() > 0 {
			it := heap.Pop(&h).(lruItem)
			if !evictable(it.d, it.e) {
				continue
			}
			take(it.d, it.e, reason)
			if it.e.kind != kindManifest {
				continue
			}
			for _, r := range it.e.refs {
				if re := s.entries[r]; re != nil && re.kind == kindBlob && refc[r] == 0 && evictable(r, re) {
					heap.Push(&h, lruItem{d: r, e: re})
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
	if e == nil || e.kind != v.kind || !e.access.Equal(v.access) {
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

	if err := s.deleteContent(ctx, v.d); err != nil {
		s.mu.Lock()
		if s.entries[v.d] == nil {
			s.putEntryLocked(v.d, e)
		}
		s.mu.Unlock()
		return false, err
	}
	return true, nil
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
		delete(s.tags, k)
		s.dirty = true
		s.mu.Unlock()
		if err := s.drv.Delete(ctx, p); err != nil && !isNotFound(err) {
			s.log.Warn("removing a tag failed", "path", p, "error", err)
		}
		mu.Unlock()
		n++
	}
	return n
}

type lruItem struct {
	d digest.Digest
	e *entry
}

func compareLRU(a, b lruItem) int {
	if c := a.e.access.Compare(b.e.access); c != 0 {
		return c
	}
	return cmp.Compare(a.d, b.d)
}

type lruHeap []lruItem

func (h lruHeap) Len() int           { return len(h) }
func (h lruHeap) Less(i, j int) bool { return compareLRU(h[i], h[j]) < 0 }
func (h lruHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *lruHeap) Push(x any)        { *h = append(*h, x.(lruItem)) }
func (h *lruHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}
