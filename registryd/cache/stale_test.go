package cache_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/test/registrytest"
)

// tagAsks counts the upstream's HEAD and GET requests for manifests/ref of the
// upstream repository registrytest.UpstreamPath/repo.
func tagAsks(up *registrytest.Upstream, repo, ref string) int {
	path := "/v2/" + registrytest.UpstreamPath + "/" + repo + "/manifests/" + ref
	return up.Count(func(r registrytest.Request) bool {
		return (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Path == path
	})
}

// asked counts the upstream's requests other than GET /v2/, which a client sends
// again after a failure.
func asked(up *registrytest.Upstream) int {
	return up.Count(func(r registrytest.Request) bool { return r.Path != "/v2/" })
}

// wantManifest fails unless resp is a 200 with manifest img whose Hopless-Cache is
// cache ("" for none).
func wantManifest(t *testing.T, what string, resp *http.Response, body []byte, img v1.Image, cache string) {
	t.Helper()
	d := registrytest.Digest(t, img)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d.String() || sum(body) != d.String() {
		t.Errorf("%s: %d, digest %q: %.200s; want 200 with %s", what, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), body, d)
	}
	if got := resp.Header.Get("Hopless-Cache"); got != cache {
		t.Errorf("%s: Hopless-Cache %q, want %q", what, got, cache)
	}
}

func (f *fixture) stale(t *testing.T, kind string) float64 {
	t.Helper()
	return counter(t, f.metrics.StaleServed.WithLabelValues(kind))
}

// TestStaleAfter hangs the upstream's answer to a tag's revalidation: every request
// is served the last known answer once the revalidation has run for stale_after,
// one revalidation serves them all, and it goes on after they all have their answer.
func TestStaleAfter(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img1, img2 := registrytest.Image(t, 1024, 1), registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img1)
	f := start(t, up, func(c *conf.Registryd) { c.Cache.StaleAfter.Duration = 10 * time.Millisecond })
	resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "cold", resp, body, img1, "")

	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img2)
	d2 := registrytest.Digest(t, img2).String()
	arrived, fetched := make(chan struct{}, 16), make(chan struct{}, 1)
	release := make(chan struct{})
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.HasSuffix(r.URL.Path, "/manifests/v1"):
			arrived <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case strings.HasSuffix(r.URL.Path, "/manifests/"+d2):
			select {
			case fetched <- struct{}{}:
			default:
			}
		}
		return false
	})
	f.clock.Advance(f.env.Config.Cache.TagTTL.Duration + time.Second)
	before := tagAsks(up, "install", "v1")
	for i := range 5 {
		resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/v1", acceptAll)
		wantManifest(t, "while the revalidation hangs", resp, body, img1, "stale")
		if i == 0 {
			<-arrived
		}
	}
	if n := tagAsks(up, "install", "v1") - before; n != 1 {
		t.Errorf("5 requests while the revalidation hung asked the upstream %d times, want 1", n)
	}
	if got := f.stale(t, "timeout"); got != 5 {
		t.Errorf("stale answers of kind timeout = %v, want 5", got)
	}
	if !strings.Contains(f.log.String(), `"msg":"serving stale"`) || !strings.Contains(f.log.String(), `"tag":"v1"`) {
		t.Errorf("no log line says the tag was served stale:\n%s", f.log.String())
	}
	// Every client has its answer; the revalidation goes on and fetches the new
	// manifest once the upstream answers.
	close(release)
	<-fetched
}

// TestNegativeCache has the upstream fail: for negative_ttl after a failure, a tag
// with a last known answer is served it without asking, one without gets the failure
// at once, other repositories are still asked, and after negative_ttl one request
// asks again.
func TestNegativeCache(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img, other, never := registrytest.Image(t, 1024, 1), registrytest.Image(t, 1024, 1), registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	up.Push(t, registrytest.UpstreamPath+"/install", "uncached", never)
	up.Push(t, registrytest.UpstreamPath+"/other", "v1", other)
	const negativeTTL = 10 * time.Second
	f := start(t, up, func(c *conf.Registryd) {
		c.Cache.NegativeTTL.Duration = negativeTTL
		// Requests wait for the upstream's answer, however slow the machine.
		c.Cache.StaleAfter.Duration = time.Minute
		c.Upstream[0].Timeouts.ResponseHeader.Duration = 2 * time.Minute
		noHoldOff(c)
	})
	otherRepo := "https://" + f.host + "/v2/system/deckhouse/other"
	get := func(url string) (*http.Response, []byte) {
		t.Helper()
		return f.get(t, http.MethodGet, url, acceptAll)
	}
	asks := func(want int) {
		t.Helper()
		if n := tagAsks(up, "install", "v1"); n != want {
			t.Errorf("the upstream was asked for install:v1 %d times in all, want %d", n, want)
		}
	}
	resp, body := get(f.repo + "/manifests/v1")
	wantManifest(t, "cold", resp, body, img, "")
	resp, body = get(otherRepo + "/manifests/v1")
	wantManifest(t, "cold other", resp, body, other, "")

	failAll(up, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	f.clock.Advance(f.env.Config.Cache.TagTTL.Duration + time.Second)
	resp, body = get(f.repo + "/manifests/v1")
	wantManifest(t, "the upstream answering 503", resp, body, img, "stale")
	asks(2)
	for range 5 {
		resp, body = get(f.repo + "/manifests/v1")
		wantManifest(t, "within negative_ttl", resp, body, img, "stale")
	}
	asks(2)
	if got := f.stale(t, "negative"); got != 5 {
		t.Errorf("stale answers of kind negative = %v, want 5", got)
	}

	// Nothing to serve: the remembered failure at once, as the upstream gave it.
	wantHeader := "upstream=" + up.Host + "; status=503"
	neverDigest := registrytest.Digest(t, never).String()
	for _, ref := range []string{"uncached", neverDigest} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := f.get(t, method, f.repo+"/manifests/"+ref, acceptAll)
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(upstreamerr.Header) != wantHeader || resp.Header.Get("Retry-After") != "7" {
				t.Errorf("%s %s within negative_ttl: %d %q Retry-After %q %s; want 502 %q with Retry-After 7", method, ref,
					resp.StatusCode, resp.Header.Get(upstreamerr.Header), resp.Header.Get("Retry-After"), body, wantHeader)
			}
		}
		if n := tagAsks(up, "install", ref); n != 0 {
			t.Errorf("the upstream was asked for %s %d times within negative_ttl, want 0", ref, n)
		}
	}
	if got := counter(t, f.metrics.NegativeFailures); got != 4 {
		t.Errorf("failures from the negative cache = %v, want 4", got)
	}

	// Another repository is another entry: it is asked.
	resp, body = get(otherRepo + "/manifests/v1")
	wantManifest(t, "another repository", resp, body, other, "stale")
	if n := tagAsks(up, "other", "v1"); n != 2 {
		t.Errorf("the upstream was asked for other:v1 %d times in all, want 2", n)
	}

	// After negative_ttl one request asks again; its failure is remembered anew.
	f.clock.Advance(negativeTTL)
	resp, body = get(f.repo + "/manifests/v1")
	wantManifest(t, "the probe after negative_ttl", resp, body, img, "stale")
	asks(3)
	resp, body = get(f.repo + "/manifests/v1")
	wantManifest(t, "after the failed probe", resp, body, img, "stale")
	asks(3)

	// The upstream answers again, but that is learnt only after negative_ttl.
	up.Intercept(nil)
	resp, body = get(f.repo + "/manifests/v1")
	wantManifest(t, "recovered upstream within negative_ttl", resp, body, img, "stale")
	asks(3)
	f.clock.Advance(negativeTTL)
	resp, body = get(f.repo + "/manifests/v1")
	wantManifest(t, "recovered upstream after negative_ttl", resp, body, img, "")
	asks(4)
	resp, body = get(f.repo + "/manifests/uncached")
	wantManifest(t, "an uncached tag once the upstream answers", resp, body, never, "")
	if got := f.stale(t, "error"); got != 3 {
		t.Errorf("stale answers of kind error = %v, want 3", got)
	}
}

// TestNegativeProbe lets one request through after negative_ttl and hangs it: while
// that probe runs, the repository's other requests are served without asking.
func TestNegativeProbe(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img1, img2 := registrytest.Image(t, 1024, 1), registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v2", img2)
	const negativeTTL = 10 * time.Second
	f := start(t, up, func(c *conf.Registryd) {
		c.Cache.NegativeTTL.Duration = negativeTTL
		c.Cache.StaleAfter.Duration = time.Minute
		c.Upstream[0].Timeouts.ResponseHeader.Duration = 2 * time.Minute
	})
	for tag, img := range map[string]v1.Image{"v1": img1, "v2": img2} {
		resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/"+tag, acceptAll)
		wantManifest(t, "cold "+tag, resp, body, img, "")
	}
	arrived, release := make(chan struct{}, 16), make(chan struct{})
	t.Cleanup(func() { close(release) })
	var fail atomic.Bool
	fail.Store(true)
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			return false
		}
		if fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return false
	})
	f.clock.Advance(f.env.Config.Cache.TagTTL.Duration + time.Second)
	resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "the upstream answering 503", resp, body, img1, "stale")
	before := asked(up)

	// The probe: its client gives up, the probe goes on.
	fail.Store(false)
	f.clock.Advance(negativeTTL)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := newRequest(t, f.repo+"/manifests/v1").WithContext(ctx)
		if resp, err := f.client.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}()
	<-arrived
	cancel()
	<-done
	for _, tag := range []string{"v1", "v2", "v1"} {
		img := img1
		if tag == "v2" {
			img = img2
		}
		resp, body := f.get(t, http.MethodGet, f.repo+"/manifests/"+tag, acceptAll)
		wantManifest(t, tag+" while the probe runs", resp, body, img, "stale")
	}
	if n := asked(up) - before; n != 1 {
		t.Errorf("the upstream got %d requests from the probe on, want 1 (the probe)", n)
	}
	if got := f.stale(t, "negative"); got != 3 {
		t.Errorf("stale answers of kind negative = %v, want 3", got)
	}
}

// peerPair starts master a, which peers authenticate, and master b, whose one peer
// is a; both in front of up. changeB, if not nil, edits b's configuration further.
func peerPair(t *testing.T, up *registrytest.Upstream, changeB func(*conf.Registryd)) (a, b *fixture) {
	t.Helper()
	token := filepath.Join(t.TempDir(), "peer-token")
	registrytest.WriteSecret(t, token, "peer-token-for-tests")
	a = start(t, up, func(c *conf.Registryd) {
		c.Peers = conf.Peers{Self: "https://127.0.0.1:1", Endpoints: []conf.Endpoint{{URL: "https://127.0.0.1:1", Weight: 1}}, TokenFile: token}
	})
	b = start(t, up, func(c *conf.Registryd) {
		c.Peers = conf.Peers{
			Self:           "https://127.0.0.1:2",
			Endpoints:      []conf.Endpoint{{URL: "https://127.0.0.1:2", Weight: 1}, {URL: "https://" + a.host, Weight: 1}},
			TokenFile:      token,
			TLS:            conf.TLS{CA: a.env.Cert.CertFile},
			HealthInterval: conf.Duration{Duration: time.Hour},
		}
		if changeB != nil {
			changeB(c)
		}
	})
	return a, b
}

// TestTagFromPeer has master b, which never saw the image, asked for it while the
// upstream fails: b serves master a's manifest and a's last known answer for the tag,
// marked stale; a answers from its store only, so an unknown tag costs no request.
func TestTagFromPeer(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	a, b := peerPair(t, up, nil)
	resp, body := a.get(t, http.MethodGet, a.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "a, cold", resp, body, img, "")

	failAll(up, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	d := registrytest.Digest(t, img).String()
	before := asked(up)
	resp, body = b.get(t, http.MethodGet, b.repo+"/manifests/"+d, acceptAll)
	wantManifest(t, "b, by digest", resp, body, img, "")
	if n := asked(up) - before; n != 1 {
		t.Errorf("a manifest by digest made %d upstream requests, want 1 (b's)", n)
	}

	// b remembers the failure: it asks a, not the upstream.
	resp, body = b.get(t, http.MethodGet, b.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "b, by tag", resp, body, img, "stale")
	if n := tagAsks(up, "install", "v1"); n != 1 {
		t.Errorf("the upstream was asked for the tag %d times, want 1 (a's first)", n)
	}
	if got := b.stale(t, "peer"); got != 1 {
		t.Errorf("b's stale answers of kind peer = %v, want 1", got)
	}
	for _, l := range []struct {
		kind, result string
		want         float64
	}{{"tag", "ok", 1}, {"manifest", "ok", 1}, {"tag", "error", 0}, {"manifest", "error", 0}} {
		if got := counter(t, b.metrics.PeerLookups.WithLabelValues(l.kind, l.result)); got != l.want {
			t.Errorf("b's peer lookups {%s, %s} = %v, want %v", l.kind, l.result, got, l.want)
		}
	}

	// A tag a does not know: a answers from its store, so the upstream is not asked.
	before = asked(up)
	resp, body = b.get(t, http.MethodGet, b.repo+"/manifests/never", acceptAll)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(upstreamerr.Header) != "upstream="+up.Host+"; status=503" {
		t.Errorf("b, an unknown tag: %d %q %s; want 502 with the remembered failure", resp.StatusCode, resp.Header.Get(upstreamerr.Header), body)
	}
	if n := asked(up) - before; n != 0 {
		t.Errorf("an unknown tag made %d upstream requests, want 0", n)
	}
	if got := counter(t, b.metrics.PeerLookups.WithLabelValues("tag", "unknown")); got != 1 {
		t.Errorf("b's peer lookups {tag, unknown} = %v, want 1", got)
	}

	// b recorded a's answer with the time the upstream confirmed it: fresh within
	// tag_ttl, served without asking anyone.
	resp, body = b.get(t, http.MethodGet, b.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "b, by tag again", resp, body, img, "")
	if got := counter(t, b.metrics.PeerLookups.WithLabelValues("tag", "ok")); got != 1 {
		t.Errorf("b's peer lookups {tag, ok} = %v after a fresh answer, want still 1", got)
	}
}

// TestTagFromPeerWhileUpstreamHangs has b, which never saw the tag, ask a once the
// upstream has not answered for stale_after.
func TestTagFromPeerWhileUpstreamHangs(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 1024, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	// stale_after bounds the wait for the upstream and, again, the peer lookups: long
	// enough for a TLS round trip to a peer on a busy machine.
	a, b := peerPair(t, up, func(c *conf.Registryd) { c.Cache.StaleAfter.Duration = 500 * time.Millisecond })
	resp, body := a.get(t, http.MethodGet, a.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "a, cold", resp, body, img, "")

	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	failAll(up, func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	resp, body = b.get(t, http.MethodGet, b.repo+"/manifests/v1", acceptAll)
	wantManifest(t, "b with the upstream hanging", resp, body, img, "stale")
	if got := b.stale(t, "peer"); got != 1 {
		t.Errorf("b's stale answers of kind peer = %v, want 1", got)
	}
}
