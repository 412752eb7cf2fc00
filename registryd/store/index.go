package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
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
	s.removeEntryLocked(d)
	s.entries[d] = e
	s.size += e.size
	if e.kind == kindManifest {
		for _, r := range e.refs {
			s.refcount[r]++
		}
		s.gen++
	}
	s.dirty = true
	s.setStoreBytesLocked()
}

// removeEntryLocked drops d's entry and returns it, or nil.
func (s *Store) removeEntryLocked(d digest.Digest) *entry {
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
	s.dirty = true
	s.setStoreBytesLocked()
	return e
}

func (s *Store) setStoreBytesLocked() {
	if s.m != nil {
		s.m.StoreBytes.Set(float64(s.size))
	}
}

// touch records a use of d, adding it as a blob of the given size if the index did not
// know it (content another master committed to shared storage, or lost by a crash).
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
		s.size += size - e.size
		e.size = size
		s.setStoreBytesLocked()
	}
	if now.After(e.access) {
		e.access = now
	}
	s.dirty = true
}

// forget drops d from the index after its content turned out to be gone.
func (s *Store) forget(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removeEntryLocked(d) != nil {
		s.dropLinksLocked(d)
	}
}

// load reads the index and pins, walking the driver when the index cannot be trusted,
// and writes the index back unclean so that a crash from now on is noticed.
func (s *Store) load(ctx context.Context) error {
	var prev *indexFile
	data, err := s.drv.GetContent(ctx, indexPath)
	switch {
	case err == nil:
		prev = &indexFile{}
		if err := json.Unmarshal(data, prev); err != nil || prev.Version != indexVersion {
			s.log.Warn("index is corrupt; rebuilding it from storage", "path", indexPath, "error", err)
			prev = nil
		}
	case isNotFound(err):
	default:
		return fmt.Errorf("storage: read index: %w", err)
	}

	start := time.Now()
	if prev != nil && prev.Clean {
		s.loadIndex(prev)
	} else {
		if err := s.rebuild(ctx, prev); err != nil {
			return err
		}
		s.log.Info("index rebuilt from storage", "entries", len(s.entries), "tags", len(s.tags),
			"bytes", s.size, "had_index", prev != nil, "took", time.Since(start))
	}
	s.linkTags()
	if err := s.loadPins(ctx); err != nil {
		return err
	}
	if err := s.save(ctx, false); err != nil {
		if !space.Is(err) {
			return fmt.Errorf("storage: write index: %w", err)
		}
		// A full disk degrades, it does not stop the start: the content is served.
		s.log.Warn("index write failed for lack of space; serving what is stored", "error", err)
	}
	return nil
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
		s.putEntryLocked(ie.Digest, e)
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

// rebuild fills the index from what the driver holds, keeping access times (and the
// references of manifests) from prev where it has them.
func (s *Store) rebuild(ctx context.Context, prev *indexFile) error {
	old := make(map[digest.Digest]*entry)
	if prev != nil {
		for _, ie := range prev.Entries {
			if e, ok := ie.entry(); ok {
				old[ie.Digest] = e
			}
		}
	}
	found := make(map[digest.Digest]*entry)
	err := s.walk(ctx, blobsDir, func(fi storagedriver.FileInfo) error {
		d, ok := parseContentPath(blobsDir, fi.Path())
		if !ok {
			return nil
		}
		e := &entry{kind: kindBlob, size: fi.Size(), access: fi.ModTime()}
		if o := old[d]; o != nil && !o.access.IsZero() {
			e.access = o.access
		}
		found[d] = e
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: walk %s: %w", blobsDir, err)
	}
	err = s.walk(ctx, manifestsDir, func(fi storagedriver.FileInfo) error {
		d, ok := parseContentPath(manifestsDir, fi.Path())
		if !ok || found[d] == nil {
			return nil
		}
		e := found[d]
		if o := old[d]; o != nil && o.kind == kindManifest {
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
		return fmt.Errorf("storage: walk %s: %w", manifestsDir, err)
	}
	tags := make(map[tagKey]Tag)
	err = s.walk(ctx, tagsDir, func(fi storagedriver.FileInfo) error {
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
		return fmt.Errorf("storage: walk %s: %w", tagsDir, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for d, e := range found {
		s.putEntryLocked(d, e)
	}
	s.tags = tags
	if prev != nil {
		s.loadLinksLocked(prev.Links)
	}
	return nil
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

// save writes the index: to a temporary path, then moved over index.json.
func (s *Store) save(ctx context.Context, clean bool) error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()

	s.mu.Lock()
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
	s.dirty = false
	s.mu.Unlock()

	err := s.putAtomic(ctx, indexPath, f)
	if err != nil {
		s.noteWrite("", 0, false, err)
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
	}
	return err
}

// putAtomic writes v as JSON to a temporary path and moves it to p, so that p is
// never seen half written whatever the driver's PutContent does.
func (s *Store) putAtomic(ctx context.Context, p string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
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

func (s *Store) flushLoop() {
	defer s.wg.Done()
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		dirty := s.dirty
		s.mu.Unlock()
		if !dirty {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		if err := s.save(ctx, false); err != nil {
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
