package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file check registryd's pull-through cache on real labs by what
// can be observed: the upstream's access log (one line per request, written when
// the response ends), which master served what, the digests of the bodies, and the
// masters' metrics. None of them asserts how long anything took; the upstream is
// throttled only to keep a fill running while a test looks at it.

const (
	// layerFile is the size of the random file in a test layer; the layer blob is
	// a few KiB larger (tar header and trailer).
	layerFile = 8 << 20
	// throttle makes an 8 MiB fill last about 4 s.
	throttle = 2 << 20
	// waitLimit bounds every poll; reaching it fails the test.
	waitLimit = time.Minute
)

// seedBlobs pushes repo:tag with n layers of fileSize random bytes and returns the
// layer digests and the size of each layer blob.
func seedBlobs(t *testing.T, l *lab.Lab, repo, tag string, n int, fileSize int64) ([]string, int64) {
	t.Helper()
	res := seed(t, l, repo, tag, n, fileSize)
	return res.Layers, res.Bytes / int64(n)
}

// setFaults makes the upstream inject f into the requests that start from now on.
func setFaults(t *testing.T, l *lab.Lab, f lab.Faults) {
	t.Helper()
	if err := lab.WriteFaults(l.FaultsFile(), f); err != nil {
		t.Fatal(err)
	}
}

// upstreamLog reads the upstream's access log.
func upstreamLog(t *testing.T, l *lab.Lab) []lab.AccessEntry {
	t.Helper()
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// upstreamGETs returns the upstream's logged (that is, ended) GETs of blob digest,
// in log order.
func upstreamGETs(t *testing.T, l *lab.Lab, digest string) []lab.AccessEntry {
	t.Helper()
	var out []lab.AccessEntry
	for _, e := range lab.BlobGETs(upstreamLog(t, l)) {
		if e.Digest() == digest {
			out = append(out, e)
		}
	}
	return out
}

// upstreamManifestReads returns the upstream's GET and HEAD requests for
// manifests/<ref> of the upstream repository repo, from the since'th log entry on.
// Seeding reads manifests too, so callers count from after their seeds.
func upstreamManifestReads(t *testing.T, l *lab.Lab, since int, repo, ref string) []lab.AccessEntry {
	t.Helper()
	var out []lab.AccessEntry
	for _, e := range upstreamLog(t, l)[since:] {
		if (e.Method == http.MethodGet || e.Method == http.MethodHead) && e.Path == "/v2/"+repo+"/manifests/"+ref {
			out = append(out, e)
		}
	}
	return out
}

func describeEntries(es []lab.AccessEntry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "\n  %s %s %s from %s range=%q status=%d bytes=%d aborted=%v", e.Time.Format("15:04:05.000"), e.Method, e.Path, e.Remote, e.Range, e.Status, e.Bytes, e.Aborted)
	}
	if b.Len() == 0 {
		return " (none)"
	}
	return b.String()
}

// checkWhole fails unless r is a complete 200 response whose body hashes to digest.
func checkWhole(t *testing.T, what string, r blobResponse, digest string, size int64) {
	t.Helper()
	if r.Status != http.StatusOK || !r.complete() || int64(len(r.Body)) != size || sha(r.Body) != digest {
		t.Fatalf("%s: want 200 with all %d bytes of %s, got %s", what, size, digest, r)
	}
}

// checkNeverCorrupt fails if r looks like a whole blob but is not digest's content:
// a client could not tell that such a response is wrong.
func checkNeverCorrupt(t *testing.T, what string, r blobResponse, digest string, size int64) {
	t.Helper()
	if r.Err == nil && r.Status == http.StatusOK && int64(len(r.Body)) == size && sha(r.Body) != digest {
		t.Fatalf("%s: the master served a complete %d-byte body that hashes to %s, not %s", what, size, sha(r.Body), digest)
	}
}

// blobHits is master-1's count of blob GETs served from its store.
func blobHits(t *testing.T, l *lab.Lab) float64 {
	t.Helper()
	return metric(t, l, 1, "hopless_registryd_cache_hits_total", map[string]string{"kind": "blob"})
}

// TestCacheSingleFlight sends 16 concurrent GETs for one uncached blob to one master:
// the upstream is asked once and every client gets the whole blob.
func TestCacheSingleFlight(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheSingleFlight, 1, 0)
	repo := lab.UpstreamPath + "/single-flight"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	// The fill lasts a few seconds, so that every request finds it running.
	setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	const clients = 16
	res := make([]blobResponse, clients)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			<-start
			res[i] = getBlob(ctx, c, l, 1, repo, d, "")
		})
	}
	close(start)
	wg.Wait()
	for i, r := range res {
		checkWhole(t, fmt.Sprintf("client %d", i), r, d, size)
	}
	gets := upstreamGETs(t, l, d)
	if len(gets) != 1 {
		t.Fatalf("16 concurrent GETs of %s made %d upstream GETs, want 1:%s", d, len(gets), describeEntries(gets))
	}
	if g := gets[0]; g.Aborted || g.Range != "" || g.Status != http.StatusOK || g.Bytes != size {
		t.Errorf("want one whole 200 upstream GET of %d bytes, got:%s", size, describeEntries(gets))
	}
	if hits := blobHits(t, l); hits != 0 {
		t.Errorf("%v of the GETs were served from the store after the fill: they did not join it, so this run did not test single-flight", hits)
	}
}

// TestCacheStreamsWhileFilling checks that a client gets a blob's first bytes while
// the master is still receiving it from the upstream.
func TestCacheStreamsWhileFilling(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheStreaming, 1, 0)
	repo := lab.UpstreamPath + "/streaming"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	resp, err := openBlob(ctx, c, l, 1, repo, d, "")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || contentLength(resp.Header) != size {
		t.Fatalf("GET %s: want 200 with Content-Length %d, got %s, Content-Length %q", d, size, resp.Status, resp.Header.Get("Content-Length"))
	}
	first := make([]byte, 64<<10)
	n, err := io.ReadAtLeast(resp.Body, first, 1)
	if err != nil {
		t.Fatalf("reading the first bytes of %s: %v", d, err)
	}
	// The upstream logs a GET when its response has ended.
	if gets := upstreamGETs(t, l, d); len(gets) != 0 {
		t.Fatalf("the client got its first %d bytes only after the upstream had sent the whole blob (the master does not stream a fill):%s",
			n, describeEntries(gets))
	}
	rest, err := io.ReadAll(resp.Body)
	body := append(first[:n], rest...)
	checkWhole(t, "the streamed GET", blobResponse{Status: resp.StatusCode, Header: resp.Header, Body: body, Err: err}, d, size)
	gets := upstreamGETs(t, l, d)
	if len(gets) != 1 || gets[0].Aborted || gets[0].Bytes != size {
		t.Errorf("want one whole upstream GET of %d bytes, got:%s", size, describeEntries(gets))
	}
}

// TestCacheFillSurvivesClientDisconnect checks that a fill goes on, and commits,
// after the only client that asked for the blob has gone away.
func TestCacheFillSurvivesClientDisconnect(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheDisconnect, 1, 0)
	repo := lab.UpstreamPath + "/disconnect"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	resp, err := openBlob(ctx, c, l, 1, repo, d, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatalf("reading the first KiB of %s: %v", d, err)
	}
	// Closing a body that is far from read closes the connection.
	resp.Body.Close()
	c.Transport.(*http.Transport).CloseIdleConnections()
	if gets := upstreamGETs(t, l, d); len(gets) != 0 {
		t.Fatalf("the upstream had sent the whole blob before the client went away, so this run tests nothing:%s", describeEntries(gets))
	}

	ok := map[string]string{"result": "ok"}
	eventually(t, waitLimit, "the fill of "+d+" committed after its client went away", func() bool {
		if failed := metric(t, l, 1, "hopless_registryd_fill_duration_seconds_count", map[string]string{"result": "error"}); failed > 0 {
			t.Fatalf("the fill of %s failed after its client went away; upstream GETs:%s", d, describeEntries(upstreamGETs(t, l, d)))
		}
		return metric(t, l, 1, "hopless_registryd_fill_duration_seconds_count", ok) >= 1
	})
	var left []lab.Request
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if r.IsBlobGET() && strings.HasSuffix(r.Path, "/"+d) {
			left = append(left, r)
		}
	}
	if len(left) != 1 || left[0].Bytes >= size {
		t.Fatalf("want master-1 to have logged one GET of %s that ended short when the client left, got %+v", d, left)
	}
	hits := blobHits(t, l)
	checkWhole(t, "GET after the fill", getBlob(ctx, c, l, 1, repo, d, ""), d, size)
	if got := blobHits(t, l); got != hits+1 {
		t.Errorf("the GET after the fill was not served from the store: blob cache hits %v -> %v", hits, got)
	}
	gets := upstreamGETs(t, l, d)
	if len(gets) != 1 || gets[0].Aborted || gets[0].Range != "" || gets[0].Bytes != size {
		t.Errorf("want one whole upstream GET of %d bytes, the one the client left, got:%s", size, describeEntries(gets))
	}
}

// TestCacheResumesCutStream cuts the upstream's response after 1 MB: the client still
// gets the whole blob, and the master resumed with a Range request.
func TestCacheResumesCutStream(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheResume, 1, 0)
	repo := lab.UpstreamPath + "/resume"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	const cut = 1000000
	setFaults(t, l, lab.Faults{CutAfter: cut, CutTimes: 1})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	checkWhole(t, "GET through a cut upstream stream", getBlob(ctx, c, l, 1, repo, d, ""), d, size)

	gets := upstreamGETs(t, l, d)
	if len(gets) != 2 {
		t.Fatalf("want 2 upstream GETs (the cut one, then a resume), got:%s", describeEntries(gets))
	}
	if g := gets[0]; !g.Aborted || g.Range != "" || g.Bytes != cut {
		t.Errorf("want the first upstream GET whole-blob and cut after %d bytes, got:%s", cut, describeEntries(gets))
	}
	g := gets[1]
	from, ok := strings.CutPrefix(g.Range, "bytes=")
	from, ok2 := strings.CutSuffix(from, "-")
	off, err := strconv.ParseInt(from, 10, 64)
	if !ok || !ok2 || err != nil || off <= 0 || off > cut {
		t.Fatalf("want the second upstream GET to ask for bytes=N- with 0 < N <= %d, got:%s", cut, describeEntries(gets))
	}
	if g.Aborted || g.Status != http.StatusPartialContent || g.Bytes != size-off {
		t.Errorf("want the resume to be a whole 206 of %d bytes, got:%s", size-off, describeEntries(gets))
	}
	if n := metric(t, l, 1, "hopless_registryd_fill_resumes_total", nil); n < 1 {
		t.Errorf("hopless_registryd_fill_resumes_total is %v after a resumed fill", n)
	}
}

// TestCacheKillMidFill kills the master with SIGKILL in the middle of a fill and
// starts it again: the blob is then served whole and right, resumed from the spool
// file (a Range GET in the upstream's log), and no response was ever a whole blob
// with other content.
func TestCacheKillMidFill(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheKill, 1, 0)
	repo := lab.UpstreamPath + "/kill"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	resp, err := openBlob(ctx, c, l, 1, repo, d, "")
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("reading the first MiB of %s: %v", d, err)
	}
	if gets := upstreamGETs(t, l, d); len(gets) != 0 {
		t.Fatalf("the fill ended before the kill, so this run tests nothing:%s", describeEntries(gets))
	}
	if err := l.Signal("master-1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	cutShort := blobResponse{Status: resp.StatusCode, Header: resp.Header, Body: append(first, rest...), Err: err}
	checkNeverCorrupt(t, "the GET cut by the kill", cutShort, d, size)
	if cutShort.complete() {
		t.Logf("the GET in flight during the kill completed: %s", cutShort)
	}

	eventually(t, waitLimit, "master-1 has exited after SIGKILL", func() bool {
		for _, s := range l.Status() {
			if s.Name == "master-1" {
				return !s.Alive
			}
		}
		return true
	})
	setFaults(t, l, lab.Faults{})
	if err := l.Start(ctx, "master-1"); err != nil {
		t.Fatal(err)
	}
	r := getBlob(ctx, c, l, 1, repo, d, "")
	checkNeverCorrupt(t, "GET after the restart", r, d, size)
	checkWhole(t, "GET after the restart", r, d, size)

	gets := upstreamGETs(t, l, d)
	if len(gets) != 2 {
		t.Fatalf("want 2 upstream GETs (the one the kill cut, then one after the restart), got:%s", describeEntries(gets))
	}
	if gets[0].Bytes >= size {
		t.Errorf("the upstream sent the whole blob before the kill, so this run tests nothing:%s", describeEntries(gets))
	}
	// The client had read 1 MiB, which the fill had written to its spool before it
	// let the client have it: the restarted master resumes from there at least.
	g := gets[1]
	off, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(g.Range, "bytes="), "-"), 10, 64)
	if !strings.HasPrefix(g.Range, "bytes=") || err != nil || off < int64(len(first)) || g.Status != http.StatusPartialContent || g.Aborted || g.Bytes != size-off {
		t.Fatalf("want the restarted master to resume from its spool file (bytes=N- with N >= %d, answered whole), got:%s", len(first), describeEntries(gets))
	}
	t.Logf("after the restart the master resumed from byte %d of its spool file", off)
}

// TestCacheRange checks Range requests, served from the store and from a running fill.
func TestCacheRange(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheRange, 1, 0)
	repo := lab.UpstreamPath + "/range"
	layers, size := seedBlobs(t, l, repo, "v1", 2, layerFile)
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	type span struct {
		rng        string
		start, end int64 // [start, end)
	}
	check := func(t *testing.T, d string, blob []byte, s span, r blobResponse) {
		t.Helper()
		want := fmt.Sprintf("bytes %d-%d/%d", s.start, s.end-1, size)
		if r.Status != http.StatusPartialContent || !r.complete() || r.Header.Get("Content-Range") != want {
			t.Errorf("Range %s of %s: want 206 with Content-Range %q, got %s", s.rng, d, want, r)
			return
		}
		if !bytes.Equal(r.Body, blob[s.start:s.end]) {
			t.Errorf("Range %s of %s: the body is not bytes [%d, %d) of the blob", s.rng, d, s.start, s.end)
		}
	}

	t.Run("from the store", func(t *testing.T) {
		d := layers[0]
		whole := getBlob(ctx, c, l, 1, repo, d, "")
		checkWhole(t, "GET", whole, d, size)
		eventually(t, waitLimit, d+" is served from the store", func() bool {
			hits := blobHits(t, l)
			r := getBlob(ctx, c, l, 1, repo, d, "bytes=0-0")
			return r.Err == nil && blobHits(t, l) > hits
		})
		for _, s := range []span{
			{"bytes=1000-99999", 1000, 100000},
			{"bytes=-500", size - 500, size},
			{"bytes=8000000-", 8000000, size},
		} {
			check(t, d, whole.Body, s, getBlob(ctx, c, l, 1, repo, d, s.rng))
		}
		if r := getBlob(ctx, c, l, 1, repo, d, fmt.Sprintf("bytes=%d-", size)); r.Status != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("Range past the end: want 416, got %s", r)
		}
		if gets := upstreamGETs(t, l, d); len(gets) != 1 {
			t.Errorf("want 1 upstream GET of %s, got:%s", d, describeEntries(gets))
		}
	})

	t.Run("during a fill", func(t *testing.T) {
		d := layers[1]
		setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
		mid := span{fmt.Sprintf("bytes=%d-%d", size/2, size/2+99999), size / 2, size/2 + 100000}
		tail := span{"bytes=-500", size - 500, size}
		var rMid, rTail blobResponse
		var atMid []lab.AccessEntry // the upstream's log when the middle range had arrived
		var atMidErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			rMid = getBlob(ctx, c, l, 1, repo, d, mid.rng)
			atMid, atMidErr = l.UpstreamLog()
		})
		wg.Go(func() { rTail = getBlob(ctx, c, l, 1, repo, d, tail.rng) })
		wg.Wait()
		if atMidErr != nil {
			t.Fatal(atMidErr)
		}
		for _, e := range lab.BlobGETs(atMid) {
			if e.Digest() == d {
				t.Errorf("the range in the middle was served only after the upstream had sent the whole blob, not during the fill:%s",
					describeEntries([]lab.AccessEntry{e}))
			}
		}
		whole := getBlob(ctx, c, l, 1, repo, d, "")
		checkWhole(t, "GET after the fill", whole, d, size)
		check(t, d, whole.Body, mid, rMid)
		check(t, d, whole.Body, tail, rTail)
		gets := upstreamGETs(t, l, d)
		if len(gets) != 1 || gets[0].Range != "" || gets[0].Bytes != size {
			t.Errorf("want Range requests on a miss to start one whole-blob fill: 1 upstream GET without Range, got:%s", describeEntries(gets))
		}
	})
}

// TestCacheCorruptStoredBlob flips one byte of a stored blob: the master must never
// serve it as a whole blob, must count the verify failure, and must fetch the blob
// again.
func TestCacheCorruptStoredBlob(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheCorrupt, 1, 0)
	repo := lab.UpstreamPath + "/corrupt"
	layers, size := seedBlobs(t, l, repo, "v1", 1, 2<<20)
	d := layers[0]
	c := labHTTP(t, l)
	ctx := ctxFor(t, 2*time.Minute)

	checkWhole(t, "first GET", getBlob(ctx, c, l, 1, repo, d, ""), d, size)
	hex := strings.TrimPrefix(d, "sha256:")
	path := filepath.Join(l.Dir, "master-1", "data", "hopless", "blobs", "sha256", hex[:2], hex)
	eventually(t, waitLimit, "the blob is stored at "+path, func() bool {
		fi, err := os.Stat(path)
		return err == nil && fi.Size() == size
	})
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, size/2); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, size/2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	r := getBlob(ctx, c, l, 1, repo, d, "")
	checkNeverCorrupt(t, "GET of the corrupted blob", r, d, size)
	t.Logf("GET of the corrupted blob: %s", r)
	for try := 1; !(r.Status == http.StatusOK && r.complete() && sha(r.Body) == d); try++ {
		if try > 3 {
			t.Fatalf("after 3 retries the master still does not serve %s: %s", d, r)
		}
		r = getBlob(ctx, c, l, 1, repo, d, "")
		checkNeverCorrupt(t, fmt.Sprintf("retry %d", try), r, d, size)
	}
	if n := metric(t, l, 1, "hopless_registryd_verify_failures_total", map[string]string{"where": "store"}); n < 1 {
		t.Errorf(`hopless_registryd_verify_failures_total{where="store"} is %v after serving a corrupted blob`, n)
	}
	if gets := upstreamGETs(t, l, d); len(gets) != 2 {
		t.Errorf("want 2 upstream GETs of %s (the first fill and the refetch of the corrupted copy), got:%s", d, describeEntries(gets))
	}
}

func tagTTL(ttl string) func(*lab.Options) {
	return func(o *lab.Options) { o.Registryd.TagTTL = ttl }
}

// TestCacheTags checks tag caching: one upstream lookup for concurrent callers, the
// cached digest within the TTL, the new one after it, and the last known one when
// the upstream is down.
func TestCacheTags(t *testing.T) {
	t.Parallel()
	repo := lab.UpstreamPath + "/tags"
	name := localName(repo)
	get := func(t *testing.T, l *lab.Lab, c *http.Client) manifestResponse {
		t.Helper()
		m, err := fetchManifest(ctxFor(t, time.Minute), c, l, 1, name, "v1", "")
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != http.StatusOK || m.Digest == "" || sha(m.Body) != m.Digest {
			t.Fatalf("GET %s:v1: want 200 with a body that hashes to its Docker-Content-Digest, got %s", name, m)
		}
		return m
	}

	// The labs of the subtests run one after the other in the same slot.
	t.Run("within the TTL", func(t *testing.T) {
		l := upLab(t, slotCacheTags, 1, 0, tagTTL("1h"))
		c := labHTTP(t, l)
		v1 := seed(t, l, repo, "v1", 1, 4096)
		since := len(upstreamLog(t, l))
		ctx := ctxFor(t, time.Minute)
		res := make([]manifestResponse, 10)
		var wg sync.WaitGroup
		for i := range res {
			wg.Go(func() {
				m, err := fetchManifest(ctx, c, l, 1, name, "v1", "")
				if err != nil {
					t.Error(err)
				}
				res[i] = m
			})
		}
		wg.Wait()
		for i, m := range res {
			if m.Status != http.StatusOK || m.Digest != v1.Digest {
				t.Errorf("client %d: want 200 with digest %s, got %s", i, v1.Digest, m)
			}
		}
		if reqs := upstreamManifestReads(t, l, since, repo, "v1"); len(reqs) != 1 {
			t.Fatalf("10 concurrent GETs of tag v1 made %d upstream requests for the tag, want 1:%s", len(reqs), describeEntries(reqs))
		}

		v2 := seed(t, l, repo, "v1", 1, 4096)
		if v2.Digest == v1.Digest {
			t.Fatalf("re-seeding gave the same digest %s", v1.Digest)
		}
		since = len(upstreamLog(t, l))
		if m := get(t, l, c); m.Digest != v1.Digest {
			t.Errorf("within the 1h TTL the tag moved to %s; want the cached %s", m.Digest, v1.Digest)
		}
		if reqs := upstreamManifestReads(t, l, since, repo, "v1"); len(reqs) != 0 {
			t.Errorf("within the TTL the upstream was asked for the tag again:%s", describeEntries(reqs))
		}
	})

	t.Run("after the TTL and stale if the upstream is down", func(t *testing.T) {
		l := upLab(t, slotCacheTags, 1, 0, tagTTL("2s"))
		c := labHTTP(t, l)
		v1 := seed(t, l, repo, "v1", 1, 4096)
		if m := get(t, l, c); m.Digest != v1.Digest {
			t.Fatalf("want %s, got %s", v1.Digest, m)
		}
		v2 := seed(t, l, repo, "v1", 1, 4096)
		eventually(t, waitLimit, "the tag moves to the re-seeded "+v2.Digest+" after the TTL", func() bool {
			m := get(t, l, c)
			if m.Digest != v1.Digest && m.Digest != v2.Digest {
				t.Fatalf("the tag resolved to %s, neither the old %s nor the new %s", m.Digest, v1.Digest, v2.Digest)
			}
			return m.Digest == v2.Digest
		})

		if err := l.Stop("upstream"); err != nil {
			t.Fatal(err)
		}
		const staleMsg = "serving stale"
		eventually(t, waitLimit, "master-1 logs that it served a stale tag", func() bool {
			if m := get(t, l, c); m.Digest != v2.Digest {
				t.Fatalf("with the upstream down the tag resolved to %s, want the last known %s", m.Digest, v2.Digest)
			}
			return len(masterLogLines(t, l, 1, staleMsg)) > 0
		})
		rec := masterLogLines(t, l, 1, staleMsg)[0]
		if rec["digest"] != v2.Digest || rec["tag"] != "v1" {
			t.Errorf("the stale-tag log line names the wrong tag or digest: %v", rec)
		}
		if n := metric(t, l, 1, "hopless_registryd_stale_served_total", nil); n < 1 {
			t.Errorf("hopless_registryd_stale_served_total is %v after serving a stale tag", n)
		}
	})
}

// TestCacheManifests checks how names and ns pick the upstream, and that a manifest
// fetched by digest is immutable: served from the cache after the upstream deleted
// it, and with the upstream stopped.
func TestCacheManifests(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheManifests, 1, 0)
	repo := lab.UpstreamPath + "/manifests"
	name := localName(repo)
	img := seed(t, l, repo, "v1", 1, 4096)
	c := labHTTP(t, l)
	fetch := func(t *testing.T, name, ref, query string) manifestResponse {
		t.Helper()
		m, err := fetchManifest(ctxFor(t, time.Minute), c, l, 1, name, ref, query)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	want := func(t *testing.T, m manifestResponse) {
		t.Helper()
		if m.Status != http.StatusOK || m.Digest != img.Digest || sha(m.Body) != img.Digest {
			t.Errorf("want 200 with manifest %s, got %s", img.Digest, m)
		}
	}

	t.Run("ns of the image host", func(t *testing.T) {
		want(t, fetch(t, name, "v1", "?ns="+l.ImageHost))
	})
	t.Run("ns of another registry is denied", func(t *testing.T) {
		before := len(upstreamLog(t, l))
		m := fetch(t, name, "v1", "?ns=docker.io")
		if m.Status != http.StatusForbidden || m.registryErrorCode() != "DENIED" {
			t.Errorf("ns=docker.io: want 403 DENIED, got %s", m)
		}
		if after := upstreamLog(t, l); len(after) != before {
			t.Errorf("ns=docker.io reached the upstream:%s", describeEntries(after[before:]))
		}
	})
	t.Run("unaliased upstream name is not configured", func(t *testing.T) {
		before := len(upstreamLog(t, l))
		if m := fetch(t, repo, "v1", ""); m.Status != http.StatusNotFound || m.registryErrorCode() != "NAME_UNKNOWN" {
			t.Errorf("%s: want 404 NAME_UNKNOWN, got %s", repo, m)
		}
		if after := upstreamLog(t, l); len(after) != before {
			t.Errorf("a name outside the alias reached the upstream:%s", describeEntries(after[before:]))
		}
	})
	t.Run("by digest is immutable", func(t *testing.T) {
		first := fetch(t, name, img.Digest, "")
		want(t, first)
		since := len(upstreamLog(t, l))

		// The upstream forgets the manifest; the master's copy stays.
		del, err := http.NewRequestWithContext(ctxFor(t, time.Minute), http.MethodDelete, "https://"+l.Upstream+"/v2/"+repo+"/manifests/"+img.Digest, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(del)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("deleting the manifest at the upstream: %s", resp.Status)
		}
		again := fetch(t, name, img.Digest, "")
		want(t, again)
		if !bytes.Equal(again.Body, first.Body) {
			t.Errorf("the manifest's bytes changed")
		}
		if reqs := upstreamManifestReads(t, l, since, repo, img.Digest); len(reqs) != 0 {
			t.Errorf("a cached manifest by digest was asked of the upstream again:%s", describeEntries(reqs))
		}

		if err := l.Stop("upstream"); err != nil {
			t.Fatal(err)
		}
		want(t, fetch(t, name, img.Digest, ""))
	})
}

// TestCacheIndexPull pulls a freshly seeded multi-arch index with crictl through the
// masters: the node ends up with the index digest, and each layer of the image for
// the node's platform left the upstream once.
func TestCacheIndexPull(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotCacheIndexPull, 2, 1)
	repo := lab.UpstreamPath + "/multiarch"
	img, err := l.Seed(ctxFor(t, time.Minute), repo, "v1", 2, 1<<20, true)
	if err != nil {
		t.Fatalf("seed: %v", err)
	}
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	up := blobGETsUpstream(t, l)
	for _, d := range img.Layers {
		if up[d] != 1 {
			t.Errorf("layer %s: %d upstream GETs, want 1: %s", d, up[d], describe(up))
		}
	}
	if served := servedBy(t, l); len(served) == 0 {
		t.Errorf("no master logged a blob GET for the pull")
	}
}
