// Package store is registryd's content-addressed cache. It keeps blobs, manifests and
// tags on any distribution storage driver (filesystem by default, s3 when masters
// share storage) in a layout of its own; distribution's repository layout is not used.
// Blobs are filled into a local spool directory first and committed when complete.
//
// Layout, as driver paths (the filesystem driver puts them under storage.root):
//
//	/hopless/blobs/<alg>/<hex[:2]>/<hex>       blob bytes; manifests' payloads too
//	/hopless/manifests/<alg>/<hex[:2]>/<hex>   a manifest's media type and references (JSON)
//	/hopless/tags/<upstream>/<repo>/_tags/<tag> a tag record (JSON)
//	/hopless/pins.json                          pin leases: manifests pinned per source, until when
//	/hopless/index.json                         the index: size and last access per digest, links (link.go)
//	/hopless/tmp/                               uploads and index writes in progress
//
// and, on local disk, the spool: <spool>/<alg>/<hex>.partial. On shared storage
// (storage.shared) index.json and pins.json are each master's own, under
// /hopless/masters/<master_id>/, beside its state.json; see shared.go.
//
// <upstream> is host[:port] with ':' written as '_', or '_' and a hash when the host has
// other characters; <repo> and <tag> are checked against the reference grammar, so no
// name can leave the storage root.
//
// The index lives in memory. It is written to index.json within 5 s when its content
// changed (entries, sizes, tags, links), every 5 minutes when only access times did,
// and on Close with "clean" set. A read records an access only once the entry's
// access time is a minute old, so that hot reads change nothing; eviction uses the
// access times in memory. The index is a cache of what the driver holds: when it is
// corrupt, was not closed cleanly (kill -9), or is missing while the driver holds
// content, New loads what it can read of it as a provisional index and returns, and
// the blob, manifest and tag directories are walked again in the background
// (Rebuilding). The walk's result is merged in: what was stored, removed or tagged
// meanwhile keeps its state, the rest becomes what the walk found, with the access
// times of the old index. Meanwhile content is read and stored as usual (a digest the
// index lacks is looked up on the driver) and eviction waits. A crash thus loses at
// most 5 minutes of access times, never content.
//
// Every digest is checked before it becomes a path. Blobs are verified when read: the
// reader hashes while it is read from offset 0 and holds back the last bytes until the
// digest matches, so a client never receives a whole corrupt blob. A mismatch removes
// the blob so that the next request fetches it again. A blob once verified is
// remembered by (size, mtime, inode) and served without hashing until its file changes;
// a background scrub (RunScrub) re-hashes stored blobs at storage.scrub_rate, so that
// bit rot that keeps the metadata is found and removed as well.
//
// Eviction removes content unused for longer than a TTL, then least recently used
// content while the cache is larger than its bound. It works manifest first: a
// manifest that is evicted releases its config and layers, and a blob referenced by a
// kept manifest, or anything reachable from a pinned manifest, is never removed. It
// plans from a compact snapshot of the index, taken under the store's lock, without
// the lock; each planned removal is checked again under the lock (used, referenced or
// pinned since) before it is made.
package store

import (
	"context"
	"crypto/rand"
	_ "crypto/sha256" // digest algorithms must be linked in
	_ "crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

const (
	// flushInterval is how often an index whose content changed is written.
	flushInterval = 5 * time.Second
	// accessFlushInterval is how often an index whose access times alone changed is
	// written. Eviction reads access times in memory; a crash loses at most this much
	// of them, never content.
	accessFlushInterval = 5 * time.Minute
	// accessGranularity is how far an access time must move before a read records it.
	accessGranularity = time.Minute
	// mergeBatch is how many digests a rebuild merges per hold of the store's lock.
	mergeBatch = 4096
	// defaultRebuildRetry is the first wait after a failed rebuild; it doubles up to
	// maxRebuildRetry.
	defaultRebuildRetry = 10 * time.Second
	maxRebuildRetry     = 5 * time.Minute
	// ioTimeout bounds storage writes that no request waits for (index, quarantine).
	ioTimeout = 30 * time.Second
	// holdback is how many final bytes of an unverified blob a reader keeps until the
	// digest is checked.
	holdback = 64 << 10
	// verifiedEntries bounds the memory of verified blobs.
	verifiedEntries = 1 << 16
	// tmpMaxAge is the age after which a file left in /hopless/tmp is removed at start.
	tmpMaxAge = 24 * time.Hour
	// defaultEvictInterval applies when the configuration leaves it at zero.
	defaultEvictInterval = time.Minute
)

var _ io.Closer = (*Store)(nil)

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger. The default discards.
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// WithMetrics records the store's metrics (StoreBytes, Evictions, EvictedBytes,
// VerifyFailures{where="store"}) on m.
func WithMetrics(m *metrics.Metrics) Option {
	return func(s *Store) { s.m = m }
}

// WithClock sets the clock for access times and eviction.
func WithClock(now func() time.Time) Option {
	return func(s *Store) {
		if now != nil {
			s.now = now
		}
	}
}

// Store is the cache. Its methods are safe for concurrent use.
type Store struct {
	drv storagedriver.StorageDriver
	// fsRoot is the local directory behind driver paths, for the filesystem driver
	// only; it enables rename on commit and *os.File readers.
	fsRoot string
	spool  string
	cfg    conf.Storage
	// directWrite: the driver publishes a Writer's content atomically on Commit, so
	// uploads go straight to the final path instead of tmp + Move (a full copy on s3).
	directWrite bool
	// noRename forces the upload path on the filesystem driver (tests).
	noRename bool
	// indexPath and pinsPath are where the index and the leases are written; on
	// shared storage they are this master's own (shared.go), and shared is set.
	indexPath, pinsPath string
	shared              *sharedState

	log *slog.Logger
	m   *metrics.Metrics
	now func() time.Time

	// stripes serialize changes to one digest (commit, put, evict, quarantine) and
	// to one tag. Reads take none of them.
	stripes [64]sync.Mutex

	mu       sync.Mutex
	entries  map[digest.Digest]*entry
	refcount map[digest.Digest]int // manifests present that reference a digest
	size     int64
	tags     map[tagKey]Tag
	pins     map[string]Lease // by source
	gen      uint64           // bumped when pins or manifests change what is reachable
	// contentDirty: entries, sizes, tags or links changed since the last index
	// write; accessDirty: access times did. lastSave is the store clock's time of
	// that write.
	contentDirty bool
	accessDirty  bool
	lastSave     time.Time
	// rb is set while the index is rebuilt in the background (index.go).
	rb *rebuildState

	// links are content's repository links; see link.go.
	links map[digest.Digest]map[linkRepo]struct{}

	verified      *verifiedCache
	verifications atomic.Int64 // completed blob hashes, for tests

	// checkedAt is when each digest's bytes were last hashed (by a fill, a read or
	// the scrub), under mu; the scrub takes the oldest first. See scrub.go.
	checkedAt map[digest.Digest]time.Time
	// scrubLim paces the scrub in bytes; nil when storage.scrub_rate is 0.
	scrubLim byteLimiter

	saveMu sync.Mutex
	pinsMu sync.Mutex
	// maxPinSources bounds len(pins).
	maxPinSources int
	evictMu       sync.Mutex

	// maxBytes is the bound of the cache (MaxBytes); space is its disk space
	// (space.go).
	maxBytes int64
	space    spaceState

	// rebuildDone is closed when no rebuild runs; stopRebuild cancels one.
	rebuildDone  chan struct{}
	stopRebuild  context.CancelFunc
	rebuildRetry time.Duration
	// flushTicks drives the index writer; nil is a ticker of flushInterval (tests
	// set their own).
	flushTicks <-chan time.Time

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New opens the store described by cfg: it creates the driver through distribution's
// factory (cfg.Driver, default filesystem at cfg.Root; other drivers get
// cfg.DriverParameters()), creates the spool directory and reads the index. When the index
// was not closed cleanly, New returns with it loaded as it is and rebuilds it from
// storage in the background (Rebuilding, RebuildDone). Close writes the index back.
func New(ctx context.Context, cfg conf.Storage, opts ...Option) (*Store, error) {
	if cfg.Driver == "" {
		cfg.Driver = conf.DefaultStorageDriver
	}
	var (
		params map[string]any
		fsRoot string
	)
	if cfg.Driver == "filesystem" {
		if cfg.Root == "" {
			return nil, fmt.Errorf("storage: root is required for the filesystem driver: %w", errdefs.ErrInvalidArgument)
		}
		root, err := filepath.Abs(cfg.Root)
		if err != nil {
			return nil, fmt.Errorf("storage: root %q: %w", cfg.Root, err)
		}
		cfg.Root, fsRoot = root, root
		params = map[string]any{"rootdirectory": root}
		if cfg.Spool == "" {
			cfg.Spool = filepath.Join(root, conf.DefaultSpoolDir)
		}
	} else {
		var err error
		if params, err = cfg.DriverParameters(); err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
		if cfg.Spool == "" {
			return nil, fmt.Errorf("storage: spool is required for the %s driver: %w", cfg.Driver, errdefs.ErrInvalidArgument)
		}
	}
	drv, err := factory.Create(ctx, cfg.Driver, params)
	if err != nil {
		var unknown factory.InvalidStorageDriverError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("storage: driver %q is not compiled in: %w", cfg.Driver, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("storage: create %s driver: %w", cfg.Driver, err)
	}
	return newStore(ctx, drv, fsRoot, cfg, opts...)
}

// newStore opens a store on drv; fsRoot is the filesystem driver's root, or empty.
func newStore(ctx context.Context, drv storagedriver.StorageDriver, fsRoot string, cfg conf.Storage, opts ...Option) (*Store, error) {
	s := &Store{
		drv:      drv,
		fsRoot:   fsRoot,
		spool:    cfg.Spool,
		cfg:      cfg,
		log:      slog.New(slog.DiscardHandler),
		now:      time.Now,
		entries:  make(map[digest.Digest]*entry),
		refcount: make(map[digest.Digest]int),
		tags:     make(map[tagKey]Tag),
		pins:     make(map[string]Lease),
		verified: newVerifiedCache(verifiedEntries),
		stop:     make(chan struct{}),
		space:    newSpaceState(),

		maxPinSources: DefaultMaxPinSources,
		rebuildDone:   make(chan struct{}),
		rebuildRetry:  defaultRebuildRetry,
	}
	s.checkedAt = make(map[digest.Digest]time.Time)
	s.scrubLim = newScrubLimiter(cfg.ScrubRate)
	s.indexPath, s.pinsPath = indexPath, pinsPath
	if cfg.Shared {
		if !conf.MasterIDRE.MatchString(cfg.MasterID) {
			return nil, fmt.Errorf("storage: shared storage needs a master_id of letters, digits, '.', '_' and '-', got %q: %w", cfg.MasterID, errdefs.ErrInvalidArgument)
		}
		grace := cfg.EvictGrace.Duration
		if grace <= 0 {
			grace = conf.DefaultEvictGrace
		}
		s.shared = newSharedState(cfg.MasterID, grace)
		s.indexPath, s.pinsPath = masterPath(cfg.MasterID, "index.json"), masterPath(cfg.MasterID, "pins.json")
	}
	for _, o := range opts {
		o(s)
	}
	switch drv.Name() {
	case "s3aws", "gcs":
		s.directWrite = true
	}
	if err := os.MkdirAll(s.spool, 0o700); err != nil {
		return nil, fmt.Errorf("storage: create spool: %w", err)
	}
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512} {
		if err := os.MkdirAll(filepath.Join(s.spool, alg.String()), 0o700); err != nil {
			return nil, fmt.Errorf("storage: create spool: %w", err)
		}
	}
	if s.fsRoot != "" {
		if err := os.MkdirAll(s.fsRoot, 0o755); err != nil {
			return nil, fmt.Errorf("storage: create root: %w", err)
		}
	}
	s.initMaxBytes()
	job, err := s.load(ctx)
	if err != nil {
		return nil, err
	}
	s.cleanTmp(ctx)
	_ = s.Writable() // the gauge, from the start
	s.wg.Add(1)
	go s.flushLoop()
	if s.shared != nil {
		s.wg.Add(1)
		go s.publishLoop()
	}
	if job != nil {
		s.startRebuild(job)
	} else {
		close(s.rebuildDone)
	}
	return s, nil
}

// Close stops the background index writer and a rebuild that still runs, and writes
// the index, marked clean unless the rebuild was not done.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.stopRebuild != nil {
			s.stopRebuild()
		}
		s.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		s.closeErr = s.save(ctx, true)
	})
	return s.closeErr
}

// Size is the number of bytes of cached blobs and manifests.
func (s *Store) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

// RunEviction evicts every cfg.EvictInterval (default 1m) with MaxBytes and cfg.TTL
// until ctx is done, and at once when a write fails for lack of space or a filesystem
// is found below storage.min_free. Each run first removes old spool files, then
// evicts by TTL and size (spool files count), then evicts further while a filesystem
// is below its floor. Runs are skipped while the index is rebuilt.
func (s *Store) RunEviction(ctx context.Context) {
	interval := s.cfg.EvictInterval.Duration
	if interval <= 0 {
		interval = defaultEvictInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.space.mu.Lock()
			s.space.stuck = false
			s.space.mu.Unlock()
		case <-s.space.kick:
		}
		s.CollectSpool()
		st, err := s.Evict(ctx, s.maxBytes, s.cfg.TTL.Duration)
		switch {
		case errdefs.IsUnavailable(err):
			s.log.Debug("eviction skipped", "reason", err)
		case err != nil && ctx.Err() == nil:
			s.log.Warn("eviction failed", "error", err)
		}
		if st.Manifests+st.Blobs > 0 {
			s.log.Info("evicted", "manifests", st.Manifests, "blobs", st.Blobs, "tags", st.Tags,
				"bytes", st.Bytes, "size", s.Size())
		}
		s.relieve(ctx)
		_ = s.Writable()
	}
}

func (s *Store) stripe(key string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return &s.stripes[h.Sum32()%uint32(len(s.stripes))]
}

// fsPath is the local file behind a driver path (filesystem driver only).
func (s *Store) fsPath(p string) string {
	return filepath.Join(s.fsRoot, filepath.FromSlash(p))
}

// isNotFound reports whether a driver error says the path does not exist.
func isNotFound(err error) bool {
	var nf storagedriver.PathNotFoundError
	return errors.As(err, &nf)
}

func randomName() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
