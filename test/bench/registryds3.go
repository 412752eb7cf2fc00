package bench

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hopless/hopless/test/lab"
)

const (
	metricFillsInFlight = "hopless_registryd_fills_in_flight"
	metricFills         = "hopless_registryd_fill_duration_seconds_count"
	metricCacheHits     = "hopless_registryd_cache_hits_total"
)

// throughput is one side's cold and warm MiB/s, one value per round.
type throughput struct{ cold, warm figure }

// registrydS3 ("registryd-s3") measures the cold and warm blob throughput of a
// registryd master on S3 (the lab's SeaweedFS bucket) against distribution's own
// proxy on the same bucket (under a root of its own, redirects off so that it
// serves every byte itself, as registryd does), and what S3 costs each of them
// against the filesystem. Two labs in turn, each of one master and one stock proxy:
// first both on the filesystem, then both on the bucket. Every round seeds fresh
// blobs for each side; cold is one client per blob GETting all of them at once,
// each GET going through to the upstream; warm is the same GETs again once the
// side has committed the blobs to its storage, and served from it (the upstream
// sees no further GET, and registryd counts a store hit for each). A figure is all
// the clients' bytes over the wall time of the last; the median of the rounds,
// which alternate the side that goes first.
func registrydS3(ctx context.Context, c Config) (results []Result, err error) {
	const name = "registryd-s3"
	rounds, blobs, size := 3, 4, int64(64<<20)
	if c.Quick {
		rounds, size = 1, 8<<20
	}
	fsOurs, fsStock, err := storageThroughput(ctx, c, lab.StorageFilesystem, rounds, blobs, size)
	if err != nil {
		return nil, err
	}
	s3Ours, s3Stock, err := storageThroughput(ctx, c, lab.StorageS3, rounds, blobs, size)
	if err != nil {
		return nil, err
	}
	cost := func(s3, fs figure) float64 { return median(s3.vals) / median(fs.vals) }
	return []Result{
		figureResult(name, "cold-mib-s", "MiB/s", stockProxy+"-s3", "", median, s3Ours.cold, s3Stock.cold),
		figureResult(name, "warm-mib-s", "MiB/s", stockProxy+"-s3", "", median, s3Ours.warm, s3Stock.warm),
		figureResult(name, "fs-cold-mib-s", "MiB/s", stockProxy+"-fs", "", median, fsOurs.cold, fsStock.cold),
		figureResult(name, "fs-warm-mib-s", "MiB/s", stockProxy+"-fs", "", median, fsOurs.warm, fsStock.warm),
		newResult(name, "cold-s3-vs-fs", "x", stockProxy, cost(s3Ours.cold, fsOurs.cold), cost(s3Stock.cold, fsStock.cold)),
		newResult(name, "warm-s3-vs-fs", "x", stockProxy, cost(s3Ours.warm, fsOurs.warm), cost(s3Stock.warm, fsStock.warm)),
	}, nil
}

// storageThroughput runs the rounds of registryd-s3 in a lab on storage and
// returns the figures of its master and of its stock proxy.
func storageThroughput(ctx context.Context, c Config, storage string, rounds, blobs int, size int64) (ours, stock throughput, err error) {
	where := storage
	if where == lab.StorageFilesystem {
		where = "fs"
	}
	l, err := upBaselineLab(ctx, c, 1, storage)
	if err != nil {
		return ours, stock, err
	}
	defer downLab(l, &err)
	o, s, err := sides(l)
	if err != nil {
		return ours, stock, err
	}
	client, err := newClient(l)
	if err != nil {
		return ours, stock, err
	}
	figs := map[string]*throughput{o.name: &ours, s.name: &stock}
	all := map[string][]blob{}
	for r := range rounds {
		order := []side{o, s}
		if r%2 == 1 {
			order = []side{s, o}
		}
		seeded := map[string][]blob{}
		for _, sd := range order {
			repo := fmt.Sprintf("%s/bench/s3-%s-%s-%d", lab.UpstreamPath, where, strings.ReplaceAll(sd.name, "-", ""), r+1)
			if seeded[sd.name], err = seedBlobs(ctx, c, l, repo, blobs, size); err != nil {
				return ours, stock, err
			}
		}
		for _, sd := range order {
			cold, warm, err := coldWarm(ctx, c, l, client, sd, seeded[sd.name])
			if err != nil {
				return ours, stock, fmt.Errorf("%s on %s, round %d: %w", sd, where, r+1, err)
			}
			all[sd.name] = append(all[sd.name], seeded[sd.name]...)
			figs[sd.name].cold.add(cold)
			figs[sd.name].warm.add(warm)
			c.logf("round %d: %s on %s: %d x %d bytes cold at %.1f MiB/s, warm at %.1f MiB/s", r+1, sd, where, len(seeded[sd.name]), seeded[sd.name][0].size, cold, warm)
		}
	}
	if storage == lab.StorageS3 {
		if err := inBucket(ctx, l, all[o.name], all[s.name]); err != nil {
			return ours, stock, err
		}
	}
	return ours, stock, nil
}

// inBucket checks that the lab's bucket holds the blobs of its master, and those of
// its stock proxy under the proxy's root.
func inBucket(ctx context.Context, l *lab.Lab, ours, stock []blob) error {
	keys, err := l.S3Keys(ctx)
	if err != nil {
		return err
	}
	proxies := l.Proxies()
	if len(proxies) != 1 {
		return fmt.Errorf("lab has %d stock proxies, want 1", len(proxies))
	}
	proxyRoot := strings.TrimPrefix(lab.ProxyS3Root(proxies[0].Name), "/") + "/"
	for _, x := range []struct {
		who      string
		blobs    []blob
		underOwn bool
	}{{"ours", ours, false}, {stockProxy, stock, true}} {
		for _, b := range x.blobs {
			enc := strings.TrimPrefix(b.digest, "sha256:")
			found := false
			for _, k := range keys {
				found = found || (strings.Contains(k, "/sha256/"+enc[:2]+"/"+enc) && strings.HasPrefix(k, proxyRoot) == x.underOwn)
			}
			if !found {
				return fmt.Errorf("%s: blob %s is not in bucket %s (%d keys)", x.who, b.digest, lab.S3Bucket, len(keys))
			}
		}
	}
	return nil
}

// coldWarm GETs the uncached blobs bs from side sd, one client each, all at once,
// checks that each GET went through to the upstream, waits until sd has committed
// them, and GETs them again, which must not reach the upstream. It returns the MiB/s
// of both.
func coldWarm(ctx context.Context, c Config, l *lab.Lab, client *http.Client, sd side, bs []blob) (cold, warm float64, err error) {
	if cold, err = blobsMiBs(ctx, client, sd, bs); err != nil {
		return 0, 0, fmt.Errorf("cold GETs: %w", err)
	}
	n, bytes, err := upstreamGETs(ctx, l, bs...)
	if err != nil {
		return 0, 0, err
	}
	if err := fetchedOnce(sd.name, bytes, bs); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	var hits float64
	if sd.name == stockProxy {
		for _, b := range bs {
			if err := proxyServed(ctx, l, b); err != nil {
				return 0, 0, err
			}
		}
	} else {
		if err := fillsCommitted(ctx, l); err != nil {
			return 0, 0, err
		}
		if hits, err = masterBlobHits(ctx, l); err != nil {
			return 0, 0, err
		}
	}
	c.logf("%s committed %d blobs %.1fs after the last cold GET ended", sd, len(bs), time.Since(t0).Seconds())
	if warm, err = blobsMiBs(ctx, client, sd, bs); err != nil {
		return 0, 0, fmt.Errorf("warm GETs: %w", err)
	}
	again, _, err := upstreamGETs(ctx, l, bs...)
	if err != nil {
		return 0, 0, err
	}
	if again != n {
		return 0, 0, fmt.Errorf("the upstream saw %d more GETs of the blobs once they were cached", again-n)
	}
	if sd.name != stockProxy {
		now, err := masterBlobHits(ctx, l)
		if err != nil {
			return 0, 0, err
		}
		if now-hits < float64(len(bs)) {
			return 0, 0, fmt.Errorf("%s counted %g store hits for %d warm GETs", sd, now-hits, len(bs))
		}
	}
	return cold, warm, nil
}

// blobsMiBs GETs every blob of bs at once, one client each, from side sd's first
// host, and returns all their bytes in MiB over the wall time of the last.
func blobsMiBs(ctx context.Context, client *http.Client, sd side, bs []blob) (float64, error) {
	took, err := concurrently(ctx, len(bs), func(ctx context.Context, i int) error { return sd.get(ctx, client, 0, bs[i]) })
	if err != nil {
		return 0, err
	}
	var total int64
	for _, b := range bs {
		total += b.size
	}
	return mibPerS(total, maxDuration(took)), nil
}

// fillsCommitted waits until the lab's only master runs no fill, and fails if any
// of its fills failed.
func fillsCommitted(ctx context.Context, l *lab.Lab) error {
	m := l.Masters[0]
	const limit = 60 * time.Second
	deadline := time.Now().Add(limit)
	for {
		s, err := lab.GetMetrics(ctx, "http://"+m.Metrics+"/metrics")
		if err != nil {
			return fmt.Errorf("%s's metrics: %w", m.Name, err)
		}
		if failed, _ := s.Sum(metricFills, map[string]string{"result": "error"}); failed > 0 {
			return fmt.Errorf("%s: %g fills failed", m.Name, failed)
		}
		running, found := s.Sum(metricFillsInFlight, nil)
		if !found {
			return fmt.Errorf("%s's metrics have no %s", m.Name, metricFillsInFlight)
		}
		if running == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still runs %g fills after %s", m.Name, running, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// masterBlobHits is the lab's only master's count of blobs served from its store.
func masterBlobHits(ctx context.Context, l *lab.Lab) (float64, error) {
	m := l.Masters[0]
	s, err := lab.GetMetrics(ctx, "http://"+m.Metrics+"/metrics")
	if err != nil {
		return 0, fmt.Errorf("%s's metrics: %w", m.Name, err)
	}
	hits, _ := s.Sum(metricCacheHits, map[string]string{"kind": "blob"})
	return hits, nil
}
