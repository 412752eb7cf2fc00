package bench

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The registryd benchmarks GET blobs straight from the masters with Go HTTPS clients
// (no containerd), against distribution's own pull-through cache in proxy mode
// started by the lab beside them (lab.Options.Proxies). Both sides cache the same
// upstream, and both run in the same lab, one after the other. Every body is checked
// against its digest: a wrong byte fails the benchmark.

const stockProxy = "distribution-proxy"

// side is one thing under test: the registryd masters or the stock proxies.
type side struct {
	name  string
	hosts []string
	// repo is how a client names an upstream repository at this side.
	repo func(upstreamRepo string) string
	// procs are the serving processes, one per host.
	procs []*lab.Proc
}

func (s side) String() string { return s.name }

// sides returns the lab's masters and its stock proxies.
func sides(l *lab.Lab) (ours, stock side, err error) {
	ours = side{name: "ours", repo: func(r string) string { return lab.LocalPrefix + "/" + strings.TrimPrefix(r, lab.UpstreamPath+"/") }}
	for _, m := range l.Masters {
		ours.hosts = append(ours.hosts, m.Addr)
		p := findProc(l, m.Name)
		if p == nil {
			return side{}, side{}, fmt.Errorf("lab has no process for %s", m.Name)
		}
		ours.procs = append(ours.procs, p)
	}
	stock = side{name: stockProxy, repo: func(r string) string { return r }}
	for _, p := range l.Proxies() {
		stock.hosts = append(stock.hosts, p.Addr)
		stock.procs = append(stock.procs, p.Proc)
	}
	if len(stock.hosts) != len(ours.hosts) {
		return side{}, side{}, fmt.Errorf("lab has %d masters but %d stock proxies", len(ours.hosts), len(stock.hosts))
	}
	return ours, stock, nil
}

func findProc(l *lab.Lab, name string) *lab.Proc {
	for _, p := range l.Procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// upBaselineLab starts a lab with no nodes, the given number of masters and as many
// stock proxies, all on storage (lab.StorageFilesystem or lab.StorageS3), in
// c.Dir/lab, or c.Dir/lab-s3 on S3. Down stops them all by PID.
func upBaselineLab(ctx context.Context, c Config, masters int, storage string) (*lab.Lab, error) {
	o := c.Lab
	o.Dir, o.Masters, o.Nodes, o.Proxies, o.Mode, o.Storage = filepath.Join(c.Dir, "lab"), masters, 0, masters, lab.ModeStock, storage
	if storage != lab.StorageFilesystem {
		o.Dir += "-" + storage
	}
	return lab.Up(ctx, o)
}

// downLab stops the lab and adds a failure to *err.
func downLab(l *lab.Lab, err *error) {
	if derr := l.Down(); derr != nil {
		*err = errors.Join(*err, fmt.Errorf("lab down: %w", derr))
	}
}

// blob is one blob as the upstream holds it.
type blob struct {
	repo   string // upstream repository
	digest string
	size   int64
}

// seedBlobs pushes an image of n layers of size bytes to repo and returns its layers.
func seedBlobs(ctx context.Context, c Config, l *lab.Lab, repo string, n int, size int64) ([]blob, error) {
	t0 := time.Now()
	res, err := l.Seed(ctx, repo, "bench", n, size, false)
	if err != nil {
		return nil, err
	}
	out := make([]blob, 0, len(res.Layers))
	per := res.Bytes / int64(len(res.Layers)) // every layer has the same size
	for _, d := range res.Layers {
		out = append(out, blob{repo: repo, digest: d, size: per})
	}
	c.logf("seeded %s: %d x %d bytes in %.1fs", res.Ref, len(out), per, time.Since(t0).Seconds())
	return out, nil
}

// newClient returns an HTTPS client that trusts the lab CA. It speaks HTTP/1.1 so
// that every concurrent client has a connection of its own, as separate nodes do.
func newClient(l *lab.Lab) (*http.Client, error) {
	return newClientCA(l.CA)
}

// newClientCA is newClient trusting the CA certificates in caFile.
func newClientCA(caFile string) (*http.Client, error) {
	pool, err := lab.LoadPool(caFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 64,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}}, nil
}

// getBlob GETs b from host as repo and checks the body's size and digest.
func getBlob(ctx context.Context, client *http.Client, host, repo string, b blob) error {
	url := "https://" + host + "/v2/" + repo + "/blobs/" + b.digest
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
	if err != nil {
		return fmt.Errorf("GET %s: body cut after %d of %d bytes: %w", url, n, b.size, err)
	}
	if n != b.size {
		return fmt.Errorf("GET %s: body has %d bytes, want %d", url, n, b.size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != b.digest {
		return fmt.Errorf("GET %s: body has digest %s: wrong bytes", url, got)
	}
	return nil
}

// get GETs b from side s's host i, naming it as s does.
func (s side) get(ctx context.Context, client *http.Client, i int, b blob) error {
	return getBlob(ctx, client, s.hosts[i], s.repo(b.repo), b)
}

// concurrently starts n copies of fn at the same instant and returns when all have
// finished, with each one's time from the start. The first failure cancels the rest.
func concurrently(ctx context.Context, n int, fn func(ctx context.Context, i int) error) ([]time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		took  = make([]time.Duration, n)
		start = make(chan struct{})
		t0    time.Time
	)
	for i := range n {
		wg.Go(func() {
			<-start
			if err := fn(ctx, i); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				cancel()
				return
			}
			took[i] = time.Since(t0)
		})
	}
	t0 = time.Now()
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return took, nil
}

// mibPerS is bytes in MiB per second of d.
func mibPerS(bytes int64, d time.Duration) float64 {
	return float64(bytes) / (1 << 20) / d.Seconds()
}

func maxDuration(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// upstreamGETs sums the upstream's blob GETs of the given blobs: their count and
// body bytes. A request is logged when its response ends, which can be just after
// the client has read the last byte, so it reads until the log stops changing.
func upstreamGETs(ctx context.Context, l *lab.Lab, blobs ...blob) (n int, bytes int64, err error) {
	want := make(map[string]bool, len(blobs))
	for _, b := range blobs {
		want[b.digest] = true
	}
	const settle, poll, limit = 3, 200 * time.Millisecond, 30 * time.Second
	lastN, lastBytes, same := -1, int64(-1), 0
	deadline := time.Now().Add(limit)
	for {
		entries, err := l.UpstreamLog()
		if err != nil {
			return 0, 0, err
		}
		n, bytes = 0, 0
		for _, e := range lab.BlobGETs(entries) {
			if want[e.Digest()] {
				n++
				bytes += e.Bytes
			}
		}
		if n == lastN && bytes == lastBytes {
			if same++; same >= settle {
				return n, bytes, nil
			}
		} else {
			same = 0
		}
		lastN, lastBytes = n, bytes
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("upstream access log still changing after %s", limit)
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// fetchedOnce fails unless the upstream served the blobs at least once each in full,
// so that an upstream-bytes figure can never be 0 or miss a fetch.
func fetchedOnce(who string, bytes int64, blobs []blob) error {
	var total int64
	for _, b := range blobs {
		total += b.size
	}
	if bytes < total {
		return fmt.Errorf("%s: the upstream served %d blob bytes of %d: the access log misses fetches", who, bytes, total)
	}
	return nil
}

func peakRSSMiB(s side) (float64, error) {
	var sum int64
	for _, p := range s.procs {
		b, err := p.PeakRSS()
		if err != nil {
			return 0, err
		}
		sum += b
	}
	return float64(sum) / (1 << 20), nil
}

// registrydCold: 16 clients GET one cold blob at once from one master, and from one
// stock proxy, each side on a blob of its own; and one client GETs another cold blob
// alone from each side.
func registrydCold(ctx context.Context, c Config) (results []Result, err error) {
	const name, clients = "registryd-cold", 16
	size := int64(256 << 20)
	if c.Quick {
		size = 16 << 20
	}
	l, err := upBaselineLab(ctx, c, 1, lab.StorageFilesystem)
	if err != nil {
		return nil, err
	}
	defer downLab(l, &err)
	ours, stock, err := sides(l)
	if err != nil {
		return nil, err
	}
	client, err := newClient(l)
	if err != nil {
		return nil, err
	}
	type run struct {
		single, many blob
		singleS      float64
		lastS        float64
		warmLastS    float64
		upstream     int64
		rssMiB       float64
	}
	runs := map[string]*run{}
	for _, s := range []side{ours, stock} {
		r := &run{}
		for _, x := range []struct {
			what string
			out  *blob
		}{{"single", &r.single}, {"many", &r.many}} {
			bs, err := seedBlobs(ctx, c, l, fmt.Sprintf("%s/bench/cold-%s-%s", lab.UpstreamPath, x.what, strings.ReplaceAll(s.name, "-", "")), 1, size)
			if err != nil {
				return nil, err
			}
			*x.out = bs[0]
		}
		runs[s.name] = r
	}
	for _, s := range []side{ours, stock} {
		r := runs[s.name]
		t0 := time.Now()
		if err := s.get(ctx, client, 0, r.single); err != nil {
			return nil, fmt.Errorf("%s: single cold GET: %w", s, err)
		}
		r.singleS = time.Since(t0).Seconds()
		c.logf("%s: one cold GET of %d bytes in %.3fs", s, r.single.size, r.singleS)
	}
	for _, s := range []side{ours, stock} {
		r := runs[s.name]
		took, err := concurrently(ctx, clients, func(ctx context.Context, _ int) error { return s.get(ctx, client, 0, r.many) })
		if err != nil {
			return nil, fmt.Errorf("%s: %d concurrent cold GETs: %w", s, clients, err)
		}
		r.lastS = maxDuration(took).Seconds()
		n, bytes, err := upstreamGETs(ctx, l, r.many)
		if err != nil {
			return nil, err
		}
		if err := fetchedOnce(s.name, bytes, []blob{r.many}); err != nil {
			return nil, err
		}
		r.upstream = bytes
		c.logf("%s: %d concurrent cold GETs of %d bytes, last done at %.3fs; the upstream served %d GETs, %d bytes", s, clients, r.many.size, r.lastS, n, bytes)
		// The same 16 clients on the now cached blob: what serving alone costs on
		// this machine, so the cold figure can be read as fill overhead.
		took, err = concurrently(ctx, clients, func(ctx context.Context, _ int) error { return s.get(ctx, client, 0, r.many) })
		if err != nil {
			return nil, fmt.Errorf("%s: %d concurrent warm GETs: %w", s, clients, err)
		}
		r.warmLastS = maxDuration(took).Seconds()
		c.logf("%s: %d concurrent warm GETs, last done at %.3fs", s, clients, r.warmLastS)
	}
	for _, s := range []side{ours, stock} {
		r := runs[s.name]
		if r.rssMiB, err = peakRSSMiB(s); err != nil {
			return nil, err
		}
		c.logf("%s: peak RSS %.1f MiB", s, r.rssMiB)
	}
	o, b := runs[ours.name], runs[stock.name]
	return []Result{
		newResult(name, "upstream-bytes", "x", stockProxy, float64(o.upstream)/float64(o.many.size), float64(b.upstream)/float64(b.many.size)),
		newResult(name, "last-client-s", "s", stockProxy, o.lastS, b.lastS),
		newResult(name, "single-cold-s", "s", stockProxy, o.singleS, b.singleS),
		newResult(name, "last-vs-single", "x", stockProxy, o.lastS/o.singleS, b.lastS/b.singleS),
		newResult(name, "cold-vs-warm-16", "x", stockProxy, o.lastS/o.warmLastS, b.lastS/b.warmLastS),
		newResult(name, "peak-rss-mib", "MiB", stockProxy, o.rssMiB, b.rssMiB),
	}, nil
}

// registrydWarm: 8 clients GET one cached blob at once from one master, and from one
// stock proxy; both are warmed first with one GET each, and the upstream must see no
// GET of the blob after that.
func registrydWarm(ctx context.Context, c Config) (results []Result, err error) {
	const name, clients = "registryd-warm", 8
	size, rounds := int64(1<<30), 3
	if c.Quick {
		size, rounds = 32<<20, 1
	}
	l, err := upBaselineLab(ctx, c, 1, lab.StorageFilesystem)
	if err != nil {
		return nil, err
	}
	defer downLab(l, &err)
	ours, stock, err := sides(l)
	if err != nil {
		return nil, err
	}
	client, err := newClient(l)
	if err != nil {
		return nil, err
	}
	bs, err := seedBlobs(ctx, c, l, lab.UpstreamPath+"/bench/warm", 1, size)
	if err != nil {
		return nil, err
	}
	b := bs[0]
	for _, s := range []side{ours, stock} {
		t0 := time.Now()
		if err := s.get(ctx, client, 0, b); err != nil {
			return nil, fmt.Errorf("%s: warming GET: %w", s, err)
		}
		c.logf("%s: warmed with one GET in %.3fs", s, time.Since(t0).Seconds())
	}
	// The stock proxy commits its copy only after the client has the last byte.
	if err := proxyServed(ctx, l, b); err != nil {
		return nil, err
	}
	warmN, _, err := upstreamGETs(ctx, l, b)
	if err != nil {
		return nil, err
	}
	tput := map[string][]float64{}
	for r := range rounds {
		order := []side{ours, stock}
		if r%2 == 1 {
			order = []side{stock, ours} // neither side always goes first
		}
		for _, s := range order {
			took, err := concurrently(ctx, clients, func(ctx context.Context, _ int) error { return s.get(ctx, client, 0, b) })
			if err != nil {
				return nil, fmt.Errorf("%s: %d concurrent warm GETs: %w", s, clients, err)
			}
			wall := maxDuration(took).Seconds()
			mibs := mibPerS(int64(clients)*b.size, maxDuration(took))
			tput[s.name] = append(tput[s.name], mibs)
			n, _, err := upstreamGETs(ctx, l, b)
			if err != nil {
				return nil, err
			}
			if n != warmN {
				return nil, fmt.Errorf("%s: the upstream saw %d more GETs of the warm blob %s", s, n-warmN, b.digest)
			}
			c.logf("round %d: %s served %d x %d bytes in %.3fs: %.0f MiB/s", r+1, s, clients, b.size, wall, mibs)
		}
	}
	return []Result{
		newResult(name, "throughput-mib-s", "MiB/s", stockProxy, median(tput[ours.name]), median(tput[stock.name])),
	}, nil
}

// proxyServed waits until every stock proxy has logged a complete GET of b: it logs
// the request once its handler has returned, after it committed the blob.
func proxyServed(ctx context.Context, l *lab.Lab, b blob) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range l.Proxies() {
		for {
			entries, err := lab.ReadAccessLog(p.AccessLog)
			if err != nil {
				return err
			}
			done := false
			for _, e := range lab.BlobGETs(entries) {
				if e.Digest() == b.digest && e.Status == http.StatusOK && e.Bytes == b.size {
					done = true
				}
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s logged no complete GET of %s", p.Name, b.digest)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// registrydPeers: three clients, one per master, GET every layer of a cold image at
// once; the baseline is the same through three stock proxies, each caching alone.
func registrydPeers(ctx context.Context, c Config) (results []Result, err error) {
	const name, masters = "registryd-peers", 3
	layers, size := 8, int64(16<<20)
	if c.Quick {
		layers, size = 4, 2<<20
	}
	l, err := upBaselineLab(ctx, c, masters, lab.StorageFilesystem)
	if err != nil {
		return nil, err
	}
	defer downLab(l, &err)
	ours, stock, err := sides(l)
	if err != nil {
		return nil, err
	}
	client, err := newClient(l)
	if err != nil {
		return nil, err
	}
	image := map[string][]blob{}
	for _, s := range []side{ours, stock} {
		if image[s.name], err = seedBlobs(ctx, c, l, lab.UpstreamPath+"/bench/peers-"+strings.ReplaceAll(s.name, "-", ""), layers, size); err != nil {
			return nil, err
		}
	}
	ratio, wall := map[string]float64{}, map[string]float64{}
	for _, s := range []side{ours, stock} {
		blobs := image[s.name]
		took, err := concurrently(ctx, masters, func(ctx context.Context, i int) error {
			for _, b := range blobs {
				if err := s.get(ctx, client, i, b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: pulling through %d hosts at once: %w", s, masters, err)
		}
		wall[s.name] = maxDuration(took).Seconds()
		n, bytes, err := upstreamGETs(ctx, l, blobs...)
		if err != nil {
			return nil, err
		}
		if err := fetchedOnce(s.name, bytes, blobs); err != nil {
			return nil, err
		}
		var total int64
		for _, b := range blobs {
			total += b.size
		}
		ratio[s.name] = float64(bytes) / float64(total)
		c.logf("%s: %d hosts pulled %d x %d bytes each in %.3fs; the upstream served %d GETs, %d bytes (%.2fx the image)", s, masters, len(blobs), blobs[0].size, wall[s.name], n, bytes, ratio[s.name])
	}
	return []Result{
		newResult(name, "upstream-bytes", "x", stockProxy, ratio[ours.name], ratio[stock.name]),
		newResult(name, "wall-s", "s", stockProxy, wall[ours.name], wall[stock.name]),
	}, nil
}
