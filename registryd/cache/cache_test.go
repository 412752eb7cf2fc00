package cache_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/server"
	"github.com/hopless/hopless/test/registrytest"
)

// acceptAll is the Accept header of a client that takes every manifest type.
var acceptAll = http.Header{"Accept": {strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")}}

// clock is time.Now moved forward by Advance.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// fixture is a running registryd in front of one upstream.
type fixture struct {
	up      *registrytest.Upstream
	env     *registrytest.Env
	metrics *metrics.Metrics
	log     *registrytest.LogBuffer
	clock   *clock
	client  *http.Client
	// repo is the URL of the repository system/deckhouse/install.
	repo string
	host string
	// apiToken is the API token; the API is on.
	apiToken string
}

// start runs a server for the test; change, if not nil, edits its configuration.
func start(t *testing.T, up *registrytest.Upstream, change func(*conf.Registryd)) *fixture {
	t.Helper()
	env := registrytest.NewEnv(t, "", up)
	f := &fixture{up: up, env: env, metrics: metrics.New(), clock: &clock{}, apiToken: "api-token-for-tests"}
	env.Config.API.TokenFile = filepath.Join(env.Dir, "api-token")
	registrytest.WriteSecret(t, env.Config.API.TokenFile, f.apiToken)
	if change != nil {
		change(env.Config)
	}
	l, logs := registrytest.Logger(t)
	f.log = logs
	s, err := server.New(t.Context(), env.Config, server.WithLogger(l), server.WithMetrics(f.metrics), server.WithClock(f.clock.Now))
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	registrytest.Start(t, s)
	f.host = s.Addr().String()
	f.repo = "https://" + f.host + "/v2/system/deckhouse/install"
	f.client = env.Cert.Client(t)
	return f
}

func (f *fixture) get(t *testing.T, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	return registrytest.Do(t, f.client, method, url, header)
}

// waitFills waits until no blob fill runs, so that what was filled is in the store.
func (f *fixture) waitFills(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for gauge(t, f.metrics.FillsInFlight) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("fills still running after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func blobBytes(t *testing.T, img v1.Image) map[v1.Hash][]byte {
	t.Helper()
	out := map[v1.Hash][]byte{}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	out[cfg] = raw
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[d] = b
	}
	return out
}

func sum(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func TestPullByTagThroughAlias(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 64<<10, 2)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	f := start(t, up, nil)

	ref, err := name.ParseReference(f.host + "/system/deckhouse/install:v1")
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref, remote.WithTransport(f.client.Transport), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	registrytest.Verify(t, pulled)
	if got, want := registrytest.Digest(t, pulled), registrytest.Digest(t, img); got != want {
		t.Errorf("pulled %s, want %s", got, want)
	}
	for _, r := range up.Requests() {
		if r.Path != "/v2/" && !strings.HasPrefix(r.Path, "/v2/"+registrytest.UpstreamPath+"/install/") {
			t.Errorf("upstream request %s %s is outside the aliased repository", r.Method, r.Path)
		}
	}
}

// TestBlobServing checks GET, HEAD and Range requests for a blob, first while it is
// filled from the upstream, then from the store.
func TestBlobServing(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	// Each case gets a blob of its own; 200 KiB spans several of the fill's 64 KiB
	// release steps.
	img := registrytest.Image(t, 200<<10, 6)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	blobs := blobBytes(t, img)
	layers := registrytest.Blobs(t, img)[1:]
	f := start(t, up, nil)

	tests := []struct {
		name       string
		method     string
		rng        string
		wantStatus int
		// want is the expected body and Content-Range, given the blob.
		want func(b []byte) ([]byte, string)
	}{
		{
			name: "GET", method: http.MethodGet, wantStatus: http.StatusOK,
			want: func(b []byte) ([]byte, string) { return b, "" },
		},
		{
			name: "HEAD", method: http.MethodHead, wantStatus: http.StatusOK,
			want: func(b []byte) ([]byte, string) { return nil, "" },
		},
		{
			name: "Range inside", method: http.MethodGet, rng: "bytes=1000-70999", wantStatus: http.StatusPartialContent,
			want: func(b []byte) ([]byte, string) {
				return b[1000:71000], fmt.Sprintf("bytes 1000-70999/%d", len(b))
			},
		},
		{
			name: "Range open-ended", method: http.MethodGet, rng: "bytes=150000-", wantStatus: http.StatusPartialContent,
			want: func(b []byte) ([]byte, string) {
				return b[150000:], fmt.Sprintf("bytes 150000-%d/%d", len(b)-1, len(b))
			},
		},
		{
			name: "Range suffix", method: http.MethodGet, rng: "bytes=-100", wantStatus: http.StatusPartialContent,
			want: func(b []byte) ([]byte, string) {
				return b[len(b)-100:], fmt.Sprintf("bytes %d-%d/%d", len(b)-100, len(b)-1, len(b))
			},
		},
		{
			name: "Range to the int64 limit", method: http.MethodGet, rng: "bytes=1000-9223372036854775807", wantStatus: http.StatusPartialContent,
			want: func(b []byte) ([]byte, string) {
				return b[1000:], fmt.Sprintf("bytes 1000-%d/%d", len(b)-1, len(b))
			},
		},
	}
	// Not parallel: a case waits for all fills to end before its hit.
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := layers[i]
			blob := blobs[d]
			wantBody, wantRange := tt.want(blob)
			url := f.repo + "/blobs/" + d.String()
			header := http.Header{}
			if tt.rng != "" {
				header.Set("Range", tt.rng)
			}
			check := func(what string) {
				t.Helper()
				resp, body := f.get(t, tt.method, url, header)
				if resp.StatusCode != tt.wantStatus {
					t.Fatalf("%s: %d %s, want %d", what, resp.StatusCode, body, tt.wantStatus)
				}
				if !bytes.Equal(body, wantBody) {
					t.Errorf("%s: %d bytes that differ from the %d expected", what, len(body), len(wantBody))
				}
				if got := resp.Header.Get("Content-Range"); got != wantRange {
					t.Errorf("%s: Content-Range %q, want %q", what, got, wantRange)
				}
				wantLen := len(wantBody)
				if tt.method == http.MethodHead {
					wantLen = len(blob)
				}
				if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(wantLen) {
					t.Errorf("%s: Content-Length %s, want %d", what, got, wantLen)
				}
				if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
					t.Errorf("%s: Docker-Content-Digest %q, want %s", what, got, d)
				}
			}
			misses := counter(t, f.metrics.CacheMisses.WithLabelValues("blob"))
			check("miss")
			if got := counter(t, f.metrics.CacheMisses.WithLabelValues("blob")); got != misses+1 {
				t.Errorf("blob cache misses went from %v to %v, want the first request to be a miss", misses, got)
			}
			// Make sure the fill has committed, whatever the first request read.
			if resp, body := f.get(t, http.MethodGet, url, nil); resp.StatusCode != http.StatusOK || sum(body) != d.String() {
				t.Fatalf("full GET after the miss: %d, %d bytes", resp.StatusCode, len(body))
			}
			f.waitFills(t)
			hits := counter(t, f.metrics.CacheHits.WithLabelValues("blob"))
			check("hit")
			if got := counter(t, f.metrics.CacheHits.WithLabelValues("blob")); got != hits+1 {
				t.Errorf("blob cache hits went from %v to %v, want the last request to be a hit", hits, got)
			}
			if n := f.up.Count(registrytest.BlobGET(d)); n != 1 {
				t.Errorf("%d upstream GETs of the blob, want 1", n)
			}
		})
	}
}

// TestConcurrentMiss sends 16 GETs for one uncached 4 MiB blob at once: the
// upstream sees one GET and every client gets the verified bytes.
func TestConcurrentMiss(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 4<<20, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	d := registrytest.Blobs(t, img)[1]
	// Holding the upstream's answer makes all 16 requests join the running fill.
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-r.Context().Done():
			}
		}
		return false
	})
	f := start(t, up, nil)

	const clients = 16
	sums := make([]string, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			resp, err := f.client.Get(f.repo + "/blobs/" + d.String())
			if err != nil {
				t.Errorf("client %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			h := sha256.New()
			if _, err := io.Copy(h, resp.Body); err != nil {
				t.Errorf("client %d: reading: %v", i, err)
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Errorf("client %d: status %d", i, resp.StatusCode)
			}
			sums[i] = fmt.Sprintf("sha256:%x", h.Sum(nil))
		})
	}
	wg.Wait()
	for i, s := range sums {
		if s != d.String() {
			t.Errorf("client %d got content %s, want %s", i, s, d)
		}
	}
	if n := up.Count(registrytest.BlobGET(d)); n != 1 {
		t.Errorf("%d concurrent misses made %d upstream GETs, want 1", clients, n)
	}
}

// TestManifestByDigest fetches a manifest by digest once, then serves it with the
// upstream gone.
func TestManifestByDigest(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	d := registrytest.Digest(t, img)
	f := start(t, up, nil)
	url := f.repo + "/manifests/" + d.String()

	check := func(what, method string) {
		t.Helper()
		resp, body := f.get(t, method, url, acceptAll)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", what, resp.StatusCode, body)
		}
		if method == http.MethodGet && !bytes.Equal(body, raw) {
			t.Errorf("%s: body differs from the pushed manifest", what)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
			t.Errorf("%s: Docker-Content-Digest %q, want %s", what, got, d)
		}
	}
	check("first GET", http.MethodGet)
	check("second GET", http.MethodGet)
	check("HEAD", http.MethodHead)
	if n := up.Count(registrytest.ManifestFetch(d.String())); n != 1 {
		t.Errorf("the upstream was asked for the manifest %d times, want 1", n)
	}
	up.Close()
	check("GET with the upstream stopped", http.MethodGet)
}

// TestTagTTL checks that a tag is asked of the upstream at most once per tag_ttl,
// whatever the concurrency, and that a stale tag is served when the upstream fails.
func TestTagTTL(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img1, img2 := registrytest.Image(t, 1024, 1), registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img1)
	f := start(t, up, nil)
	ttl := f.env.Config.Cache.TagTTL.Duration
	tagAsks := func() int { return up.Count(registrytest.ManifestFetch("v1")) }

	pull := func(what string, n int, want v1.Hash) {
		t.Helper()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				resp, err := f.client.Do(newRequest(t, f.repo+"/manifests/v1"))
				if err != nil {
					t.Errorf("%s: %v", what, err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
					t.Errorf("%s: %d %s digest %q, want 200 with %s", what, resp.StatusCode, body, resp.Header.Get("Docker-Content-Digest"), want)
				}
			})
		}
		wg.Wait()
	}

	pull("10 cold requests", 10, registrytest.Digest(t, img1))
	if n := tagAsks(); n != 1 {
		t.Fatalf("10 concurrent requests asked the upstream for the tag %d times, want 1", n)
	}
	f.clock.Advance(ttl / 2)
	pull("10 requests within tag_ttl", 10, registrytest.Digest(t, img1))
	if n := tagAsks(); n != 1 {
		t.Errorf("requests within tag_ttl asked the upstream %d times in all, want 1", n)
	}

	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img2)
	f.clock.Advance(ttl)
	pull("10 requests after tag_ttl", 10, registrytest.Digest(t, img2))
	if n := tagAsks(); n != 2 {
		t.Errorf("after tag_ttl the upstream was asked %d times in all, want 2", n)
	}

	up.Fail(http.StatusServiceUnavailable)
	f.clock.Advance(ttl + time.Second)
	pull("upstream answering 503", 3, registrytest.Digest(t, img2))
	if !strings.Contains(f.log.String(), "serving stale") {
		t.Errorf("no log line says the stale tag was served:\n%s", f.log.String())
	}
	if got := counter(t, f.metrics.StaleServed.WithLabelValues("error")); got < 1 {
		t.Errorf("stale tags served = %v, want >= 1", got)
	}

	up.Fail(0)
	up.Close()
	f.clock.Advance(ttl + time.Second)
	stale := counter(t, f.metrics.StaleServed.WithLabelValues("error"))
	pull("upstream stopped", 1, registrytest.Digest(t, img2))
	if got := counter(t, f.metrics.StaleServed.WithLabelValues("error")); got != stale+1 {
		t.Errorf("stale tags served went from %v to %v, want one more", stale, got)
	}
	resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/never-cached", acceptAll)
	if resp.StatusCode != http.StatusGatewayTimeout || registrytest.Errors(t, body)[0].Code != "UNAVAILABLE" ||
		resp.Header.Get("Hopless-Upstream-Error") != "upstream="+up.Host+"; reason=unreachable" {
		t.Errorf("an uncached tag with the upstream stopped: %d %s (%q), want 504 UNAVAILABLE as the upstream's failure",
			resp.StatusCode, body, resp.Header.Get("Hopless-Upstream-Error"))
	}
}

func newRequest(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = acceptAll.Clone()
	return req
}

func TestUpstreamNotFound(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", registrytest.Image(t, 1024, 1))
	f := start(t, up, nil)
	unknown := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name, method, path, code string
	}{
		{"unknown tag", http.MethodGet, "install/manifests/v404", "MANIFEST_UNKNOWN"},
		{"unknown manifest digest", http.MethodGet, "install/manifests/" + unknown, "MANIFEST_UNKNOWN"},
		{"unknown blob", http.MethodGet, "install/blobs/" + unknown, "BLOB_UNKNOWN"},
		{"unknown blob HEAD", http.MethodHead, "install/blobs/" + unknown, ""},
		{"unknown repository", http.MethodGet, "nothing/manifests/v1", "MANIFEST_UNKNOWN"},
		{"unknown repository blob", http.MethodGet, "nothing/blobs/" + unknown, "BLOB_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, body := f.get(t, tt.method, "https://"+f.host+"/v2/system/deckhouse/"+tt.path, acceptAll)
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("%d %s, want 404", resp.StatusCode, body)
			}
			if tt.code != "" {
				if errs := registrytest.Errors(t, body); errs[0].Code != tt.code {
					t.Errorf("error %+v, want %s", errs[0], tt.code)
				}
			}
			for _, h := range []string{"Docker-Content-Digest", "Cache-Control", "Etag"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("the error response has %s: %s", h, v)
				}
			}
		})
	}
}

func TestManifestTooLarge(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 16, 12)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	if raw, err := img.RawManifest(); err != nil || len(raw) <= 1024 {
		t.Fatalf("the test manifest has %d bytes (%v), want more than 1024", len(raw), err)
	}
	f := start(t, up, func(c *conf.Registryd) { c.Cache.MaxManifestBytes = 1024 })
	for _, ref := range []string{"v1", registrytest.Digest(t, img).String()} {
		resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/"+ref, acceptAll)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("manifest %s: %d %s, want 400", ref, resp.StatusCode, body)
			continue
		}
		if e := registrytest.Errors(t, body)[0]; e.Code != "MANIFEST_INVALID" || !strings.Contains(e.Message, "exceeds 1024 bytes") {
			t.Errorf("manifest %s: error %+v, want MANIFEST_INVALID saying it exceeds 1024 bytes", ref, e)
		}
	}
}

// TestPrefetchIndex prefetches a two-platform index through the API, then pulls
// every platform with the upstream stopped.
func TestPrefetchIndex(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	idx := registrytest.Index(t, 32<<10, 2, "linux/amd64", "linux/arm64")
	up.PushIndex(t, registrytest.UpstreamPath+"/install", "v1", idx)
	f := start(t, up, nil)

	roots := x509.NewCertPool()
	roots.AddCert(f.env.Cert.X509)
	c := api.NewClient("https://"+f.host, f.apiToken, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	job, err := c.Prefetch(t.Context(), []string{"system/deckhouse/install:v1"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !job.Done {
		if time.Now().After(deadline) {
			t.Fatalf("prefetch job not done after 30s: %+v", job.Images[0])
		}
		time.Sleep(20 * time.Millisecond)
		if job, err = c.PrefetchStatus(t.Context(), job.ID); err != nil {
			t.Fatal(err)
		}
	}
	p := job.Images[0]
	// An index, two manifests; two configs and four layers.
	if p.Error != "" || !p.Done || p.Manifests != 3 || p.Blobs != 6 || p.BlobsDone != 6 || p.Bytes == 0 || p.BytesDone != p.Bytes {
		t.Fatalf("prefetch progress %+v, want 3 manifests and 6 blobs done", p)
	}
	f.waitFills(t)

	up.Close()
	ref, err := name.ParseReference(f.host + "/system/deckhouse/install:v1")
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Index(ref, remote.WithTransport(f.client.Transport), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pulling the index with the upstream stopped: %v", err)
	}
	im, err := pulled.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("the index has %d manifests, want 2", len(im.Manifests))
	}
	for _, m := range im.Manifests {
		img, err := pulled.Image(m.Digest)
		if err != nil {
			t.Fatalf("platform %s: %v", m.Platform, err)
		}
		registrytest.Verify(t, img)
	}
}
