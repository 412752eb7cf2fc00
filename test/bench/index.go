package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/store"
)

// The index benchmark measures registryd's store bookkeeping at 100,000 entries, in
// this process, on the filesystem driver: one index write, the index written per
// hour of steady reads, eviction planning and the store lock it holds, and a start
// after an unclean stop. Its baselines are the behaviour this bookkeeping replaced,
// measured in the same run: the index written every 5 s while reads mark it dirty,
// the whole eviction plan made under the store lock, and New returning only once the
// index was rebuilt.

const (
	indexBench = "index-100k"
	// oldFlushEvery is how often the replaced writer wrote an index that any read
	// had marked dirty.
	oldFlushEvery = 5 * time.Second
)

// simClock is the store's clock in the benchmark: an hour of reads takes seconds.
type simClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *simClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// indexFixture is the content stored: loose and referenced blobs, and manifests.
type indexFixture struct {
	blobs     []digest.Digest
	manifests []digest.Digest
}

func indexBench100k(ctx context.Context, c Config) ([]Result, error) {
	entries, manifests, tags, readsPerTick, evictRounds := 100_000, 10_000, 1_000, 20, 5
	if c.Quick {
		entries, manifests, tags, readsPerTick, evictRounds = 10_000, 1_000, 100, 5, 2
	}
	root := filepath.Join(c.Dir, "index-store")
	clk := &simClock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	cfg := conf.Storage{Root: root}

	// Fill the store through its API, so that every entry is a real file.
	t0 := time.Now()
	m := metrics.New()
	s, err := store.New(ctx, cfg, store.WithClock(clk.Now), store.WithMetrics(m))
	if err != nil {
		return nil, fmt.Errorf("opening the store: %w", err)
	}
	fx, err := fillIndexStore(ctx, s, clk, entries-manifests, manifests, tags)
	if err == nil {
		err = s.Close()
	} else {
		_ = s.Close()
	}
	if err != nil {
		return nil, err
	}
	c.logf("%s: stored %d blobs and %d manifests, %d tags in %.1fs", indexBench, len(fx.blobs), len(fx.manifests), tags, time.Since(t0).Seconds())

	// Open the clean index in a process of its own, so that the heap it takes is
	// not blurred by whatever else this process runs (the e2e harness runs other
	// tests beside it); then here, for one index write after a change.
	open, err := indexOpenChild(ctx, c, root, clk.Now())
	if err != nil {
		return nil, err
	}
	openClean, heapIndex := open.OpenS, open.HeapMiB
	m = metrics.New()
	s, err = store.New(ctx, cfg, store.WithClock(clk.Now), store.WithMetrics(m))
	if err != nil {
		return nil, fmt.Errorf("opening the store: %w", err)
	}
	defer s.Close()
	var writeS, writeMiB figure
	for i := range 3 {
		before := indexWrites(m)
		if err := s.PutTag(ctx, "registry.example", "bench/index", "write-"+strconv.Itoa(i),
			store.Tag{Digest: fx.manifests[i], MediaType: ocispec.MediaTypeImageManifest, Size: 1, Validated: clk.Now()}); err != nil {
			return nil, err
		}
		if wrote, err := s.FlushIndex(ctx); err != nil || !wrote {
			return nil, fmt.Errorf("index write after a tag: wrote=%v: %w", wrote, err)
		}
		d := indexWrites(m).minus(before)
		writeS.add(d.seconds)
		writeMiB.add(d.bytes / (1 << 20))
	}
	c.logf("%s: open on a clean index %.2fs (%.0f MiB of heap); one index write %.3fs, %.1f MiB",
		indexBench, openClean, heapIndex, median(writeS.vals), median(writeMiB.vals))

	// An hour of steady reads, by the store's clock, with the writer asked every 5 s.
	rng := rand.New(rand.NewPCG(1, 2))
	before := indexWrites(m)
	ticks, dirtyTicks := int(time.Hour/oldFlushEvery), 0
	for range ticks {
		clk.Advance(oldFlushEvery)
		for range readsPerTick {
			d := fx.blobs[rng.IntN(len(fx.blobs))]
			r, _, err := s.OpenBlob(ctx, d)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", d, err)
			}
			_ = r.Close()
		}
		// Every read marked the replaced index dirty: it wrote at every tick.
		dirtyTicks++
		if _, err := s.FlushIndex(ctx); err != nil {
			return nil, err
		}
	}
	hour := indexWrites(m).minus(before)
	perWrite := median(writeMiB.vals)
	oldBytes := float64(dirtyTicks) * perWrite
	c.logf("%s: an hour of %d reads: %v index writes, %.1f MiB; the replaced writer: %d writes, %.1f MiB",
		indexBench, ticks*readsPerTick, hour.writes, hour.bytes/(1<<20), dirtyTicks, oldBytes)

	// Eviction planning: scan everything (a TTL nothing is older than) and plan LRU
	// down to a bound just below the size, so that every entry goes into the heap.
	var lockMS, planMS figure
	for range evictRounds {
		p0, l0 := histogram(m.EvictPlanDuration), histogram(m.EvictLockDuration)
		if _, err := s.Evict(ctx, s.Size()-64, 100_000*time.Hour); err != nil {
			return nil, fmt.Errorf("evicting: %w", err)
		}
		p1, l1 := histogram(m.EvictPlanDuration), histogram(m.EvictLockDuration)
		planMS.add((p1.GetSampleSum() - p0.GetSampleSum()) * 1000)
		lockMS.add((l1.GetSampleSum() - l0.GetSampleSum()) * 1000)
	}
	c.logf("%s: eviction plan %.1fms, of which %.2fms under the store lock", indexBench, median(planMS.vals), median(lockMS.vals))

	// An unclean stop: keep an index written while open (clean=false), close, put it
	// back, and open again.
	if _, err := s.FlushIndex(ctx); err != nil {
		return nil, err
	}
	indexFile := filepath.Join(root, "hopless", "index.json") // store's documented layout
	unclean, err := os.ReadFile(indexFile)
	if err != nil {
		return nil, fmt.Errorf("reading the index: %w", err)
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(indexFile, unclean, 0o644); err != nil {
		return nil, fmt.Errorf("putting back an unclean index: %w", err)
	}
	if err := resetPeakRSS(); err != nil {
		return nil, err
	}
	rssBefore, err := procStatus("VmRSS")
	if err != nil {
		return nil, err
	}
	m = metrics.New()
	t0 = time.Now()
	s, err = store.New(ctx, cfg, store.WithClock(clk.Now), store.WithMetrics(m))
	if err != nil {
		return nil, fmt.Errorf("opening the store on an unclean index: %w", err)
	}
	defer s.Close()
	returned := time.Since(t0).Seconds()
	if !s.Rebuilding() {
		return nil, errors.New("an unclean index started no rebuild")
	}
	select {
	case <-s.RebuildDone():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	rebuilt := time.Since(t0).Seconds()
	if s.Rebuilding() {
		return nil, errors.New("the rebuild stopped before it was done")
	}
	peak, err := peakRSSSelf()
	if err != nil {
		return nil, err
	}
	c.logf("%s: unclean index: New returned in %.3fs, rebuilt in %.2fs; peak RSS %.0f MiB, from %.0f MiB before New",
		indexBench, returned, rebuilt, float64(peak)/(1<<20), float64(rssBefore)/(1<<20))
	if err := s.Close(); err != nil {
		return nil, err
	}

	var writesPerHour, bytesPerHour, oldWrites, oldMiB, newReturns, oldNew, rebuild figure
	writesPerHour.add(hour.writes)
	bytesPerHour.add(hour.bytes / (1 << 20))
	oldWrites.add(float64(dirtyTicks))
	oldMiB.add(oldBytes)
	newReturns.add(returned)
	oldNew.add(rebuilt)
	rebuild.add(rebuilt)
	one := func(v float64) figure { return figure{vals: []float64{v}} }
	const oldWriter, oldPlan, oldStart = "every-5s-write", "plan-under-lock", "rebuild-before-new"
	return []Result{
		figureResult(indexBench, "index-write-s", "s", baselineNone, "", median, writeS, figure{}),
		figureResult(indexBench, "index-size-mib", "MiB", baselineNone, "", median, writeMiB, figure{}),
		figureResult(indexBench, "index-writes-per-hour", unitCount, oldWriter, "", median, writesPerHour, oldWrites),
		figureResult(indexBench, "index-mib-per-hour", "MiB", oldWriter, "", median, bytesPerHour, oldMiB),
		// The replaced planner held the lock for all of the planning.
		figureResult(indexBench, "evict-lock-ms", "ms", oldPlan, "", median, lockMS, planMS),
		figureResult(indexBench, "evict-plan-ms", "ms", baselineNone, "", median, planMS, figure{}),
		figureResult(indexBench, "new-returns-s", "s", oldStart, "", median, newReturns, oldNew),
		figureResult(indexBench, "rebuild-s", "s", baselineNone, "", median, rebuild, figure{}),
		figureResult(indexBench, "open-clean-s", "s", baselineNone, "", median, one(openClean), figure{}),
		figureResult(indexBench, "index-heap-mib", "MiB", baselineNone, "", median, one(heapIndex), figure{}),
		figureResult(indexBench, "rebuild-peak-rss-mib", "MiB", baselineNone, "", median, one(float64(peak)/(1<<20)), figure{}),
		figureResult(indexBench, "rebuild-rss-added-mib", "MiB", baselineNone, "", median, one(float64(peak-rssBefore)/(1<<20)), figure{}),
	}, nil
}

// fillIndexStore stores blobs tiny blobs and manifests image manifests of a config
// and two layers each (the first 3*manifests blobs), and tags on the first manifests,
// the clock moving a second every 100 entries so that access times differ.
func fillIndexStore(ctx context.Context, s *store.Store, clk *simClock, blobs, manifests, tags int) (indexFixture, error) {
	if 3*manifests > blobs {
		return indexFixture{}, fmt.Errorf("%d manifests need %d blobs, have %d", manifests, 3*manifests, blobs)
	}
	fx := indexFixture{blobs: make([]digest.Digest, blobs), manifests: make([]digest.Digest, manifests)}
	const workers = 4
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for w := range workers {
		wg.Go(func() {
			for i := w; i < blobs; i += workers {
				content := []byte("hopless index bench blob " + strconv.Itoa(i))
				d := digest.FromBytes(content)
				sp := s.SpoolPath(d)
				if err := os.WriteFile(sp, content, 0o600); err != nil {
					fail(err)
					return
				}
				if err := s.CommitBlob(ctx, d, sp); err != nil {
					fail(err)
					return
				}
				fx.blobs[i] = d
				if i%100 == 0 {
					clk.Advance(time.Second)
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fx, fmt.Errorf("storing blobs: %w", errors.Join(errs...))
	}
	for w := range workers {
		wg.Go(func() {
			for i := w; i < manifests; i += workers {
				desc := func(d digest.Digest, mediaType string) ocispec.Descriptor {
					return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: 32}
				}
				mf := ocispec.Manifest{
					MediaType: ocispec.MediaTypeImageManifest,
					Config:    desc(fx.blobs[3*i], ocispec.MediaTypeImageConfig),
					Layers: []ocispec.Descriptor{desc(fx.blobs[3*i+1], ocispec.MediaTypeImageLayerGzip),
						desc(fx.blobs[3*i+2], ocispec.MediaTypeImageLayerGzip)},
				}
				mf.SchemaVersion = 2
				payload, err := json.Marshal(mf)
				if err != nil {
					fail(err)
					return
				}
				d := digest.FromBytes(payload)
				if err := s.PutManifest(ctx, d, ocispec.MediaTypeImageManifest, payload); err != nil {
					fail(err)
					return
				}
				fx.manifests[i] = d
				if i%100 == 0 {
					clk.Advance(time.Second)
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fx, fmt.Errorf("storing manifests: %w", errors.Join(errs...))
	}
	for i := range min(tags, manifests) {
		if err := s.PutTag(ctx, "registry.example", "bench/index", "v"+strconv.Itoa(i),
			store.Tag{Digest: fx.manifests[i], MediaType: ocispec.MediaTypeImageManifest, Size: 1, Validated: clk.Now()}); err != nil {
			return fx, fmt.Errorf("storing tags: %w", err)
		}
	}
	if _, err := s.FlushIndex(ctx); err != nil {
		return fx, err
	}
	return fx, nil
}

// writeFigures are the store's index writes so far, from its metrics.
type writeFigures struct {
	writes, bytes, seconds float64
}

func (a writeFigures) minus(b writeFigures) writeFigures {
	return writeFigures{writes: a.writes - b.writes, bytes: a.bytes - b.bytes, seconds: a.seconds - b.seconds}
}

func indexWrites(m *metrics.Metrics) writeFigures {
	return writeFigures{
		writes:  counterValue(m.IndexWrites.WithLabelValues("ok")),
		bytes:   counterValue(m.IndexWrittenBytes),
		seconds: histogram(m.IndexWriteDuration).GetSampleSum(),
	}
}

func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return d.GetCounter().GetValue()
}

func histogram(h prometheus.Histogram) *dto.Histogram {
	var d dto.Metric
	if err := h.Write(&d); err != nil {
		return &dto.Histogram{}
	}
	return d.GetHistogram()
}

// IndexOpen is what opening a clean store index took, measured by OpenIndex.
type IndexOpen struct {
	OpenS   float64 `json:"open_s"`
	HeapMiB float64 `json:"heap_mib"`
}

// OpenIndex opens the filesystem store at root with its clock at now, and returns
// how long New took and the live heap it added. It is meant to run in a process of
// its own (hopless-lab bench-index-open), where nothing else allocates.
func OpenIndex(ctx context.Context, root string, now time.Time) (IndexOpen, error) {
	heapBefore := heapInUse()
	t0 := time.Now()
	s, err := store.New(ctx, conf.Storage{Root: root}, store.WithClock(func() time.Time { return now }), store.WithMetrics(metrics.New()))
	if err != nil {
		return IndexOpen{}, fmt.Errorf("opening the store at %s: %w", root, err)
	}
	open := time.Since(t0).Seconds()
	heap := float64(heapInUse()-heapBefore) / (1 << 20)
	runtime.KeepAlive(s)
	if err := s.Close(); err != nil {
		return IndexOpen{}, fmt.Errorf("closing the store at %s: %w", root, err)
	}
	return IndexOpen{OpenS: open, HeapMiB: heap}, nil
}

// indexOpenChild runs OpenIndex in hopless-lab bench-index-open and reads its answer.
func indexOpenChild(ctx context.Context, c Config, root string, now time.Time) (IndexOpen, error) {
	bin := filepath.Join(c.Lab.BinDir, "hopless-lab")
	cmd := exec.CommandContext(ctx, bin, "bench-index-open", "--root", root, "--now", now.Format(time.RFC3339Nano))
	cmd.WaitDelay = 10 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return IndexOpen{}, fmt.Errorf("%s bench-index-open: %w: %s", bin, err, strings.TrimSpace(stderr.String()))
	}
	var r IndexOpen
	if err := json.Unmarshal(out, &r); err != nil {
		return IndexOpen{}, fmt.Errorf("%s bench-index-open printed %q: %w", bin, out, err)
	}
	return r, nil
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// resetPeakRSS returns what memory it can to the system and resets this process's
// peak resident set size to the current one, so that the next peakRSSSelf is the
// peak of what follows.
func resetPeakRSS() error {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return fmt.Errorf("resetting the peak RSS: %w", err)
	}
	return nil
}

// peakRSSSelf is this process's peak resident set size in bytes (VmHWM).
func peakRSSSelf() (int64, error) { return procStatus("VmHWM") }

// procStatus reads a size field of /proc/self/status, in bytes.
func procStatus(field string) (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading the process status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad %s %q in the process status", field, rest)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading the process status: %w", err)
	}
	return 0, fmt.Errorf("the process status has no %s", field)
}
