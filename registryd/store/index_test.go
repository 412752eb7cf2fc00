package store

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/conf"
)

// snapshot is what must survive a restart.
type snapshot struct {
	size    int64
	entries map[digest.Digest]entrySnap
	tags    map[tagKey]Tag
}

type entrySnap struct {
	kind      kind
	size      int64
	access    time.Time
	mediaType string
	refs      int
}

func snap(s *Store) snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn := snapshot{size: s.size, entries: map[digest.Digest]entrySnap{}, tags: maps.Clone(s.tags)}
	for d, e := range s.entries {
		sn.entries[d] = entrySnap{kind: e.kind, size: e.size, access: e.access, mediaType: e.mediaType, refs: len(e.refs)}
	}
	return sn
}

func (a snapshot) check(t *testing.T, b snapshot, accessTimes bool) {
	t.Helper()
	if a.size != b.size || len(a.entries) != len(b.entries) || len(a.tags) != len(b.tags) {
		t.Fatalf("index differs: size %d/%d, entries %d/%d, tags %d/%d",
			a.size, b.size, len(a.entries), len(b.entries), len(a.tags), len(b.tags))
	}
	for d, e := range a.entries {
		f, ok := b.entries[d]
		if !accessTimes {
			e.access, f.access = time.Time{}, time.Time{}
		}
		if !ok || !e.access.Equal(f.access) {
			t.Errorf("entry %s: %+v, then %+v", d, e, f)
		}
		e.access, f.access = time.Time{}, time.Time{}
		if e != f {
			t.Errorf("entry %s: %+v, then %+v", d, e, f)
		}
	}
	for k, v := range a.tags {
		if w := b.tags[k]; !v.Validated.Equal(w.Validated) || v.Digest != w.Digest {
			t.Errorf("tag %v: %+v, then %+v", k, v, w)
		}
	}
}

// fill stores an image, an index over it, a loose blob, a tag and pins.
func fill(t *testing.T, s *Store, clk *clock, seed uint64) {
	t.Helper()
	img, _ := putImage(t, s, seed, randomBytes(seed, 3000), randomBytes(seed+1, 100<<10))
	clk.Advance(time.Minute)
	idx := putIndex(t, s, img)
	clk.Advance(time.Minute)
	commit(t, s, randomBytes(seed+2, 10))
	if err := s.PutTag(t.Context(), "registry.example", "deckhouse/ce", "v"+jsonNum(seed),
		Tag{Digest: idx, MediaType: ocispec.MediaTypeImageIndex, Size: 1, Validated: clk.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestIndexPersistence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// stop ends the first store's life and may damage what it left.
		stop func(t *testing.T, b *backend, s *Store)
		// accessTimes: whether recent access times must survive.
		accessTimes bool
	}{
		{"clean close", func(t *testing.T, b *backend, s *Store) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"kill -9", func(t *testing.T, b *backend, s *Store) { s.kill() }, false},
		{"index deleted", func(t *testing.T, b *backend, s *Store) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.drv.Delete(t.Context(), s.indexPath); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"index corrupt", func(t *testing.T, b *backend, s *Store) {
			s.kill()
			if err := s.drv.PutContent(t.Context(), s.indexPath, []byte(`{"version":1,"entr`)); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, name := range backendNames {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				clk := newClock()
				b := newBackend(t, name)
				s := b.open(t, WithClock(clk.Now))
				fill(t, s, clk, 1)
				if err := s.save(t.Context(), false); err != nil { // an earlier periodic write
					t.Fatal(err)
				}
				fill(t, s, clk, 10) // not in any index write before the "crash"
				pin(t, s, "node-a", digest.FromString("p"))
				before := snap(s)
				tt.stop(t, b, s)

				s2 := b.open(t, WithClock(clk.Now))
				before.check(t, snap(s2), tt.accessTimes)
				if got := s2.pins["node-a"].Manifests; len(got) != 1 {
					t.Errorf("pins after restart: %v", got)
				}
				// Everything reads back.
				for d, e := range before.entries {
					if e.kind == kindManifest {
						if _, _, err := s2.GetManifest(t.Context(), d); err != nil {
							t.Errorf("GetManifest(%s): %v", d, err)
						}
						continue
					}
					r, _, err := s2.OpenBlob(t.Context(), d)
					if err != nil {
						t.Errorf("OpenBlob(%s): %v", d, err)
						continue
					}
					_ = r.Close()
				}
			})
		}
	}
}

// An index that was not closed cleanly is checked against storage: content the index
// does not know is found, and content that is gone is dropped.
func TestIndexReconcile(t *testing.T) {
	t.Parallel()
	clk := newClock()
	b := newBackend(t, "filesystem")
	s := b.open(t, WithClock(clk.Now))
	gone := commit(t, s, []byte("gone"))
	kept := commit(t, s, []byte("kept"))
	clk.Advance(time.Hour)
	r, _, err := s.OpenBlob(t.Context(), kept)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	if err := s.save(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	late := commit(t, s, []byte("late"))
	s.kill()
	if err := os.Remove(s.fsPath(blobPath(gone))); err != nil {
		t.Fatal(err)
	}

	s2 := b.open(t, WithClock(clk.Now))
	if _, err := s2.StatBlob(t.Context(), late); err != nil {
		t.Errorf("blob committed after the last index write: %v", err)
	}
	s2.mu.Lock()
	_, hasGone := s2.entries[gone]
	access := s2.entries[kept].access
	s2.mu.Unlock()
	if hasGone {
		t.Error("index kept a blob that is gone")
	}
	if !access.Equal(clk.Now()) {
		t.Errorf("access time of kept = %v, want %v from the index", access, clk.Now())
	}
	if s2.Size() != int64(len("kept")+len("late")) {
		t.Errorf("Size = %d", s2.Size())
	}
	var f indexFile
	data, err := s2.drv.GetContent(t.Context(), s.indexPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &f); err != nil || f.Clean {
		t.Errorf("index written at start: clean=%v, %v; want an unclean index", f.Clean, err)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name  string
		cfg   conf.Storage
		check func(error) bool
	}{
		{"filesystem", conf.Storage{Root: filepath.Join(dir, "a")}, nil},
		{"filesystem with spool", conf.Storage{Driver: "filesystem", Root: filepath.Join(dir, "b"), Spool: filepath.Join(dir, "spool-b")}, nil},
		{"inmemory", conf.Storage{Driver: "inmemory", Spool: filepath.Join(dir, "spool-c")}, nil},
		{"filesystem without root", conf.Storage{Driver: "filesystem"}, errdefs.IsInvalidArgument},
		{"inmemory without spool", conf.Storage{Driver: "inmemory"}, errdefs.IsInvalidArgument},
		{"unknown driver", conf.Storage{Driver: "nosuch", Spool: dir}, errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := New(t.Context(), tt.cfg)
			if tt.check != nil {
				if !tt.check(err) {
					t.Fatalf("New = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			d := commit(t, s, []byte("x"))
			if _, err := s.StatBlob(t.Context(), d); err != nil {
				t.Fatal(err)
			}
			if tt.cfg.Spool != "" && filepath.Dir(filepath.Dir(s.SpoolPath(d))) != tt.cfg.Spool {
				t.Errorf("spool path %s not under %s", s.SpoolPath(d), tt.cfg.Spool)
			}
		})
	}
}

func TestRunEviction(t *testing.T) {
	t.Parallel()
	s, err := New(t.Context(), conf.Storage{Root: t.TempDir(), MaxBytes: 1,
		EvictInterval: conf.Duration{Duration: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	commit(t, s, []byte("over one byte"))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { s.RunEviction(ctx); close(done) }()
	for s.Size() != 0 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if s.Size() != 0 {
		t.Fatalf("Size = %d; RunEviction did not evict", s.Size())
	}
}

// The index is written within flushInterval when its content changes, and only after
// accessFlushInterval when access times alone did; reads within accessGranularity of
// the last recorded access change nothing.
func TestIndexWrites(t *testing.T) {
	t.Parallel()
	type env struct {
		s    *Store
		blob digest.Digest
	}
	read := func(t *testing.T, e env) {
		r, _, err := e.s.OpenBlob(t.Context(), e.blob)
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Close()
	}
	link := func(t *testing.T, e env) {
		if err := e.s.Link("registry.example", "repo", e.blob); err != nil {
			t.Fatal(err)
		}
	}
	type step struct {
		advance time.Duration
		do      func(t *testing.T, e env) // nil: nothing
		written bool                      // FlushIndex then writes
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a read is written after the access interval, not before", []step{
			{2 * time.Minute, read, false},
			{2 * time.Minute, nil, false},
			{time.Minute, nil, true},
			{time.Hour, nil, false},
		}},
		{"reads within the granularity change nothing", []step{
			{30 * time.Second, read, false},
			{20 * time.Second, read, false},
			{time.Hour, nil, false},
		}},
		{"a read an access step later is recorded", []step{
			{30 * time.Second, read, false},
			{30 * time.Second, read, false},
			{5 * time.Minute, nil, true},
		}},
		{"a new blob is written at once", []step{
			{time.Second, func(t *testing.T, e env) { commit(t, e.s, []byte("new")) }, true},
			{time.Second, nil, false},
		}},
		{"a tag is written at once", []step{
			{time.Second, func(t *testing.T, e env) {
				if err := e.s.PutTag(t.Context(), "registry.example", "repo", "v1", Tag{Digest: e.blob}); err != nil {
					t.Fatal(err)
				}
			}, true},
		}},
		{"a new link is written at once, a known one is not", []step{
			{time.Second, link, true},
			{time.Second, link, false},
		}},
		{"a content write takes the access times along", []step{
			{2 * time.Minute, read, false},
			{time.Second, func(t *testing.T, e env) { commit(t, e.s, []byte("new")) }, true},
			{4 * time.Minute, nil, false},
			{2 * time.Minute, nil, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			m := newMetrics()
			s := newBackend(t, "filesystem").open(t, WithClock(clk.Now), WithMetrics(m), withFlushTicks(make(chan time.Time)))
			e := env{s: s, blob: commit(t, s, []byte("blob"))}
			if wrote, err := s.FlushIndex(t.Context()); err != nil || !wrote {
				t.Fatalf("FlushIndex after a commit = %v, %v; want a write", wrote, err)
			}
			for i, st := range tt.steps {
				clk.Advance(st.advance)
				if st.do != nil {
					st.do(t, e)
				}
				before := counter(t, m.IndexWrites.WithLabelValues("ok"))
				wrote, err := s.FlushIndex(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				after := counter(t, m.IndexWrites.WithLabelValues("ok"))
				if wrote != st.written || after-before != map[bool]float64{false: 0, true: 1}[st.written] {
					t.Fatalf("step %d: FlushIndex wrote %v (%v index writes), want %v", i, wrote, after-before, st.written)
				}
			}
		})
	}
}

// Access times not yet written are in memory for eviction, and Close writes them.
func TestIndexAccessInMemoryAndOnClose(t *testing.T) {
	t.Parallel()
	clk := newClock()
	m := newMetrics()
	b := newBackend(t, "filesystem")
	s := b.open(t, WithClock(clk.Now), WithMetrics(m), withFlushTicks(make(chan time.Time)))
	used, unused := commit(t, s, []byte("used")), commit(t, s, []byte("unused"))
	if _, err := s.FlushIndex(t.Context()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	r, _, err := s.OpenBlob(t.Context(), used)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	writes := counter(t, m.IndexWrites.WithLabelValues("ok"))
	if st, err := s.Evict(t.Context(), 0, time.Hour); err != nil || st.Blobs != 1 || has(t, s, unused) || !has(t, s, used) {
		t.Fatalf("Evict = %+v, %v; want only the unused blob gone", st, err)
	}
	if got := counter(t, m.IndexWrites.WithLabelValues("ok")); got != writes {
		t.Fatalf("eviction wrote the index (%v writes)", got-writes)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var f indexFile
	data, err := s.drv.GetContent(t.Context(), s.indexPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &f); err != nil || !f.Clean || len(f.Entries) != 1 {
		t.Fatalf("index after Close: clean=%v, %d entries, %v", f.Clean, len(f.Entries), err)
	}
	if e := f.Entries[0]; e.Digest != used || !e.Access.Equal(clk.Now()) {
		t.Errorf("index entry %s accessed %v, want %s at %v", e.Digest, e.Access, used, clk.Now())
	}
}

// storedView is what the driver holds, walked without the index: blobs with their
// sizes and whether a manifest record is beside them, and tags.
func storedView(t *testing.T, s *Store) (map[digest.Digest]entrySnap, map[tagKey]Tag) {
	t.Helper()
	ctx := t.Context()
	entries := make(map[digest.Digest]entrySnap)
	if err := s.walk(ctx, blobsDir, func(fi storagedriver.FileInfo) error {
		if d, ok := parseContentPath(blobsDir, fi.Path()); ok {
			entries[d] = entrySnap{kind: kindBlob, size: fi.Size()}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for d, e := range entries {
		if meta, err := s.readMeta(ctx, d); err == nil {
			e.kind, e.mediaType, e.refs = kindManifest, meta.MediaType, len(meta.Refs)
			entries[d] = e
		}
	}
	tags := make(map[tagKey]Tag)
	if err := s.walk(ctx, tagsDir, func(fi storagedriver.FileInfo) error {
		k, tg, err := s.readTag(ctx, fi.Path())
		if err != nil {
			return err
		}
		tags[k] = tg
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return entries, tags
}

// checkMatchesStorage fails unless the index holds exactly what the driver does.
func checkMatchesStorage(t *testing.T, s *Store) {
	t.Helper()
	want, wantTags := storedView(t, s)
	got := snap(s)
	var size int64
	for d, w := range want {
		g, ok := got.entries[d]
		g.access = time.Time{}
		if !ok || g != w {
			t.Errorf("entry %s: index has %+v (%v), storage %+v", d, g, ok, w)
		}
		size += w.size
	}
	for d := range got.entries {
		if _, ok := want[d]; !ok {
			t.Errorf("index has %s, storage does not", d)
		}
	}
	if got.size != size {
		t.Errorf("index size %d, storage holds %d", got.size, size)
	}
	if len(got.tags) != len(wantTags) {
		t.Errorf("index has %d tags, storage %d", len(got.tags), len(wantTags))
	}
	for k, w := range wantTags {
		if g, ok := got.tags[k]; !ok || g.Digest != w.Digest {
			t.Errorf("tag %v: index has %+v, storage %+v", k, g, w)
		}
	}
}

// After an unclean stop New returns at once and the index is rebuilt in the
// background: meanwhile content is read and stored, eviction waits, and what changed
// meanwhile survives the merge, which leaves the index as storage holds it.
func TestRebuildInBackground(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			clk := newClock()
			b := newBackend(t, name)
			s1 := b.open(t, WithClock(clk.Now))
			fill(t, s1, clk, 1)
			img, _ := putImage(t, s1, 5, randomBytes(5, 100))
			kept := commit(t, s1, []byte("kept"))
			hot := commit(t, s1, []byte("hot"))
			stale := commit(t, s1, []byte("stale"))
			doomed := commit(t, s1, []byte("doomed"))
			if err := s1.PutTag(ctx, "registry.example", "repo", "gone", Tag{Digest: img}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Hour)
			r, _, err := s1.OpenBlob(ctx, kept)
			if err != nil {
				t.Fatal(err)
			}
			_ = r.Close()
			keptAccess := clk.Now()
			if err := s1.save(ctx, false); err != nil {
				t.Fatal(err)
			}
			late := commit(t, s1, []byte("late")) // in no index write
			s1.kill()
			// Behind the index's back: a blob and a tag go.
			goneTag, err := tagPath(tagKey{"registry.example", "repo", "gone"})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{blobPath(stale), goneTag} {
				if err := s1.drv.Delete(ctx, p); err != nil {
					t.Fatal(err)
				}
			}

			clk.Advance(time.Hour)
			m := newMetrics()
			h := holdWalk(tagsDir)
			s := b.openRebuilding(t, h.wrap, WithClock(clk.Now), WithMetrics(m), withFlushTicks(make(chan time.Time)))
			if !s.Rebuilding() || gauge(t, m.IndexRebuilding) != 1 {
				t.Fatalf("Rebuilding = %v, gauge %v after an unclean stop", s.Rebuilding(), gauge(t, m.IndexRebuilding))
			}
			<-h.entered // every directory walked; the merge waits

			// Reads work, from the provisional index or the driver.
			for _, d := range []digest.Digest{kept, late} {
				if _, err := s.StatBlob(ctx, d); err != nil {
					t.Errorf("StatBlob(%s) during the rebuild: %v", d, err)
				}
			}
			for _, d := range []digest.Digest{hot, late} {
				r, _, err := s.OpenBlob(ctx, d)
				if err != nil {
					t.Fatalf("OpenBlob(%s) during the rebuild: %v", d, err)
				}
				_ = r.Close()
			}
			if _, _, err := s.GetManifest(ctx, img); err != nil {
				t.Errorf("GetManifest during the rebuild: %v", err)
			}
			if _, err := s.GetTag(ctx, "registry.example", "deckhouse/ce", "v1"); err != nil {
				t.Errorf("GetTag during the rebuild: %v", err)
			}
			// Changes the walk has not seen: new content and tags, content stored
			// again, a tag pointed elsewhere, content gone.
			during := commit(t, s, []byte("during"))
			if err := s.PutTag(ctx, "registry.example", "repo", "during", Tag{Digest: img}); err != nil {
				t.Fatal(err)
			}
			if got := commit(t, s, []byte("stale")); got != stale {
				t.Fatal(got)
			}
			repointed := Tag{Digest: img, MediaType: ocispec.MediaTypeImageManifest, Size: 1, Validated: clk.Now()}
			if err := s.PutTag(ctx, "registry.example", "deckhouse/ce", "v1", repointed); err != nil {
				t.Fatal(err)
			}
			if err := s.drv.Delete(ctx, blobPath(doomed)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.OpenBlob(ctx, doomed); !errdefs.IsNotFound(err) {
				t.Fatalf("OpenBlob of a removed blob: %v", err)
			}
			// Eviction waits, and the index is not written.
			size := s.Size()
			if st, err := s.Evict(ctx, 1, time.Minute); !errdefs.IsUnavailable(err) || st != (EvictStats{}) || s.Size() != size {
				t.Fatalf("Evict during the rebuild = %+v, %v", st, err)
			}
			if wrote, err := s.FlushIndex(ctx); wrote || err != nil {
				t.Fatalf("FlushIndex during the rebuild = %v, %v", wrote, err)
			}
			if s.Rebuilding() != true {
				t.Fatal("rebuild done before it was released")
			}

			close(h.release)
			<-s.RebuildDone()
			if s.Rebuilding() || gauge(t, m.IndexRebuilding) != 0 {
				t.Fatalf("Rebuilding = %v, gauge %v after the rebuild", s.Rebuilding(), gauge(t, m.IndexRebuilding))
			}
			checkMatchesStorage(t, s)
			sn := snap(s)
			for _, d := range []digest.Digest{during, late, img, stale} {
				if _, ok := sn.entries[d]; !ok {
					t.Errorf("%s lost by the merge", d)
				}
			}
			if got := sn.tags[tagKey{"registry.example", "deckhouse/ce", "v1"}]; got.Digest != img {
				t.Errorf("tag pointed elsewhere during the rebuild: %s after the merge, want %s", got.Digest, img)
			}
			for _, d := range []digest.Digest{doomed} {
				if _, ok := sn.entries[d]; ok {
					t.Errorf("%s, gone from storage, kept by the merge", d)
				}
			}
			if got := sn.entries[kept].access; !got.Equal(keptAccess) {
				t.Errorf("access time of kept = %v, want %v from the old index", got, keptAccess)
			}
			if got := sn.entries[hot].access; !got.Equal(clk.Now()) {
				t.Errorf("access time of a blob read during the rebuild = %v, want %v", got, clk.Now())
			}
			if _, ok := sn.tags[tagKey{"registry.example", "repo", "during"}]; !ok {
				t.Error("tag written during the rebuild lost by the merge")
			}
			if _, ok := sn.tags[tagKey{"registry.example", "repo", "gone"}]; ok {
				t.Error("tag gone from storage kept by the merge")
			}
			if got := counter(t, m.IndexWrites.WithLabelValues("ok")); got != 1 {
				t.Errorf("%v index writes by the rebuild, want 1", got)
			}
			if _, err := s.Evict(ctx, 0, 0); err != nil {
				t.Errorf("Evict after the rebuild: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s2 := b.open(t, WithClock(clk.Now))
			if s2.Rebuilding() {
				t.Error("a rebuilt, then closed index is rebuilt again")
			}
			checkMatchesStorage(t, s2)
		})
	}
}

// Close stops a rebuild, and the index it writes is not clean: the next start
// rebuilds again. A failed walk is retried.
func TestRebuildStopsAndRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// run drives the held rebuild of s and returns whether it must be done.
		run func(t *testing.T, s *Store, h *heldWalk) (done bool)
	}{
		{"stopped by Close", func(t *testing.T, s *Store, h *heldWalk) bool {
			<-h.entered
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return false
		}},
		{"retried after a failed walk", func(t *testing.T, s *Store, h *heldWalk) bool {
			<-h.entered
			close(h.release)
			<-s.RebuildDone()
			return true
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			b := newBackend(t, "filesystem")
			s1 := b.open(t, WithClock(clk.Now))
			fill(t, s1, clk, 1)
			s1.kill()

			h := holdWalk(blobsDir)
			h.fail = 1
			s := b.openRebuilding(t, h.wrap, WithClock(clk.Now), withRebuildRetry(0))
			done := tt.run(t, s, h)
			if s.Rebuilding() == done {
				t.Fatalf("Rebuilding = %v", s.Rebuilding())
			}
			if done {
				checkMatchesStorage(t, s)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			var f indexFile
			data, err := s.drv.GetContent(t.Context(), s.indexPath)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &f); err != nil || f.Clean != done {
				t.Fatalf("index after Close: clean=%v, %v; want clean=%v", f.Clean, err, done)
			}
			s2 := b.open(t, WithClock(clk.Now))
			checkMatchesStorage(t, s2)
		})
	}
}
