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
			if err := s.drv.Delete(t.Context(), indexPath); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"index corrupt", func(t *testing.T, b *backend, s *Store) {
			s.kill()
			if err := s.drv.PutContent(t.Context(), indexPath, []byte(`{"version":1,"entr`)); err != nil {
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
	data, err := s2.drv.GetContent(t.Context(), indexPath)
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
