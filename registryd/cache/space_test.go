package cache_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/space"
	"github.com/hopless/hopless/test/registrytest"
)

// onTmpfs puts the storage root (and spool) of a configuration on a new tmpfs of
// size, with storage.min_free minFree, and returns the tmpfs.
func onTmpfs(t *testing.T, size string, minFree conf.Space) (string, func(*conf.Registryd)) {
	dir := registrytest.Tmpfs(t, size)
	return dir, func(c *conf.Registryd) {
		c.Storage.Root = filepath.Join(dir, "root")
		c.Storage.Spool = filepath.Join(dir, "root", conf.DefaultSpoolDir)
		c.Storage.MinFree = minFree
	}
}

// takeSpace writes a file of n bytes on dir's filesystem, as another user of the disk
// would; the returned func removes it, and so does the end of the test, before the
// server started earlier stops and writes its index.
func takeSpace(t *testing.T, dir string, n int64) func() {
	t.Helper()
	p := filepath.Join(dir, "filler")
	if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
		t.Fatalf("filler of %d bytes: %v", n, err)
	}
	remove := func() {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	}
	t.Cleanup(remove)
	return remove
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	u, err := space.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return u.Avail
}

func spoolEntries(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "root", conf.DefaultSpoolDir, "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (f *fixture) readyz(t *testing.T) string {
	t.Helper()
	resp, body := f.get(t, http.MethodGet, "https://"+f.host+"/readyz", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %d %s, want 200: a master that serves its cache stays ready", resp.StatusCode, body)
	}
	return string(body)
}

// TestPassThroughBelowFloor takes the storage's filesystem below storage.min_free:
// misses are streamed from the upstream whole and verified (GET, HEAD, Range), one
// upstream GET each, and nothing is cached or spooled; /readyz stays 200 and says
// why; once the space is back, the next miss is cached again.
func TestPassThroughBelowFloor(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 200<<10, 4)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	blobs := blobBytes(t, img)
	layers := registrytest.Blobs(t, img)[1:]
	dir, onDisk := onTmpfs(t, "8m", conf.Space{Percent: 50})
	f := start(t, up, onDisk)
	free := takeSpace(t, dir, freeBytes(t, dir)-3<<20)

	tests := []struct {
		method, rng string
		status      int
		want        func(b []byte) []byte
	}{
		{http.MethodGet, "", http.StatusOK, func(b []byte) []byte { return b }},
		{http.MethodHead, "", http.StatusOK, func([]byte) []byte { return nil }},
		{http.MethodGet, "bytes=1000-70999", http.StatusPartialContent, func(b []byte) []byte { return b[1000:71000] }},
		{http.MethodGet, "bytes=-100", http.StatusPartialContent, func(b []byte) []byte { return b[len(b)-100:] }},
	}
	for i, tt := range tests {
		d := layers[i]
		header := http.Header{}
		if tt.rng != "" {
			header.Set("Range", tt.rng)
		}
		for try := 1; try <= 2; try++ {
			what := fmt.Sprintf("%s %q of layer %d, try %d", tt.method, tt.rng, i, try)
			resp, body := f.get(t, tt.method, f.repo+"/blobs/"+d.String(), header)
			if resp.StatusCode != tt.status || !bytes.Equal(body, tt.want(blobs[d])) {
				t.Fatalf("%s: %d with %d bytes, want %d with the right %d", what, resp.StatusCode, len(body), tt.status, len(tt.want(blobs[d])))
			}
			if got := resp.Header.Get("Hopless-Cache"); got != "miss" {
				t.Errorf("%s: Hopless-Cache %q, want miss", what, got)
			}
			if got := resp.Header.Get("Content-Length"); tt.method == http.MethodGet && got != strconv.Itoa(len(body)) {
				t.Errorf("%s: Content-Length %s for %d bytes", what, got, len(body))
			}
			// Not cached: every request is one upstream GET of its own.
			if n := up.Count(registrytest.BlobGET(d)); n != try {
				t.Errorf("%s: %d upstream GETs, want %d", what, n, try)
			}
		}
	}
	if got := spoolEntries(t, dir); len(got) != 0 {
		t.Errorf("spool files while below the floor: %v", got)
	}
	if n := counter(t, f.metrics.PassThrough.WithLabelValues("ok")); n != float64(2*len(tests)) {
		t.Errorf("pass-through responses = %v, want %d", n, 2*len(tests))
	}
	if body := f.readyz(t); !strings.Contains(body, "below storage.min_free 50%") {
		t.Errorf("/readyz below the floor: %q, want the reason", body)
	}
	if v := gauge(t, f.metrics.StorageWritable); v != 0 {
		t.Errorf("storage_writable = %v below the floor, want 0", v)
	}

	free()
	d := layers[0]
	for try := 1; try <= 2; try++ {
		resp, body := f.get(t, http.MethodGet, f.repo+"/blobs/"+d.String(), nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blobs[d]) {
			t.Fatalf("GET with room again, try %d: %d with %d bytes", try, resp.StatusCode, len(body))
		}
		f.waitFills(t)
	}
	if n := up.Count(registrytest.BlobGET(d)); n != 3 {
		t.Errorf("upstream GETs of the layer = %d, want 3: two streamed through, then one fill", n)
	}
	if body := f.readyz(t); body != "ok\n" {
		t.Errorf("/readyz with room again: %q, want ok", body)
	}
	if v := gauge(t, f.metrics.StorageWritable); v != 1 {
		t.Errorf("storage_writable = %v with room again, want 1", v)
	}
}

// TestPassThroughTooLarge asks for a blob that does not fit in the free space even
// after eviction: the fill is refused before any client hears the size, the client
// gets the blob whole from the upstream, the spool stays clean, the next request
// streams it at once (no refused fill first), and cached content is still a hit.
func TestPassThroughTooLarge(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	small := registrytest.Image(t, 64<<10, 1)
	big := registrytest.Image(t, 6<<20, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "small", small)
	up.Push(t, registrytest.UpstreamPath+"/install", "big", big)
	smallLayer := registrytest.Blobs(t, small)[1]
	bigLayer := registrytest.Blobs(t, big)[1]
	smallBytes, bigBytes := blobBytes(t, small)[smallLayer], blobBytes(t, big)[bigLayer]
	dir, onDisk := onTmpfs(t, "8m", conf.Space{Bytes: 1 << 20})
	f := start(t, up, onDisk)

	resp, body := f.get(t, http.MethodGet, f.repo+"/blobs/"+smallLayer.String(), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, smallBytes) {
		t.Fatalf("small blob: %d, %d bytes", resp.StatusCode, len(body))
	}
	f.waitFills(t)
	// Leave less room than the big blob needs; the small blob is evictable, but
	// evicting it would not be enough, so it must stay.
	takeSpace(t, dir, freeBytes(t, dir)-4<<20)

	for try := 1; try <= 2; try++ {
		resp, body := f.get(t, http.MethodGet, f.repo+"/blobs/"+bigLayer.String(), nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, bigBytes) {
			t.Fatalf("big blob, try %d: %d with %d bytes, want all %d", try, resp.StatusCode, len(body), len(bigBytes))
		}
	}
	// The first request's fill was refused after the upstream's headers; the second
	// streams at once.
	if n := up.Count(registrytest.BlobGET(bigLayer)); n != 3 {
		t.Errorf("upstream GETs of the big blob = %d, want 3 (a refused fill and a stream, then a stream)", n)
	}
	if got := spoolEntries(t, dir); len(got) != 0 {
		t.Errorf("spool files after a refused fill: %v", got)
	}
	if body := f.readyz(t); !strings.Contains(body, "the last write failed for lack of space") || !strings.Contains(body, bigLayer.String()) {
		t.Errorf("/readyz after a refusal: %q, want the reason", body)
	}
	before := up.Count(registrytest.BlobGET(smallLayer))
	resp, body = f.get(t, http.MethodGet, f.repo+"/blobs/"+smallLayer.String(), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, smallBytes) || resp.Header.Get("Hopless-Cache") != "hit" {
		t.Errorf("cached blob while the big one cannot be cached: %d, %d bytes, Hopless-Cache %q; want a hit",
			resp.StatusCode, len(body), resp.Header.Get("Hopless-Cache"))
	}
	if up.Count(registrytest.BlobGET(smallLayer)) != before {
		t.Error("a cached blob went to the upstream")
	}
}

// TestServedWhenStoringFails fills the disk to the last byte: a manifest and a tag
// that the upstream answers are served although storing them fails, and /readyz says
// the last write failed.
func TestServedWhenStoringFails(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	want := registrytest.Digest(t, img)
	dir, onDisk := onTmpfs(t, "2m", conf.Space{})
	f := start(t, up, onDisk)
	takeSpace(t, dir, freeBytes(t, dir))

	for _, ref := range []string{"v1", want.String()} {
		resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/"+ref, acceptAll)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
			t.Fatalf("manifest %s on a full disk: %d %s, want 200 with %s", ref, resp.StatusCode, body, want)
		}
	}
	if !strings.Contains(f.log.String(), "serving a manifest that could not be cached") ||
		!strings.Contains(f.log.String(), "serving a tag that could not be cached") {
		t.Errorf("log does not say that the manifest and the tag could not be cached:\n%s", f.log)
	}
	if body := f.readyz(t); !strings.Contains(body, "the last write failed for lack of space") {
		t.Errorf("/readyz on a full disk after a failed write: %q", body)
	}
	layer := registrytest.Blobs(t, img)[1]
	resp, body := f.get(t, http.MethodGet, f.repo+"/blobs/"+layer.String(), nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, blobBytes(t, img)[layer]) {
		t.Errorf("blob on a full disk: %d with %d bytes, want it streamed whole", resp.StatusCode, len(body))
	}
}
