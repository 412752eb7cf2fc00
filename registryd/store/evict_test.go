package store

import (
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

func TestEvictTTL(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			m := newMetrics()
			s := newBackend(t, name).open(t, WithClock(clk.Now), WithMetrics(m))
			shared := randomBytes(100, 700)

			oldBlob := commit(t, s, randomBytes(1, 100))
			oldImage, oldBlobs := putImage(t, s, 1, randomBytes(2, 200), shared)
			keptLayer := commit(t, s, randomBytes(3, 300)) // old, but a kept manifest uses it
			clk.Advance(2 * time.Hour)
			newBlob := commit(t, s, randomBytes(4, 400))
			newImage := putJSON(t, s, "application/vnd.oci.image.manifest.v1+json", map[string]any{
				"schemaVersion": 2,
				"config":        map[string]any{"digest": newBlob, "size": 400},
				"layers":        []map[string]any{{"digest": keptLayer, "size": 300}, {"digest": digest.FromBytes(shared), "size": 700}},
			})
			for _, tg := range []struct {
				tag string
				d   digest.Digest
			}{{"old", oldImage}, {"new", newImage}} {
				if err := s.PutTag(t.Context(), "registry.example", "repo", tg.tag, Tag{Digest: tg.d}); err != nil {
					t.Fatal(err)
				}
			}

			st, err := s.Evict(t.Context(), 0, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			// oldImage and its config and first layer go; shared stays (newImage uses it).
			gone := []digest.Digest{oldBlob, oldImage, oldBlobs[0], oldBlobs[1]}
			kept := []digest.Digest{keptLayer, newBlob, newImage, digest.FromBytes(shared)}
			for _, d := range gone {
				if has(t, s, d) {
					t.Errorf("%s not evicted", d)
				}
			}
			for _, d := range kept {
				if !has(t, s, d) {
					t.Errorf("%s evicted", d)
				}
			}
			if st.Manifests != 1 || st.Blobs != 3 || st.Tags != 1 {
				t.Errorf("stats %+v, want 1 manifest, 3 blobs, 1 tag", st)
			}
			if _, err := s.GetTag(t.Context(), "registry.example", "repo", "old"); !errdefs.IsNotFound(err) {
				t.Errorf("tag of an evicted manifest: %v", err)
			}
			if _, err := s.GetTag(t.Context(), "registry.example", "repo", "new"); err != nil {
				t.Errorf("tag of a kept manifest: %v", err)
			}
			if got := counter(t, m.Evictions.WithLabelValues("ttl")); got != 4 {
				t.Errorf("Evictions{ttl} = %v, want 4", got)
			}
			if got := counter(t, m.EvictedBytes.WithLabelValues("ttl")); got != float64(st.Bytes) {
				t.Errorf("EvictedBytes{ttl} = %v, want %d", got, st.Bytes)
			}
			if gauge(t, m.StoreBytes) != float64(s.Size()) {
				t.Errorf("StoreBytes = %v, want %d", gauge(t, m.StoreBytes), s.Size())
			}
		})
	}
}

func TestEvictSizeLRU(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			m := newMetrics()
			s := newBackend(t, name).open(t, WithClock(clk.Now), WithMetrics(m))
			var ds []digest.Digest
			for i := range 4 {
				ds = append(ds, commit(t, s, randomBytes(uint64(i+1), 100)))
				clk.Advance(time.Minute)
			}
			// Using ds[0] makes it the most recent.
			r, _, err := s.OpenBlob(t.Context(), ds[0])
			if err != nil {
				t.Fatal(err)
			}
			_ = r.Close()

			st, err := s.Evict(t.Context(), 250, 0)
			if err != nil {
				t.Fatal(err)
			}
			if st.Blobs != 2 || st.Bytes != 200 || s.Size() != 200 {
				t.Fatalf("stats %+v, size %d; want 2 blobs, 200 bytes", st, s.Size())
			}
			for i, want := range []bool{true, false, false, true} {
				if has(t, s, ds[i]) != want {
					t.Errorf("blob %d kept = %v, want %v", i, !want, want)
				}
			}
			if got := counter(t, m.Evictions.WithLabelValues("size")); got != 2 {
				t.Errorf("Evictions{size} = %v", got)
			}
			if got := counter(t, m.EvictedBytes.WithLabelValues("size")); got != 200 {
				t.Errorf("EvictedBytes{size} = %v", got)
			}
			// Under the bound: nothing more goes.
			if st, err := s.Evict(t.Context(), 250, 0); err != nil || st.Blobs+st.Manifests != 0 {
				t.Fatalf("second Evict = %+v, %v", st, err)
			}
		})
	}
}

// A blob that a kept manifest references stays even when it is the oldest; evicting
// the manifest first releases its blobs.
func TestEvictManifestFirst(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			s := newBackend(t, name).open(t, WithClock(clk.Now))
			ld := commit(t, s, randomBytes(1, 1000)) // oldest
			clk.Advance(time.Minute)
			loose := commit(t, s, randomBytes(2, 100))
			clk.Advance(time.Minute)
			cd := commit(t, s, []byte("{}"))
			img := putJSON(t, s, "application/vnd.oci.image.manifest.v1+json", map[string]any{
				"schemaVersion": 2,
				"config":        map[string]any{"digest": cd, "size": 2},
				"layers":        []map[string]any{{"digest": ld, "size": 1000}},
			})

			st, err := s.Evict(t.Context(), s.Size()-50, 0)
			if err != nil {
				t.Fatal(err)
			}
			if st.Blobs != 1 || has(t, s, loose) || !has(t, s, ld) || !has(t, s, img) {
				t.Fatalf("stats %+v: want only the unreferenced blob evicted", st)
			}
			// Down to nothing: the manifest goes, then its blobs.
			st, err = s.Evict(t.Context(), 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if st.Manifests != 1 || st.Blobs != 2 || s.Size() != 0 {
				t.Fatalf("stats %+v, size %d", st, s.Size())
			}
		})
	}
}

func TestEvictKeepsPinned(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			b := newBackend(t, name)
			s := b.open(t, WithClock(clk.Now))
			shared := randomBytes(50, 500)
			amd, amdBlobs := putImage(t, s, 1, randomBytes(1, 100), shared)
			arm, armBlobs := putImage(t, s, 2, randomBytes(2, 100))
			idx := putIndex(t, s, amd, arm)
			other, otherBlobs := putImage(t, s, 3, randomBytes(3, 100), shared)
			pinned := append(append([]digest.Digest{idx, amd, arm}, amdBlobs...), armBlobs...)

			pin(t, s, "node-a", idx)
			if _, err := s.SetLease(t.Context(), Lease{Source: "node-b", Manifests: []digest.Digest{"sha256:bad"}, Expires: clk.Now().Add(time.Hour)}); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("SetLease(bad digest) = %v", err)
			}
			if _, err := s.SetLease(t.Context(), Lease{Expires: clk.Now().Add(time.Hour)}); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("SetLease(no source) = %v", err)
			}
			clk.Advance(48 * time.Hour)
			if _, err := s.Evict(t.Context(), 1, time.Hour); err != nil {
				t.Fatal(err)
			}
			for _, d := range pinned {
				if !has(t, s, d) {
					t.Errorf("pinned content %s evicted", d)
				}
			}
			if has(t, s, other) || has(t, s, otherBlobs[0]) || has(t, s, otherBlobs[1]) {
				t.Error("unpinned image kept")
			}
			if !has(t, s, otherBlobs[2]) {
				t.Error("a layer shared with a pinned image was evicted")
			}

			// Pins survive a restart.
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = b.open(t, WithClock(clk.Now))
			if _, err := s.Evict(t.Context(), 1, time.Hour); err != nil {
				t.Fatal(err)
			}
			if !has(t, s, idx) || !has(t, s, amdBlobs[1]) {
				t.Fatal("pinned content evicted after a restart")
			}

			// Replaced as a whole: an empty list unpins everything of node-a.
			pin(t, s, "node-a")
			st, err := s.Evict(t.Context(), 1, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if s.Size() != 0 || st.Manifests != 3 {
				t.Fatalf("after unpinning: stats %+v, size %d", st, s.Size())
			}
		})
	}
}

// Content used after the plan was made is not removed.
func TestEvictSkipsContentUsedMeanwhile(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := newBackend(t, "inmemory").open(t, WithClock(clk.Now))
	d := commit(t, s, randomBytes(1, 100))
	clk.Advance(2 * time.Hour)
	p, err := s.plan(0, time.Hour, 0, reasonSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.victims) != 1 {
		t.Fatalf("plan %+v", p.victims)
	}
	r, _, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	removed, err := s.evictOne(t.Context(), p.victims[0], &p)
	if err != nil || removed || !has(t, s, d) {
		t.Fatalf("evictOne = %v, %v; blob kept = %v", removed, err, has(t, s, d))
	}
}

// Readers, commits and evictions at once; run with -race.
func writeFile(p string, content []byte) error { return os.WriteFile(p, content, 0o600) }

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newBackend(t, name).open(t)
			contents := make([][]byte, 8)
			ds := make([]digest.Digest, len(contents))
			for i := range contents {
				contents[i] = randomBytes(uint64(i), 70<<10)
				ds[i] = digest.FromBytes(contents[i])
			}
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := range 20 {
						k := (w + i) % len(ds)
						r, _, err := s.OpenBlob(t.Context(), ds[k])
						if errdefs.IsNotFound(err) {
							// Each worker fills through its own spool file.
							sp := s.SpoolPath(ds[k]) + "." + string(rune('a'+w))
							if err := writeFile(sp, contents[k]); err != nil {
								t.Error(err)
								return
							}
							if err := s.CommitBlob(t.Context(), ds[k], sp); err != nil {
								t.Error(err)
							}
							continue
						}
						if err != nil {
							t.Error(err)
							return
						}
						got, err := io.ReadAll(r)
						_ = r.Close()
						if err != nil || len(got) != len(contents[k]) {
							t.Errorf("read %d: %d bytes, %v", k, len(got), err)
						}
					}
				})
			}
			wg.Go(func() {
				for range 20 {
					if _, err := s.Evict(t.Context(), 3*70<<10, 0); err != nil {
						t.Error(err)
					}
				}
			})
			wg.Wait()
			if s.Size() < 0 {
				t.Fatalf("Size = %d", s.Size())
			}
		})
	}
}

// makePlan plans from a snapshot alone: TTL first (manifests before the blobs they
// release), then LRU down to the bound; never protected content, never a blob that a
// manifest left in place references.
func TestMakePlan(t *testing.T) {
	t.Parallel()
	d := func(name string) digest.Digest { return digest.FromString(name) }
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) int64 { return now.Add(-ago).UnixNano() }
	blob := func(name string, size int64, ago time.Duration) indexItem {
		return indexItem{d: d(name), size: size, access: at(ago), kind: kindBlob}
	}
	manifest := func(name string, ago time.Duration, refs ...string) indexItem {
		it := indexItem{d: d(name), size: 1, access: at(ago), kind: kindManifest}
		for _, r := range refs {
			it.refs = append(it.refs, d(r))
		}
		return it
	}
	items := []indexItem{
		manifest("old-image", 3*time.Hour, "old-layer", "shared-layer"),
		blob("old-layer", 100, 3*time.Hour),
		blob("shared-layer", 100, 4*time.Hour),
		manifest("new-image", time.Minute, "shared-layer", "new-layer"),
		blob("new-layer", 100, time.Minute),
		blob("loose-old", 10, 5*time.Hour),
		blob("loose-new", 10, 2*time.Minute),
		manifest("pinned", 6*time.Hour, "pinned-layer"),
		blob("pinned-layer", 100, 6*time.Hour),
	}
	var total int64
	for _, it := range items {
		total += it.size
	}
	protected := map[digest.Digest]bool{d("pinned"): true, d("pinned-layer"): true}
	tests := []struct {
		name     string
		maxBytes int64
		ttl      time.Duration
		spool    int64
		want     []string // victims, in order
	}{
		{"nothing to do", 0, 0, 0, nil},
		{"under the bound", total, 0, 0, nil},
		{"ttl: manifest first, then the blobs it released", 0, 2 * time.Hour, 0, []string{"old-image", "loose-old", "old-layer"}},
		{"lru: the oldest free blob first", total - 10, 0, 0, []string{"loose-old"}},
		{"lru: a manifest releases its blobs", total - 12, 0, 0, []string{"loose-old", "old-image", "old-layer"}},
		{"lru: spool bytes count", total, 0, 5, []string{"loose-old"}},
		{"lru: everything but pinned content", 1, 0, 0, []string{"loose-old", "old-image", "old-layer", "loose-new", "new-image", "shared-layer", "new-layer"}},
		{"ttl then lru", total - 200, 2 * time.Hour, 0, []string{"old-image", "loose-old", "old-layer", "loose-new", "new-image", "shared-layer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := indexView{items: slices.Clone(items), protected: protected, gen: 7, size: total, now: now}
			p := makePlan(v, tt.maxBytes, tt.ttl, tt.spool, reasonSize)
			var got []string
			for _, vi := range p.victims {
				for _, it := range items {
					if it.d == vi.d {
						got = append(got, nameOf(vi.d, d))
						if vi.size != it.size || vi.access != it.access || vi.kind != it.kind {
							t.Errorf("victim %+v does not match its item %+v", vi, it)
						}
					}
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("victims %v, want %v", got, tt.want)
			}
			if p.gen != 7 {
				t.Errorf("plan gen %d, want the snapshot's", p.gen)
			}
		})
	}
}

func nameOf(x digest.Digest, d func(string) digest.Digest) string {
	for _, n := range []string{"old-image", "old-layer", "shared-layer", "new-image", "new-layer", "loose-old", "loose-new", "pinned", "pinned-layer"} {
		if d(n) == x {
			return n
		}
	}
	return x.String()
}
