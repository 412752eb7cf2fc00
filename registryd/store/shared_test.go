package store

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

const testGrace = 2 * time.Minute

// cluster is masters on one in-memory driver, on one clock, whose index writers and
// state writers run only when the test says.
type cluster struct {
	t   *testing.T
	drv storagedriver.StorageDriver
	clk *clock
}

func newCluster(t *testing.T) *cluster {
	return &cluster{t: t, drv: inmemory.New(), clk: newClock()}
}

func (c *cluster) open(id string, opts ...Option) *Store {
	c.t.Helper()
	cfg := conf.Storage{Driver: "inmemory", Spool: c.t.TempDir(), Shared: true, MasterID: id, EvictGrace: conf.Duration{Duration: testGrace}}
	never := make(chan time.Time)
	opts = append([]Option{WithClock(c.clk.Now), withFlushTicks(never), WithMetrics(newMetrics()),
		func(s *Store) {
			s.shared.ticks = never
			s.shared.adoptWait = 50 * time.Millisecond
			s.shared.adoptPoll = time.Millisecond
		}}, opts...)
	s, err := newStore(c.t.Context(), c.drv, "", cfg, opts...)
	if err != nil {
		c.t.Fatalf("open master %s: %v", id, err)
	}
	c.t.Cleanup(func() { _ = s.Close() })
	<-s.RebuildDone()
	return s
}

// publish writes every master's state and index, as their writers would.
func (c *cluster) publish(ss ...*Store) {
	c.t.Helper()
	for _, s := range ss {
		if err := s.PublishState(c.t.Context()); err != nil {
			c.t.Fatal(err)
		}
		if err := s.save(c.t.Context(), false); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) evict(s *Store, ttl time.Duration) EvictStats {
	c.t.Helper()
	st, err := s.Evict(c.t.Context(), 0, ttl)
	if err != nil {
		c.t.Fatalf("evict on %s: %v", s.shared.id, err)
	}
	return st
}

func (c *cluster) stored(d digest.Digest) bool {
	_, err := c.drv.Stat(c.t.Context(), blobPath(d))
	return err == nil
}

// lists reports whether s's index has d.
func lists(s *Store, d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries[d] != nil
}

func readBlob(t *testing.T, s *Store, d digest.Digest) []byte {
	t.Helper()
	r, _, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatalf("open %s on %s: %v", d, s.shared.id, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s on %s: %v", d, s.shared.id, err)
	}
	return b
}

// The reproduction of the bug that shared storage had: master m1 stored an image
// long ago, master m2 used it recently or pins it; m1's TTL eviction must keep it.
func TestSharedEvictionKeepsOthersUse(t *testing.T) {
	for _, tc := range []struct {
		name string
		// use is what m2 does with the image after the TTL has passed for m1.
		use func(t *testing.T, m2 *Store, manifest digest.Digest, blobs []digest.Digest)
	}{
		{"read by another master", func(t *testing.T, m2 *Store, manifest digest.Digest, blobs []digest.Digest) {
			if _, _, err := m2.GetManifest(t.Context(), manifest); err != nil {
				t.Fatal(err)
			}
			for _, b := range blobs {
				readBlob(t, m2, b)
			}
		}},
		{"pinned on another master", func(t *testing.T, m2 *Store, manifest digest.Digest, _ []digest.Digest) {
			pin(t, m2, "node-a", manifest)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			m1, m2 := c.open("m1"), c.open("m2")
			manifest, blobs := putImage(t, m1, 1, randomBytes(1, 4096), randomBytes(2, 8192))
			c.clk.Advance(2 * time.Hour)
			tc.use(t, m2, manifest, blobs)
			c.publish(m1, m2)
			for range 3 {
				if st := c.evict(m1, time.Hour); st.Blobs+st.Manifests != 0 || st.Pending != 0 {
					t.Fatalf("m1 evicted or planned %+v, want nothing", st)
				}
				c.clk.Advance(testGrace)
				c.publish(m1, m2)
			}
			for _, d := range append(blobs, manifest) {
				if !c.stored(d) {
					t.Errorf("%s was removed", d)
				}
			}
		})
	}
}

// A removal waits out the grace, a use during it cancels it, and the other master
// forgets what was removed.
func TestSharedEvictionTwoSteps(t *testing.T) {
	c := newCluster(t)
	m1, m2 := c.open("m1"), c.open("m2")
	d := commit(t, m1, randomBytes(3, 4096))
	readBlob(t, m2, d)
	c.clk.Advance(2 * time.Hour)
	c.publish(m1, m2)

	if st := c.evict(m1, time.Hour); st.Blobs != 0 || st.Pending != 1 {
		t.Fatalf("first run: %+v, want 1 pending and nothing removed", st)
	}
	c.clk.Advance(testGrace / 2)
	readBlob(t, m2, d) // used during the grace
	c.clk.Advance(testGrace)
	c.publish(m1, m2)
	if st := c.evict(m1, time.Hour); st.Blobs != 0 || st.Pending != 0 || st.Skipped != 1 {
		t.Fatalf("run after a use: %+v, want the removal cancelled", st)
	}
	if got := counter(t, m1.m.EvictCancelled); got != 1 {
		t.Errorf("evict_cancelled_total = %v, want 1", got)
	}

	c.clk.Advance(2 * time.Hour)
	c.publish(m1, m2)
	if st := c.evict(m1, time.Hour); st.Blobs != 0 || st.Pending != 1 {
		t.Fatalf("plan: %+v, want 1 pending", st)
	}
	c.clk.Advance(testGrace)
	c.publish(m1, m2)
	if st := c.evict(m1, time.Hour); st.Blobs != 1 {
		t.Fatalf("after the grace: %+v, want 1 removed", st)
	}
	if c.stored(d) {
		t.Fatal("the blob is still stored")
	}
	c.publish(m1)
	if !lists(m2, d) {
		t.Fatal("m2 lost its entry before reading m1's removals")
	}
	c.evict(m2, time.Hour) // not the evictor, but it reads the others' removals
	if lists(m2, d) {
		t.Error("m2 still lists the removed blob")
	}
}

// The live master with the smallest id evicts; when its state goes stale, the next
// one takes over.
func TestSharedEvictor(t *testing.T) {
	c := newCluster(t)
	m1, m2 := c.open("m1"), c.open("m2")
	d := commit(t, m2, randomBytes(4, 1024))
	c.clk.Advance(2 * time.Hour)
	c.publish(m1, m2)
	if st := c.evict(m2, time.Hour); st.Pending != 0 || gauge(t, m2.m.Evictor) != 0 {
		t.Fatalf("m2 planned %+v while m1 is live", st)
	}
	if st := c.evict(m1, time.Hour); st.Pending != 1 || gauge(t, m1.m.Evictor) != 1 {
		t.Fatalf("m1: %+v, want 1 pending as the evictor", st)
	}
	// m1 stops writing its state (killed, or cut off from the storage).
	c.clk.Advance(liveWindow + time.Second)
	c.publish(m2)
	if st := c.evict(m1, time.Hour); st.Pending != 0 || gauge(t, m1.m.Evictor) != 0 {
		t.Errorf("m1 evicts with a stale state of its own: %+v", st)
	}
	c.evict(m2, time.Hour)
	c.clk.Advance(testGrace)
	c.publish(m2)
	if st := c.evict(m2, time.Hour); st.Blobs != 1 {
		t.Fatalf("m2 as the evictor: %+v, want 1 removed", st)
	}
	if c.stored(d) {
		t.Error("the blob is still stored")
	}
}

// Each master writes its own index and pins; a torn index is rebuilt from the
// storage and the pins stay.
func TestSharedBookkeeping(t *testing.T) {
	c := newCluster(t)
	m1 := c.open("m1")
	manifest, blobs := putImage(t, m1, 5, randomBytes(5, 2048))
	pin(t, m1, "node-a", manifest)
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{masterPath("m1", "index.json"), masterPath("m1", "pins.json")} {
		if _, err := c.drv.Stat(t.Context(), p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{indexPath, pinsPath} {
		if _, err := c.drv.Stat(t.Context(), p); !isNotFound(err) {
			t.Errorf("%s exists on shared storage (%v)", p, err)
		}
	}
	if err := c.drv.PutContent(t.Context(), masterPath("m1", "index.json"), []byte(`{"version":1,"entr`)); err != nil {
		t.Fatal(err)
	}
	m1 = c.open("m1")
	if ls := m1.Leases(); len(ls) != 1 || ls[0].Source != "node-a" {
		t.Fatalf("leases after a torn index = %+v, want node-a's", ls)
	}
	for _, d := range append(blobs, manifest) {
		if !lists(m1, d) {
			t.Errorf("the rebuilt index lacks %s", d)
		}
	}
	c.clk.Advance(2000 * time.Hour)
	c.publish(m1)
	c.evict(m1, time.Hour)
	c.clk.Advance(testGrace)
	if st := c.evict(m1, time.Hour); st.Blobs+st.Manifests != 0 {
		t.Errorf("evicted pinned content: %+v", st)
	}
}

// A blob is hashed once for the cluster: the master that stored it records that, and
// another master serves it unhashed until its bytes change.
func TestSharedVerifiedOnce(t *testing.T) {
	c := newCluster(t)
	m1, m2 := c.open("m1"), c.open("m2")
	content := randomBytes(6, 300<<10)
	d := commit(t, m1, content)
	mustEqualBytes(t, readBlob(t, m2, d), content)
	if n := m2.verifications.Load(); n != 0 {
		t.Errorf("m2 hashed the blob %d times, want 0", n)
	}
	if got := counter(t, m2.m.SharedVerified); got != 1 {
		t.Errorf("shared_verified_total = %v, want 1", got)
	}
	// Replaced behind the masters' backs, with bad bytes: the record no longer matches.
	c.clk.Advance(time.Second)
	bad := bytes.Clone(content)
	bad[0] ^= 1
	if err := c.drv.PutContent(t.Context(), blobPath(d), bad); err != nil {
		t.Fatal(err)
	}
	r, _, err := m2.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	_ = r.Close()
	if err == nil {
		t.Fatal("served a blob whose bytes changed, without hashing it")
	}
	if n := m2.verifications.Load(); n != 1 {
		t.Errorf("m2 hashed %d times, want 1", n)
	}
	if c.stored(d) {
		t.Error("the corrupt blob is still stored")
	}
}

// A fill from the owner uses the owner's copy instead of uploading a second one.
func TestSharedAdoptBlob(t *testing.T) {
	c := newCluster(t)
	m1, m2 := c.open("m1"), c.open("m2")
	content := randomBytes(7, 4096)
	d := commit(t, m1, content)
	before, err := c.drv.Stat(t.Context(), blobPath(d))
	if err != nil {
		t.Fatal(err)
	}
	c.clk.Advance(time.Second)
	spool := m2.SpoolPath(d)
	if err := os.WriteFile(spool, content, 0o600); err != nil {
		t.Fatal(err)
	}
	ok, err := m2.AdoptBlob(t.Context(), d, spool, int64(len(content)))
	if err != nil || !ok {
		t.Fatalf("AdoptBlob = %v, %v; want true", ok, err)
	}
	if _, err := os.Stat(spool); !os.IsNotExist(err) {
		t.Errorf("spool file left: %v", err)
	}
	after, err := c.drv.Stat(t.Context(), blobPath(d))
	if err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the stored copy was written again (%v)", err)
	}
	if !lists(m2, d) {
		t.Error("m2 does not list the adopted blob")
	}
	if got := counter(t, m2.m.SharedVerified); got != 1 {
		t.Errorf("m2 trusted m1's recorded hash %g times while adopting, want 1", got)
	}

	// A copy whose owner has not recorded its hash (died before it could) is adopted
	// once the wait ends, and hashed on its first read.
	third := randomBytes(9, 4096)
	td := commit(t, m1, third)
	if err := c.drv.Delete(t.Context(), verifiedPath(td)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m2.SpoolPath(td), third, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := m2.AdoptBlob(t.Context(), td, m2.SpoolPath(td), int64(len(third))); !ok || err != nil {
		t.Errorf("AdoptBlob of a copy without a hash record = %v, %v; want true, nil", ok, err)
	}
	if got := counter(t, m2.m.SharedVerified); got != 1 {
		t.Errorf("m2 trusted %g recorded hashes, want still 1", got)
	}

	// Nothing to adopt: the caller commits its own.
	other := randomBytes(8, 4096)
	od := digest.FromBytes(other)
	if err := os.WriteFile(m2.SpoolPath(od), other, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := m2.AdoptBlob(t.Context(), od, m2.SpoolPath(od), int64(len(other))); ok || err != nil {
		t.Errorf("AdoptBlob of a blob nobody stored = %v, %v; want false, nil", ok, err)
	}
}

// A victim that some index lists but the storage no longer holds is not counted as
// removed, and the masters that list it forget it.
func TestSharedEvictionAbsent(t *testing.T) {
	c := newCluster(t)
	m1, m2 := c.open("m1"), c.open("m2")
	d := commit(t, m1, randomBytes(9, 2048))
	readBlob(t, m2, d)
	if err := c.drv.Delete(t.Context(), blobPath(d)); err != nil {
		t.Fatal(err)
	}
	c.clk.Advance(2 * time.Hour)
	c.publish(m1, m2)
	c.evict(m1, time.Hour)
	c.clk.Advance(testGrace)
	c.publish(m1, m2)
	if st := c.evict(m1, time.Hour); st.Blobs != 0 || st.Skipped != 0 || st.Pending != 0 {
		t.Fatalf("evicting a blob already gone: %+v, want nothing counted", st)
	}
	c.publish(m1)
	c.evict(m2, time.Hour)
	if lists(m1, d) || lists(m2, d) {
		t.Errorf("still listed: m1 %v, m2 %v", lists(m1, d), lists(m2, d))
	}
}
