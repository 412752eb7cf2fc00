package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/space"
	"github.com/hopless/hopless/test/registrytest"
)

const mib = 1 << 20

// openOn opens a filesystem store with its root (and spool) on dir.
func openOn(t *testing.T, dir string, cfg conf.Storage, opts ...Option) *Store {
	t.Helper()
	cfg.Root = filepath.Join(dir, "root")
	s, err := New(t.Context(), cfg, opts...)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// filler takes n bytes of dir's filesystem behind the store's back, as other users
// of the disk would; remove gives them back.
func filler(t *testing.T, dir string, n int) (remove func()) {
	t.Helper()
	p := filepath.Join(dir, "filler")
	if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
		t.Fatalf("filler of %d bytes: %v", n, err)
	}
	return func() {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
}

func avail(t *testing.T, dir string) int64 {
	t.Helper()
	u, err := space.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return u.Avail
}

func TestDefaultMaxBytes(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "10m")
	derived := openOn(t, dir, conf.Storage{MaxBytesShare: 90})
	if got, want := derived.MaxBytes(), int64(10*mib*9/10); got != want {
		t.Errorf("MaxBytes with max_bytes left out = %d, want 90%% of the 10 MiB filesystem, %d", got, want)
	}
	set := openOn(t, t.TempDir(), conf.Storage{MaxBytes: 5 * mib, MaxBytesShare: 0})
	if got := set.MaxBytes(); got != 5*mib {
		t.Errorf("MaxBytes with max_bytes set = %d, want %d", got, 5*mib)
	}
	mem := newBackend(t, "inmemory")
	s, err := newStore(t.Context(), mem.mem, "", conf.Storage{Driver: "inmemory", Spool: mem.spl, MaxBytesShare: 90})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.MaxBytes(); got != 0 {
		t.Errorf("MaxBytes of a driver without a local filesystem = %d, want 0 (unbounded)", got)
	}
}

// TestReserveEvicts reserves room for fills on a real 16 MiB filesystem: the store
// evicts least recently used content that nothing pins or references to make room,
// and refuses, evicting nothing, a blob for which even that would not be enough.
func TestReserveEvicts(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "16m")
	clk := newClock()
	m := newMetrics()
	s := openOn(t, dir, conf.Storage{MinFree: conf.Space{Bytes: 2 * mib}}, WithClock(clk.Now), WithMetrics(m))

	pinned, pinnedBlobs := putImage(t, s, 1, randomBytes(1, 4*mib))
	pin(t, s, "node-1", pinned)
	clk.Advance(time.Minute)
	older := commit(t, s, randomBytes(2, 3*mib))
	clk.Advance(time.Minute)
	newer := commit(t, s, randomBytes(3, 3*mib))
	clk.Advance(time.Minute)

	// 6 MiB more would leave less than the 2 MiB floor: the oldest blob makes room.
	x := digest.FromString("x")
	release := s.HoldSpool(x)
	defer release()
	if err := s.ReserveSpool(t.Context(), x, 6*mib, 0); err != nil {
		t.Fatalf("reserve 6 MiB: %v", err)
	}
	for _, d := range append([]digest.Digest{pinned, newer}, pinnedBlobs...) {
		if !has(t, s, d) {
			t.Errorf("%s was evicted, want kept", d)
		}
	}
	if has(t, s, older) {
		t.Error("the least recently used blob was not evicted to make room")
	}
	if v := counter(t, m.Evictions.WithLabelValues(reasonSpace)); v != 1 {
		t.Errorf("evictions for space = %v, want 1", v)
	}

	// 20 MiB cannot fit whatever is evicted: refused, and nothing goes.
	y := digest.FromString("y")
	err := s.ReserveSpool(t.Context(), y, 20*mib, 0)
	if !errors.Is(err, space.ErrNoSpace) || !strings.Contains(err.Error(), "storage.min_free") {
		t.Fatalf("reserve 20 MiB: %v, want a refusal naming storage.min_free", err)
	}
	if !has(t, s, newer) {
		t.Error("a blob was evicted for a reservation that could not be made anyway")
	}
	if err := s.CanFill(y); !errors.Is(err, space.ErrNoSpace) {
		t.Errorf("CanFill of the refused blob: %v, want a refusal", err)
	}
	if err := s.CanFill(digest.FromString("z")); err != nil {
		t.Errorf("CanFill of another blob: %v, want nil: one blob too large stops no other", err)
	}
	if err := s.Writable(); !errors.Is(err, space.ErrNoSpace) || !strings.Contains(err.Error(), y.String()) {
		t.Errorf("Writable: %v, want the refused write of %s", err, y)
	}
	if v := gauge(t, m.StorageWritable); v != 0 {
		t.Errorf("storage_writable = %v, want 0", v)
	}
	// A blob committed since clears the failure.
	commit(t, s, randomBytes(4, 1024))
	if err := s.Writable(); err != nil {
		t.Errorf("Writable after a commit: %v", err)
	}
	if v := gauge(t, m.StorageWritable); v != 1 {
		t.Errorf("storage_writable = %v, want 1", v)
	}
}

// TestReserveCountsOtherFills checks that a reservation counts the bytes that other
// fills holding reservations still have to write.
func TestReserveCountsOtherFills(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "8m")
	s := openOn(t, dir, conf.Storage{MinFree: conf.Space{Bytes: mib}})
	a, b := digest.FromString("a"), digest.FromString("b")
	releaseA := s.HoldSpool(a)
	if err := s.ReserveSpool(t.Context(), a, 4*mib, 0); err != nil {
		t.Fatal(err)
	}
	releaseB := s.HoldSpool(b)
	defer releaseB()
	if err := s.ReserveSpool(t.Context(), b, 4*mib, 0); !errors.Is(err, space.ErrNoSpace) {
		t.Fatalf("second 4 MiB reservation on 8 MiB with a 1 MiB floor: %v, want a refusal", err)
	}
	releaseA()
	if err := s.ReserveSpool(t.Context(), b, 4*mib, 0); err != nil {
		t.Fatalf("after the first fill let go: %v", err)
	}
}

// TestFloor takes a real filesystem below storage.min_free behind the store's back:
// no fill may start and Writable says why; eviction brings it back above the floor
// when unpinned content can go, and otherwise the state lasts until room is freed.
func TestFloor(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "8m")
	m := newMetrics()
	s := openOn(t, dir, conf.Storage{MinFree: conf.Space{Percent: 25}}, WithMetrics(m))
	blob := commit(t, s, randomBytes(5, mib))
	pinned, _ := putImage(t, s, 2, randomBytes(6, mib))
	pin(t, s, "node-1", pinned)
	remove := filler(t, dir, int(avail(t, dir))-mib-mib/2)
	err := s.Writable()
	if !errors.Is(err, space.ErrNoSpace) || !strings.Contains(err.Error(), "below storage.min_free 25%") {
		t.Fatalf("Writable below the floor: %v", err)
	}
	if err := s.CanFill(digest.FromString("any")); !errors.Is(err, space.ErrNoSpace) {
		t.Errorf("CanFill below the floor: %v, want a refusal", err)
	}
	if v := gauge(t, m.StorageWritable); v != 0 {
		t.Errorf("storage_writable = %v, want 0", v)
	}
	if len(s.space.kick) != 1 {
		t.Error("finding the disk below the floor did not wake eviction")
	}

	s.relieve(t.Context())
	if has(t, s, blob) {
		t.Error("the unpinned blob was not evicted below the floor")
	}
	if !has(t, s, pinned) {
		t.Error("the pinned image was evicted")
	}
	if err := s.Writable(); err != nil {
		t.Fatalf("Writable after eviction: %v", err)
	}

	// Nothing left to evict: below the floor until the disk has room again.
	remove()
	remove = filler(t, dir, int(avail(t, dir))-mib)
	s.relieve(t.Context())
	if !has(t, s, pinned) {
		t.Fatal("the pinned image was evicted")
	}
	drain(s)
	if err := s.Writable(); !errors.Is(err, space.ErrNoSpace) {
		t.Fatalf("Writable with only pinned content: %v, want below the floor", err)
	}
	if len(s.space.kick) != 0 {
		t.Error("with nothing left to evict, every check below the floor wakes eviction again")
	}
	remove()
	// tmpfs may give the filler's pages back a moment after the unlink.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := s.Writable()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Writable with room again: %v", err)
		}
	}
	if v := gauge(t, m.StorageWritable); v != 1 {
		t.Errorf("storage_writable = %v, want 1", v)
	}
}

func drain(s *Store) {
	for len(s.space.kick) > 0 {
		<-s.space.kick
	}
}

// TestFullDisk fills a real filesystem to the last byte: a manifest or tag write
// fails for lack of space and is remembered until the room is there again, and the
// store still opens on the full disk.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "4m")
	s := openOn(t, dir, conf.Storage{}) // no floor: only ENOSPC stops writes
	stored := commit(t, s, randomBytes(7, 64<<10))
	remove := filler(t, dir, int(avail(t, dir)))
	payload := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` +
		stored.String() + `","size":65536},"layers":[]}`)
	err := s.PutManifest(t.Context(), digest.FromBytes(payload), "", payload)
	if !space.Is(err) {
		t.Fatalf("PutManifest on a full disk: %v, want a lack of space", err)
	}
	err = s.PutTag(t.Context(), "registry.example", "repo", "v1", Tag{Digest: stored})
	if !space.Is(err) {
		t.Fatalf("PutTag on a full disk: %v, want a lack of space", err)
	}
	if err := s.Writable(); !errors.Is(err, space.ErrNoSpace) || !strings.Contains(err.Error(), "the last write failed for lack of space") {
		t.Fatalf("Writable after ENOSPC: %v", err)
	}
	if r, _, err := s.OpenBlob(t.Context(), stored); err != nil {
		t.Fatalf("a stored blob on a full disk: %v", err)
	} else {
		_ = r.Close()
	}
	s.kill()
	again, err := New(t.Context(), conf.Storage{Root: filepath.Join(dir, "root")})
	if err != nil {
		t.Fatalf("opening the store on a full disk: %v", err)
	}
	defer again.Close()
	if _, _, err := again.OpenBlob(t.Context(), stored); err != nil {
		t.Errorf("a stored blob after reopening on a full disk: %v", err)
	}
	remove()
	if err := s.Writable(); err != nil {
		t.Errorf("Writable with room again: %v", err)
	}
}

// TestCollectSpool removes old spool files that no fill holds, and only those.
func TestCollectSpool(t *testing.T) {
	t.Parallel()
	clk := newClock()
	s := newBackend(t, "filesystem").open(t, WithClock(clk.Now))
	s.cfg.SpoolMaxAge = conf.Duration{Duration: time.Hour}
	old, held, young := digest.FromString("old"), digest.FromString("held"), digest.FromString("young")
	other := filepath.Join(s.spool, "sha256", "not-a-spool-file")
	for _, f := range []struct {
		path string
		age  time.Duration
	}{{s.SpoolPath(old), 2 * time.Hour}, {s.SpoolPath(held), 2 * time.Hour}, {s.SpoolPath(young), 30 * time.Minute}, {other, 2 * time.Hour}} {
		if err := os.WriteFile(f.path, []byte("bytes"), 0o600); err != nil {
			t.Fatal(err)
		}
		mt := clk.Now().Add(-f.age)
		if err := os.Chtimes(f.path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	release := s.HoldSpool(held)
	if n := s.CollectSpool(); n != 1 {
		t.Errorf("collected %d, want 1", n)
	}
	for p, want := range map[string]bool{s.SpoolPath(old): false, s.SpoolPath(held): true, s.SpoolPath(young): true, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists = %v, want %v", p, err == nil, want)
		}
	}
	release()
	if n := s.CollectSpool(); n != 1 {
		t.Errorf("collected %d after the hold ended, want 1", n)
	}
}

// TestSpoolCountsInMaxBytes checks that eviction counts spool files against
// max_bytes.
func TestSpoolCountsInMaxBytes(t *testing.T) {
	t.Parallel()
	clk := newClock()
	m := newMetrics()
	s := newBackend(t, "filesystem").open(t, WithClock(clk.Now), WithMetrics(m))
	older := commit(t, s, randomBytes(8, 100<<10))
	clk.Advance(time.Minute)
	newer := commit(t, s, randomBytes(9, 100<<10))
	if err := os.WriteFile(s.SpoolPath(digest.FromString("leftover")), make([]byte, 150<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := s.Evict(t.Context(), 300<<10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Blobs != 1 || has(t, s, older) || !has(t, s, newer) {
		t.Errorf("evicted %+v; want only the older blob, for 200 KiB stored and 150 KiB spooled over 300 KiB", st)
	}
	if v := gauge(t, m.SpoolBytes); v != 150<<10 {
		t.Errorf("spool_bytes = %v, want %d", v, 150<<10)
	}
}
