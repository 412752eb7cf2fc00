package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

// kill stops the store like kill -9 would: no final index write.
func (s *Store) kill() {
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.stopRebuild != nil {
			s.stopRebuild()
		}
		s.wg.Wait()
	})
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// backend is storage that outlives stores, so a test can reopen it.
type backend struct {
	name string
	root string // filesystem only
	mem  storagedriver.StorageDriver
	spl  string
}

var backendNames = []string{"filesystem", "inmemory"}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	switch name {
	case "filesystem":
		b.root = t.TempDir()
	case "inmemory":
		b.mem = inmemory.New()
		b.spl = t.TempDir()
	default:
		t.Fatalf("unknown backend %s", name)
	}
	return b
}

// open opens a store on the backend and waits for a rebuild of its index, if it needs
// one; it is closed (or killed) at cleanup.
func (b *backend) open(t *testing.T, opts ...Option) *Store {
	t.Helper()
	s := b.openRebuilding(t, nil, opts...)
	<-s.RebuildDone()
	return s
}

// openRebuilding opens a store on the backend, its driver wrapped by wrap unless
// that is nil, and returns at once, while a rebuild may run.
func (b *backend) openRebuilding(t *testing.T, wrap func(storagedriver.StorageDriver) storagedriver.StorageDriver, opts ...Option) *Store {
	t.Helper()
	var (
		s   *Store
		err error
	)
	switch {
	case wrap != nil && b.mem != nil:
		s, err = newStore(t.Context(), wrap(b.mem), "", conf.Storage{Driver: "inmemory", Spool: b.spl}, opts...)
	case wrap != nil:
		drv, derr := filesystem.FromParameters(map[string]any{"rootdirectory": b.root})
		if derr != nil {
			t.Fatal(derr)
		}
		s, err = newStore(t.Context(), wrap(drv), b.root, conf.Storage{Root: b.root, Spool: filepath.Join(b.root, conf.DefaultSpoolDir)}, opts...)
	case b.mem != nil:
		s, err = newStore(t.Context(), b.mem, "", conf.Storage{Driver: "inmemory", Spool: b.spl}, opts...)
	default:
		s, err = New(t.Context(), conf.Storage{Root: b.root}, opts...)
	}
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rewrite replaces d's stored bytes behind the store's back and makes sure the file
// looks changed (new mtime).
func (b *backend) rewrite(t *testing.T, s *Store, d digest.Digest, content []byte) {
	t.Helper()
	if b.mem != nil {
		time.Sleep(time.Millisecond) // a distinct modification time
		if err := b.mem.PutContent(t.Context(), blobPath(d), content); err != nil {
			t.Fatal(err)
		}
		return
	}
	p := s.fsPath(blobPath(d))
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := fi.ModTime().Add(time.Hour)
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// commit writes content to the spool and commits it.
func commit(t *testing.T, s *Store, content []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(content)
	if err := os.WriteFile(s.SpoolPath(d), content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitBlob(t.Context(), d, s.SpoolPath(d)); err != nil {
		t.Fatalf("commit %s: %v", d, err)
	}
	return d
}

// putImage commits a config and layers and puts an image manifest over them.
func putImage(t *testing.T, s *Store, seed uint64, layers ...[]byte) (manifest digest.Digest, blobs []digest.Digest) {
	t.Helper()
	config := []byte(`{"architecture":"amd64","os":"linux","seed":` + jsonNum(seed) + `}`)
	cd := commit(t, s, config)
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cd, Size: int64(len(config))},
	}
	m.SchemaVersion = 2
	blobs = append(blobs, cd)
	for _, l := range layers {
		ld := commit(t, s, l)
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: ld, Size: int64(len(l))})
		blobs = append(blobs, ld)
	}
	return putJSON(t, s, ocispec.MediaTypeImageManifest, m), blobs
}

func putIndex(t *testing.T, s *Store, children ...digest.Digest) digest.Digest {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, c := range children {
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: c, Size: 1})
	}
	return putJSON(t, s, ocispec.MediaTypeImageIndex, idx)
}

func putJSON(t *testing.T, s *Store, mediaType string, v any) digest.Digest {
	t.Helper()
	payload, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(payload)
	if err := s.PutManifest(t.Context(), d, mediaType, payload); err != nil {
		t.Fatalf("put manifest: %v", err)
	}
	return d
}

func jsonNum(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func newMetrics() *metrics.Metrics { return metrics.New() }

// has reports whether d is stored, asking the driver, not the index.
func has(t *testing.T, s *Store, d digest.Digest) bool {
	t.Helper()
	_, err := s.drv.Stat(t.Context(), blobPath(d))
	if err != nil && !isNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

func mustEqualBytes(t *testing.T, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("content differs: got %d bytes, want %d", len(got), len(want))
	}
}

func spoolFiles(t *testing.T, s *Store) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(s.spool, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pin gives source a lease on ds that holds for far longer than any test's clock
// moves.
func pin(t *testing.T, s *Store, source string, ds ...digest.Digest) {
	t.Helper()
	now := s.now()
	if _, err := s.SetLease(t.Context(), Lease{Source: source, Manifests: ds, Reported: now, Expires: now.Add(1000 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
}

// withFlushTicks drives the index writer from c instead of its ticker; a channel that
// never fires leaves every write to the test (FlushIndex).
func withFlushTicks(c <-chan time.Time) Option {
	return func(s *Store) { s.flushTicks = c }
}

func withRebuildRetry(d time.Duration) Option {
	return func(s *Store) { s.rebuildRetry = d }
}

// heldWalk wraps a driver: the first Walk of dir walks, then waits until release is
// closed (or the walk's context ends) before returning, so that a test acts while a
// rebuild has seen that directory and has not merged yet. fail makes the first fail
// Walks of any directory return an error instead.
type heldWalk struct {
	storagedriver.StorageDriver
	dir     string
	entered chan struct{} // closed when the held Walk is waiting
	release chan struct{}
	once    sync.Once

	mu   sync.Mutex
	fail int
}

func holdWalk(dir string) *heldWalk {
	return &heldWalk{dir: dir, entered: make(chan struct{}), release: make(chan struct{})}
}

func (h *heldWalk) wrap(d storagedriver.StorageDriver) storagedriver.StorageDriver {
	h.StorageDriver = d
	return h
}

func (h *heldWalk) Walk(ctx context.Context, p string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	h.mu.Lock()
	failing := h.fail > 0
	if failing {
		h.fail--
	}
	h.mu.Unlock()
	if failing {
		return errors.New("walk failed (test)")
	}
	err := h.StorageDriver.Walk(ctx, p, f, opts...)
	if p != h.dir {
		return err
	}
	held := false
	h.once.Do(func() { held = true })
	if !held {
		return err
	}
	close(h.entered)
	select {
	case <-h.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}
