package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/space"
)

const indexVersion = 1

type kind uint8

const (
	kindBlob kind = iota
	kindManifest
)

func (k kind) String() string {
	if k == kindManifest {
		return "manifest"
	}
	return "blob"
}

// entry is what the index knows of one digest.
type entry struct {
	kind      kind
	size      int64
	access    time.Time
	mediaType string          // manifests only
	refs      []digest.Digest // manifests only: config, layers, child manifests
}

// indexFile is index.json.
type indexFile struct {
	Version int `json:"version"`
	// Clean is set only by Close: an index without it may miss recent content.
	Clean   bool         `json:"clean"`
	Saved   time.Time    `json:"saved"`
	Entries []indexEntry `json:"entries"`
	Tags    []tagRecord  `json:"tags"`
	Links   []linkRecord `json:"links,omitempty"`
}

type indexEntry struct {
	Digest    digest.Digest   `json:"digest"`
	Kind      string          `json:"kind"`
	Size      int64           `json:"size"`
	Access    time.Time       `json:"access"`
	MediaType string          `json:"mediaType,omitempty"`
	Refs      []digest.Digest `json:"refs,omitempty"`
}

// manifestMeta is the file beside a manifest's payload.
type manifestMeta struct {
	MediaType string          `json:"mediaType"`
	Refs      []digest.Digest `json:"refs,omitempty"`
}

// putEntryLocked adds or replaces d's entry.
func (s *Store) putEntryLocked(d digest.Digest, e *entry) {
	s.noteChangedLocked(d)
	s.setEntryLocked(d, e)
}

// setEntryLocked is putEntryLocked without telling a running rebuild.
func (s *Store) setEntryLocked(d digest.Digest, e *entry) {
	s.dropEntryLocked(d)
	s.entries[d] = e
	s.size += e.size
	if e.kind == kindManifest {
		for _, r := range e.refs {
			s.refcount[r]++
		}
		s.gen++
	}
	s.contentDirty = true
	s.setStoreBytesLocked()
}

// removeEntryLocked drops d's entry and returns it, or nil.
func (s *Store) removeEntryLocked(d digest.Digest) *entry {
	s.noteChangedLocked(d)
	return s.dropEntryLocked(d)
}

// dropEntryLocked is removeEntryLocked without telling a running rebuild.
func (s *Store) dropEntryLocked(d digest.Digest) *entry {
	e := s.entries[d]
	if e == nil {
		return nil
	}
	delete(s.entries, d)
	s.size -= e.size
	if e.kind == kindManifest {
		for _, r := range e.refs {
			if s.refcount[r]--; s.refcount[r] <= 0 {
				delete(s.refcount, r)
			}
		}
	}
	s.contentDirty = true
	s.setStoreBytesLocked()
	return e
}

// noteChangedLocked tells a running rebuild that d's entry is newer than what its
// walk may have seen.
func (s *Store) noteChangedLocked(d digest.Digest) {
	if s.rb != nil {
		s.rb.changed[d] = struct{}{}
	}
}

// setTagLocked and deleteTagLocked change a tag in the index.
func (s *Store) setTagLocked(k tagKey, t Tag) {
	if s.rb != nil {
		s.rb.tags[k] = struct{}{}
	}
	s.tags[k] = t
	s.contentDirty = true
}

func (s *Store) deleteTagLocked(k tagKey) {
	if s.rb != nil {
		s.rb.tags[k] = struct{}{}
	}
	delete(s.tags, k)
	s.contentDirty = true
}

func (s *Store) setStoreBytesLocked() {
	if s.m != nil {
		s.m.StoreBytes.Set(float64(s.size))
	}
}

// touch records a use of d, adding it as a blob of the given size if the index did not
// know it (content another master committed to shared storage, or lost by a crash).
// Access times are kept to accessGranularity: a blob read again and again changes
// nothing until its access time is that old, so that hot reads leave the index
// alone.
func (s *Store) touch(d digest.Digest, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	e := s.entries[d]
	if e == nil {
		s.putEntryLocked(d, &entry{kind: kindBlob, size: size, access: now})
		return
	}
	if e.size != size {
		s.noteChangedLocked(d)
		s.size += size - e.size
		e.size = size
		s.contentDirty = true
		s.setStoreBytesLocked()
	}
	if now.Sub(e.access) >= accessGranularity {
		e.access = now
		s.accessDirty = true
	}
}

// recordedSize is d's size as the index holds it, if it holds d as a blob.
func (s *Store) recordedSize(d digest.Digest) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[d]
	if e == nil || e.kind != kindBlob {
		return 0, false
	}
	return e.size, true
}

// forget drops d from the index after its content turned out to be gone.
func (s *Store) forget(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removeEntryLocked(d) != nil {
		s.dropLinksLocked(d)
	}
}

// rebuildJob is what a background rebuild starts from: the digests and tags of the
// provisional index, loaded from the index read at start, which the walk confirms or
// drops.
type rebuildJob struct {
	prev     []digest.Digest
	prevTags []tagKey
	hadIndex bool
}

// rebuildState is kept under s.mu while a rebuild runs: what changed since it began,
// whose state now is newer than anything its walk saw.
type rebuildState struct {
	changed map[digest.Digest]struct{}
	tags    map[tagKey]struct{}
}

// load reads the index and pins. A clean index is loaded and written back unclean,
// so that a crash from now on is noticed. An index that cannot be trusted is loaded
// as it is, as a provisional index, and load returns the rebuild to run in the
// background; an empty storage needs none.
func (s *Store) load(ctx context.Context) (*rebuildJob, error) {
	var prev *indexFile
	data, err := s.drv.GetContent(ctx, s.indexPath)
	switch {
	case err == nil:
		prev = &indexFile{}
		if err := json.Unmarshal(data, prev); err != nil || prev.Version != indexVersion {
			s.log.Warn("index is corrupt; rebuilding it from storage", "path", s.indexPath, "error", err)
			prev = nil
		}
	case isNotFound(err):
	default:
		return nil, fmt.Errorf("storage: read index: %w", err)
	}
	var job *rebuildJob
	switch {
	case prev != nil && prev.Clean:
		s.loadIndex(prev)
	case prev == nil:
		empty, err := s.storageEmpty(ctx)
		if err != nil {
			return nil, err
		}
		if !empty {
			job = &rebuildJob{}
		}
	default:
		s.loadIndex(prev)
		job = &rebuildJob{prev: make([]digest.Digest, 0, len(s.entries)), prevTags: make([]tagKey, 0, len(s.tags)), hadIndex: true}
		for d := range s.entries {
			job.prev = append(job.prev, d)
		}
		for k := range s.tags {
			job.prevTags = append(job.prevTags, k)
		}
	}
	s.linkTags()
	if err := s.loadPins(ctx); err != nil {
		return nil, err
	}
	if job != nil {
		s.mu.Lock()
		s.rb = &rebuildState{changed: make(map[digest.Digest]struct{}), tags: make(map[tagKey]struct{})}
		// What is loaded is what index.json holds, unclean: no need to write it again.
		s.contentDirty, s.accessDirty, s.lastSave = false, false, s.now()
		s.mu.Unlock()
		return job, nil
	}
	if err := s.save(ctx, false); err != nil {
		if !space.Is(err) {
			return nil, fmt.Errorf("storage: write index: %w", err)
		}
		// A full disk degrades, it does not stop the start: the content is served.
		s.log.Warn("index write failed for lack of space; serving what is stored", "error", err)
	}
	return nil, nil
}

// storageEmpty reports whether the driver holds no blobs, manifests or tags, as on the
// first start: there is nothing to rebuild an index from.
func (s *Store) storageEmpty(ctx context.Context) (bool, error) {
	for _, dir := range []string{blobsDir, manifestsDir, tagsDir} {
		_, err := s.drv.Stat(ctx, dir)
		if err == nil {
			return false, nil
		}
		if !isNotFound(err) {
			return false, fmt.Errorf("storage: stat %s: %w", dir, err)
		}
	}
	return true, nil
}

func (s *Store) loadIndex(f *indexFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ie := range f.Entries {
		e, ok := ie.entry()
		if !ok {
			s.log.Warn("index: skipping a bad entry", "digest", ie.Digest)
			continue
		}
		s.setEntryLocked(ie.Digest, e)
	}
	for _, tr := range f.Tags {
		if k, t, ok := tr.tag(); ok {
			s.tags[k] = t
		}
	}
	s.loadLinksLocked(f.Links)
}

func (ie indexEntry) entry() (*entry, bool) {
	if checkDigest(ie.Digest) != nil || ie.Size < 0 {
		return nil, false
	}
	e := &entry{size: ie.Size, access: ie.Access}
	switch ie.Kind {
	case "blob":
	case "manifest":
		e.kind, e.mediaType = kindManifest, ie.MediaType
		for _, r := range ie.Refs {
			if checkDigest(r) != nil {
				return nil, false
			}
		}
		e.refs = ie.Refs
	default:
		return nil, false
	}
	return e, true
}

// Rebuilding reports whether the index is being rebuilt from storage in the
// background, after a start without a clean index. Meanwhile content is served and
// stored as usual; eviction waits until the rebuild is done.
func (s *Store) Rebuilding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rb != nil
}

// RebuildDone is closed once no rebuild of the index runs: at once when New found a
// clean index (or an empty storage), else when the rebuild has been merged, or
// stopped by Close.
func (s *Store) RebuildDone() <-chan struct{} { return s.rebuildDone }

// startRebuild runs job in the background until it succeeds or Close stops it.
func (s *Store) startRebuild(job *rebuildJob) {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopRebuild = cancel
	if s.m != nil {
		s.m.IndexRebuilding.Set(1)
	}
	s.log.Info("index rebuild from storage started in the background; serving meanwhile, eviction waits",
		"had_index", job.hadIndex, "provisional_entries", len(job.prev), "provisional_tags", len(job.prevTags))
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.rebuildDone)
		defer cancel()
		s.runRebuild(ctx, job)
		if s.m != nil {
			s.m.IndexRebuilding.Set(0)
		}
	}()
}

func (s *Store) runRebuild(ctx context.Context, job *rebuildJob) {
	start := time.Now()
	retry := s.rebuildRetry
	for {
		found, tags, err := s.walkStorage(ctx, job)
		if err == nil {
			st := s.mergeRebuild(job, found, tags)
			s.kickEviction() // what piled up meanwhile
			s.log.Info("index rebuilt from storage", "entries", st.entries, "tags", st.tags, "bytes", st.bytes,
				"found", len(found), "changed_meanwhile", st.changed, "removed", st.removed,
				"had_index", job.hadIndex, "took", time.Since(start))
			wctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			if err := s.save(wctx, false); err != nil {
				s.log.Warn("index write after the rebuild failed; will retry", "error", err)
			}
			cancel()
			return
		}
		if ctx.Err() != nil {
			s.log.Info("index rebuild stopped", "took", time.Since(start))
			return
		}
		s.log.Warn("index rebuild failed; retrying", "error", err, "in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			s.log.Info("index rebuild stopped", "took", time.Since(start))
			return
		case <-t.C:
		}
		retry = min(2*retry, maxRebuildRetry)
	}
}

// walkStorage lists what the driver holds: blobs (manifests' payloads with their
// records) and tags, keeping the access times and the references of manifests from
// the provisional index where it has them.
func (s *Store) walkStorage(ctx context.Context, job *rebuildJob) (map[digest.Digest]*entry, map[tagKey]Tag, error) {
	// known is the provisional index's entry for d, copied under the lock: its access
	// time moves with reads meanwhile.
	known := func(d digest.Digest) (entry, bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if e := s.entries[d]; e != nil {
			return *e, true
		}
		return entry{}, false
	}
	found := make(map[digest.Digest]*entry, len(job.prev))
	err := s.walk(ctx, blobsDir, func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok := parseContentPath(blobsDir, fi.Path())
		if !ok {
			return nil
		}
		e := &entry{kind: kindBlob, size: fi.Size(), access: fi.ModTime()}
		if o, ok := known(d); ok && !o.access.IsZero() {
			e.access = o.access
		}
		found[d] = e
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("storage: walk %s: %w", blobsDir, err)
	}
	err = s.walk(ctx, manifestsDir, func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		d, ok := parseContentPath(manifestsDir, fi.Path())
		if !ok || found[d] == nil {
			return nil
		}
		e := found[d]
		if o, ok := known(d); ok && o.kind == kindManifest {
			e.kind, e.mediaType, e.refs = kindManifest, o.mediaType, o.refs
			return nil
		}
		meta, err := s.readMeta(ctx, d)
		if err != nil {
			s.log.Warn("rebuild: unreadable manifest record; keeping the payload as a blob", "digest", d, "error", err)
			return nil
		}
		e.kind, e.mediaType, e.refs = kindManifest, meta.MediaType, meta.Refs
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("storage: walk %s: %w", manifestsDir, err)
	}
	tags := make(map[tagKey]Tag)
	err = s.walk(ctx, tagsDir, func(fi storagedriver.FileInfo) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if path.Base(path.Dir(fi.Path())) != tagsSub {
			return nil
		}
		k, t, err := s.readTag(ctx, fi.Path())
		if err != nil {
			s.log.Warn("rebuild: skipping an unreadable tag", "path", fi.Path(), "error", err)
			return nil
		}
		tags[k] = t
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("storage: walk %s: %w", tagsDir, err)
	}
	return found, tags, nil
}

type mergeStats struct {
	entries, tags    int
	bytes            int64
	changed, removed int
}

// mergeRebuild makes the index what the walk found, except for what changed while it
// ran: an entry or tag put or removed meanwhile keeps its state now, and a later
// access time is kept. Provisional entries and tags that the walk did not find are
// dropped. It takes s.mu for mergeBatch digests at a time, so that requests are not
// held up for the whole merge; the rebuild ends with the last batch.
func (s *Store) mergeRebuild(job *rebuildJob, found map[digest.Digest]*entry, tags map[tagKey]Tag) mergeStats {
	var st mergeStats
	ds := make([]digest.Digest, 0, len(found))
	for d := range found {
		ds = append(ds, d)
	}
	var stale []digest.Digest
	for _, d := range job.prev {
		if found[d] == nil {
			stale = append(stale, d)
		}
	}
	for i := 0; i < len(ds); i += mergeBatch {
		s.mu.Lock()
		for _, d := range ds[i:min(i+mergeBatch, len(ds))] {
			if _, ok := s.rb.changed[d]; ok {
				st.changed++
				continue
			}
			f, cur := found[d], s.entries[d]
			if cur != nil && cur.access.After(f.access) {
				f.access = cur.access
			}
			if cur != nil && sameContent(cur, f) {
				cur.access = f.access
				continue
			}
			s.setEntryLocked(d, f)
		}
		s.mu.Unlock()
	}
	for i := 0; i < len(stale); i += mergeBatch {
		s.mu.Lock()
		for _, d := range stale[i:min(i+mergeBatch, len(stale))] {
			if _, ok := s.rb.changed[d]; ok {
				continue
			}
			if s.dropEntryLocked(d) != nil {
				s.dropLinksLocked(d)
				st.removed++
			}
		}
		s.mu.Unlock()
	}

	s.mu.Lock()
	for k, t := range tags {
		if _, ok := s.rb.tags[k]; !ok {
			s.tags[k] = t
		}
	}
	for _, k := range job.prevTags {
		if _, ok := tags[k]; !ok {
			if _, ok := s.rb.tags[k]; !ok {
				delete(s.tags, k)
			}
		}
	}
	s.rb = nil
	s.contentDirty = true
	st.entries, st.tags, st.bytes = len(s.entries), len(s.tags), s.size
	s.mu.Unlock()
	s.linkTags()
	return st
}

// sameContent reports whether two entries of a digest say the same but for access.
func sameContent(a, b *entry) bool {
	return a.kind == b.kind && a.size == b.size && a.mediaType == b.mediaType && slices.Equal(a.refs, b.refs)
}

// walk calls f for every file under dir; a missing dir is empty.
func (s *Store) walk(ctx context.Context, dir string, f func(storagedriver.FileInfo) error) error {
	err := s.drv.Walk(ctx, dir, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() {
			return nil
		}
		return f(fi)
	})
	if isNotFound(err) {
		return nil
	}
	return err
}

func (s *Store) readMeta(ctx context.Context, d digest.Digest) (manifestMeta, error) {
	var m manifestMeta
	data, err := s.drv.GetContent(ctx, metaPath(d))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, err
	}
	if m.MediaType == "" {
		return m, errors.New("no media type")
	}
	for _, r := range m.Refs {
		if err := checkDigest(r); err != nil {
			return m, err
		}
	}
	return m, nil
}

// save writes the index: to a temporary path, then moved over index.json. An index
// is marked clean only when asked to and no rebuild is pending: a provisional index
// must be rebuilt again at the next start.
func (s *Store) save(ctx context.Context, clean bool) error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	start := time.Now()

	s.mu.Lock()
	clean = clean && s.rb == nil
	f := indexFile{Version: indexVersion, Clean: clean, Saved: s.now(),
		Entries: make([]indexEntry, 0, len(s.entries)), Tags: make([]tagRecord, 0, len(s.tags))}
	for d, e := range s.entries {
		f.Entries = append(f.Entries, indexEntry{Digest: d, Kind: e.kind.String(), Size: e.size,
			Access: e.access, MediaType: e.mediaType, Refs: e.refs})
	}
	for k, t := range s.tags {
		f.Tags = append(f.Tags, newTagRecord(k, t))
	}
	f.Links = s.linkRecordsLocked()
	content, access, last, saved := s.contentDirty, s.accessDirty, s.lastSave, f.Saved
	s.contentDirty, s.accessDirty, s.lastSave = false, false, saved
	s.mu.Unlock()

	data, err := json.Marshal(f)
	if err != nil {
		err = fmt.Errorf("encode index: %w", err)
	} else {
		err = s.putBytesAtomic(ctx, s.indexPath, data)
	}
	if s.m != nil {
		result := "ok"
		if err != nil {
			result = "error"
		}
		s.m.IndexWrites.WithLabelValues(result).Inc()
		s.m.IndexWriteDuration.Observe(time.Since(start).Seconds())
		if err == nil {
			s.m.IndexWrittenBytes.Add(float64(len(data)))
		}
	}
	if err != nil {
		s.noteWrite("", 0, false, err)
		s.mu.Lock()
		s.contentDirty = s.contentDirty || content
		s.accessDirty = s.accessDirty || access
		if s.lastSave.Equal(saved) {
			s.lastSave = last
		}
		s.mu.Unlock()
		return err
	}
	return nil
}

// putAtomic writes v as JSON to a temporary path and moves it to p, so that p is
// never seen half written whatever the driver's PutContent does.
func (s *Store) putAtomic(ctx context.Context, p string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.putBytesAtomic(ctx, p, data)
}

func (s *Store) putBytesAtomic(ctx context.Context, p string, data []byte) error {
	tmp := path.Join(tmpDir, path.Base(p)+"-"+randomName())
	if err := s.drv.PutContent(ctx, tmp, data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := s.drv.Move(ctx, tmp, p); err != nil {
		_ = s.drv.Delete(ctx, tmp)
		return fmt.Errorf("move %s to %s: %w", tmp, p, err)
	}
	return nil
}

// FlushIndex writes the index if it is due, as the background writer asks every 5 s:
// when content changed (entries, sizes, tags, links), or when only access times did
// and accessFlushInterval (5 min) has passed since the last write, by the store's
// clock (WithClock). It reports whether it wrote. The writer calls it; it is exported
// for benchmarks and tools that drive the store with a clock of their own.
//
// While the index is rebuilt it is not written: index.json is unclean already, so the
// next start rebuilds it anyway, and the rebuild writes it when it is done.
func (s *Store) FlushIndex(ctx context.Context) (bool, error) {
	s.mu.Lock()
	due := s.rb == nil &&
		(s.contentDirty || (s.accessDirty && s.now().Sub(s.lastSave) >= accessFlushInterval))
	s.mu.Unlock()
	if !due {
		return false, nil
	}
	return true, s.save(ctx, false)
}

func (s *Store) flushLoop() {
	defer s.wg.Done()
	ticks := s.flushTicks
	if ticks == nil {
		t := time.NewTicker(flushInterval)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-ticks:
		}
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		if _, err := s.FlushIndex(ctx); err != nil {
			s.log.Warn("index write failed; will retry", "error", err)
		}
		cancel()
	}
}

// cleanTmp removes temporary files old enough that no writer can still own them
// (on shared storage another master may be writing there now).
func (s *Store) cleanTmp(ctx context.Context) {
	cutoff := s.now().Add(-tmpMaxAge)
	var old []string
	err := s.walk(ctx, tmpDir, func(fi storagedriver.FileInfo) error {
		if fi.ModTime().Before(cutoff) {
			old = append(old, fi.Path())
		}
		return nil
	})
	if err != nil {
		s.log.Warn("listing temporary files failed", "error", err)
	}
	for _, p := range old {
		if err := s.drv.Delete(ctx, p); err != nil && !isNotFound(err) {
			s.log.Warn("removing a temporary file failed", "path", p, "error", err)
		}
	}
}
