package cache_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/test/registrytest"
)

// retryDate is a Retry-After in the HTTP date form.
const retryDate = "Wed, 21 Oct 2037 07:28:00 GMT"

// target is one kind of /v2/ request of the contract tests.
type target struct {
	name string
	path func(img v1.Image) string // below the repository URL
	// blob is the blob the request fetches, for counting upstream GETs.
	blob bool
}

func contractTargets(t *testing.T) []target {
	return []target{
		{name: "manifest by tag", path: func(v1.Image) string { return "/manifests/v1" }},
		{name: "manifest by digest", path: func(img v1.Image) string { return "/manifests/" + registrytest.Digest(t, img).String() }},
		{name: "blob", blob: true, path: func(img v1.Image) string { return "/blobs/" + registrytest.Blobs(t, img)[1].String() }},
	}
}

// failAll makes up answer every request but GET /v2/ with h.
func failAll(up *registrytest.Upstream, h http.HandlerFunc) {
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			return false
		}
		h(w, r)
		return true
	})
}

// TestUpstreamErrorContract checks, for GET and HEAD of a manifest by tag, a manifest
// by digest and a blob, that a failure of the upstream is answered with its wire
// status, the Hopless-Upstream-Error header and the upstream's Retry-After, with a
// message that names the upstream host and nothing of the request's paths.
func TestUpstreamErrorContract(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// fail makes the upstream fail; it runs after the image is pushed.
		fail   func(up *registrytest.Upstream)
		change func(*conf.Registryd)
		wire   int
		code   string
		// failure is the header value after "upstream=<host>; ".
		failure    string
		retryAfter string
		// asked says whether every request reaches the upstream once.
		asked bool
	}{
		{
			name: "503 with Retry-After",
			fail: func(up *registrytest.Upstream) {
				failAll(up, func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Retry-After", "7")
					w.WriteHeader(http.StatusServiceUnavailable)
				})
			},
			wire: http.StatusBadGateway, code: "UNAVAILABLE", failure: "status=503", retryAfter: "7", asked: true,
		},
		{
			name: "500, whose Retry-After is not passed on",
			fail: func(up *registrytest.Upstream) {
				failAll(up, func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Retry-After", "9")
					http.Error(w, "boom", http.StatusInternalServerError)
				})
			},
			wire: http.StatusBadGateway, code: "UNAVAILABLE", failure: "status=500", asked: true,
		},
		{
			name: "429 with a Retry-After date",
			fail: func(up *registrytest.Upstream) {
				failAll(up, func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Retry-After", retryDate)
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusTooManyRequests)
					_, _ = w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
				})
			},
			wire: http.StatusTooManyRequests, code: "TOOMANYREQUESTS", failure: "status=429", retryAfter: retryDate, asked: true,
		},
		{
			name: "no answer within the response header timeout",
			fail: func(up *registrytest.Upstream) {
				failAll(up, func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
			},
			change: func(c *conf.Registryd) { c.Upstream[0].Timeouts.ResponseHeader.Duration = 200 * time.Millisecond },
			wire:   http.StatusGatewayTimeout, code: "UNAVAILABLE", failure: "reason=timeout", asked: true,
		},
		{
			name:    "connection refused",
			fail:    func(up *registrytest.Upstream) { up.Close() },
			wire:    http.StatusGatewayTimeout,
			code:    "UNAVAILABLE",
			failure: "reason=unreachable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := registrytest.Image(t, 32<<10, 1)
			up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
			f := start(t, up, func(c *conf.Registryd) {
				noHoldOff(c)
				if tt.change != nil {
					tt.change(c)
				}
			})
			tt.fail(up)
			wantHeader := "upstream=" + up.Host + "; " + tt.failure
			layer := registrytest.Blobs(t, img)[1]

			for _, tg := range contractTargets(t) {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					blobGETs := up.Count(registrytest.BlobGET(layer))
					resp, body := f.get(t, method, f.repo+tg.path(img), acceptAll)
					what := method + " " + tg.name
					if resp.StatusCode != tt.wire {
						t.Errorf("%s: status %d %s, want %d", what, resp.StatusCode, body, tt.wire)
					}
					if got := resp.Header.Get(upstreamerr.Header); got != wantHeader {
						t.Errorf("%s: %s %q, want %q", what, upstreamerr.Header, got, wantHeader)
					} else if _, err := upstreamerr.Parse(got); err != nil {
						t.Errorf("%s: %v", what, err)
					}
					if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
						t.Errorf("%s: Retry-After %q, want %q", what, got, tt.retryAfter)
					}
					if method == http.MethodGet {
						e := registrytest.Errors(t, body)[0]
						if e.Code != tt.code || !strings.Contains(e.Message, up.Host) {
							t.Errorf("%s: error %+v, want %s naming the upstream %s", what, e, tt.code, up.Host)
						}
						for _, secret := range []string{registrytest.UpstreamPath, f.env.Dir, "system/deckhouse"} {
							if strings.Contains(e.Message, secret) {
								t.Errorf("%s: message %q names %q", what, e.Message, secret)
							}
						}
					}
					// A fill gives up at once: one upstream GET per request, no retries.
					want := 0
					if tg.blob && tt.asked {
						want = 1
					}
					if got := up.Count(registrytest.BlobGET(layer)) - blobGETs; got != want {
						t.Errorf("%s: %d upstream blob GETs, want %d", what, got, want)
					}
				}
			}
			if got := counter(t, f.metrics.CacheHits.WithLabelValues("blob")); got != 0 {
				t.Errorf("blob hits = %v, want 0", got)
			}
		})
	}
}

// TestOwnFailureHasNoHeader breaks registryd's own storage while the upstream is
// fine: the answers are registryd's failures, 5xx without Hopless-Upstream-Error.
func TestOwnFailureHasNoHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		targets []string // target names
		// breakFS breaks the store and returns what restores it.
		breakFS func(t *testing.T, cfg *conf.Registryd) func()
	}{
		{
			name:    "storage root",
			targets: []string{"manifest by tag", "manifest by digest", "blob"},
			breakFS: func(t *testing.T, cfg *conf.Registryd) func() {
				return replaceWithFile(t, filepath.Join(cfg.Storage.Root, "hopless"))
			},
		},
		{
			name:    "spool",
			targets: []string{"blob"},
			breakFS: func(t *testing.T, cfg *conf.Registryd) func() {
				return replaceWithFile(t, cfg.Storage.Spool)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := registrytest.Image(t, 32<<10, 1)
			up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
			f := start(t, up, nil)
			// Cleanups run last first: the store is whole again before the server closes
			// and saves its index.
			t.Cleanup(tt.breakFS(t, f.env.Config))
			for _, tg := range contractTargets(t) {
				if !contains(tt.targets, tg.name) {
					continue
				}
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					resp, body := f.get(t, method, f.repo+tg.path(img), acceptAll)
					what := method + " " + tg.name
					if resp.StatusCode != http.StatusInternalServerError && resp.StatusCode != http.StatusServiceUnavailable {
						t.Errorf("%s: status %d %s, want 500 or 503", what, resp.StatusCode, body)
					}
					if got := resp.Header.Get(upstreamerr.Header); got != "" {
						t.Errorf("%s: %s %q on registryd's own failure", what, upstreamerr.Header, got)
					}
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// replaceWithFile moves dir away and puts a regular file in its place; the returned
// func puts it back.
func replaceWithFile(t *testing.T, dir string) func() {
	t.Helper()
	moved := dir + ".moved"
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(dir); err != nil {
			t.Error(err)
		}
		if err := os.Rename(moved, dir); err != nil {
			t.Error(err)
		}
	}
}

// noHoldOff makes the upstreams' Retry-After windows (tested in registryd/upstream)
// end at once, for tests that count the upstream requests of every failure.
func noHoldOff(c *conf.Registryd) {
	for i := range c.Upstream {
		c.Upstream[i].MaxRetryAfter.Duration = time.Nanosecond
	}
}

// TestPeerPassesOnUpstreamFailure has a master fill a blob from its owner, whose
// upstream answers 503: the asking master answers with the same upstream failure, does
// not ask the upstream itself, and keeps the owner healthy.
func TestPeerPassesOnUpstreamFailure(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 32<<10, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	failAll(up, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	token := filepath.Join(t.TempDir(), "peer-token")
	registrytest.WriteSecret(t, token, "peer-token-for-tests")

	// The owner authenticates peers; it has no peers to ask itself.
	owner := start(t, up, func(c *conf.Registryd) {
		c.Peers = conf.Peers{Self: "https://127.0.0.1:1", Endpoints: []conf.Endpoint{{URL: "https://127.0.0.1:1", Weight: 1}}, TokenFile: token}
		noHoldOff(c)
	})
	ownerURL := "https://" + owner.host
	askerPeers := conf.Peers{
		Self:           "https://127.0.0.1:2",
		Endpoints:      []conf.Endpoint{{URL: "https://127.0.0.1:2", Weight: 1}, {URL: ownerURL, Weight: 1 << 20}},
		TokenFile:      token,
		TLS:            conf.TLS{CA: owner.env.Cert.CertFile},
		HealthInterval: conf.Duration{Duration: time.Hour},
	}
	asker := start(t, up, func(c *conf.Registryd) {
		c.Peers = askerPeers
		noHoldOff(c)
	})

	layer := registrytest.Blobs(t, img)[1]
	view, err := peers.New(askerPeers)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := view.Owner(layer.String()); !ok || p.URL != ownerURL {
		t.Fatalf("blob %s is owned by %+v, want %s", layer, p, ownerURL)
	}

	wantHeader := "upstream=" + up.Host + "; status=503"
	for i, method := range []string{http.MethodGet, http.MethodHead} {
		resp, body := asker.get(t, method, asker.repo+"/blobs/"+layer.String(), nil)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(upstreamerr.Header) != wantHeader || resp.Header.Get("Retry-After") != "7" {
			t.Errorf("%s: %d %q Retry-After %q %s; want 502 %q with Retry-After 7", method, resp.StatusCode,
				resp.Header.Get(upstreamerr.Header), resp.Header.Get("Retry-After"), body, wantHeader)
		}
		if method == http.MethodGet {
			if e := registrytest.Errors(t, body)[0]; e.Code != "UNAVAILABLE" || !strings.Contains(e.Message, up.Host+" answered 503") {
				t.Errorf("GET: error %+v, want UNAVAILABLE saying the upstream answered 503", e)
			}
		}
		// Only the owner asked the upstream, once per request; each request asked
		// the owner again, so it was never marked down.
		if n := up.Count(registrytest.BlobGET(layer)); n != i+1 {
			t.Errorf("%s: %d upstream GETs of the blob, want %d (the owner's only)", method, n, i+1)
		}
		if got := counter(t, asker.metrics.PeerFills.WithLabelValues(ownerURL, "upstream")); got != float64(i+1) {
			t.Errorf("%s: peer fills passing on the upstream's failure = %v, want %d", method, got, i+1)
		}
	}
	if got := counter(t, asker.metrics.PeerFills.WithLabelValues(ownerURL, "error")); got != 0 {
		t.Errorf("peer fills failed by the owner = %v, want 0", got)
	}
	if got := counter(t, owner.metrics.PeerRequests); got != 2 {
		t.Errorf("the owner served %v peer requests, want 2", got)
	}
	if strings.Contains(asker.log.String(), "peer ejected") || strings.Contains(asker.log.String(), "peer down") {
		t.Errorf("the owner was marked down:\n%s", asker.log.String())
	}
}

// TestNoCacheReverifies flips a byte of a stored blob and restores its mtime, so that
// the store's verified state still trusts it: a plain GET serves the bad copy whole,
// a GET with Cache-Control: no-cache hashes it, drops it and serves a fresh fill.
func TestNoCacheReverifies(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 200<<10, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	layer := registrytest.Blobs(t, img)[1]
	want := blobBytes(t, img)[layer]
	f := start(t, up, nil)
	url := f.repo + "/blobs/" + layer.String()
	noCache := http.Header{"Cache-Control": {"no-cache"}}

	check := func(what string, header http.Header, wantCache string, wantBody []byte) {
		t.Helper()
		resp, body := f.get(t, http.MethodGet, url, header)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, wantBody) {
			t.Fatalf("%s: %d, %d bytes (digest %s), want 200 with %d bytes of digest %s",
				what, resp.StatusCode, len(body), sum(body), len(wantBody), sum(wantBody))
		}
		if got := resp.Header.Get("Hopless-Cache"); wantCache != "" && got != wantCache {
			t.Errorf("%s: Hopless-Cache %q, want %q", what, got, wantCache)
		}
	}
	// The first GET is a miss, unless the small fill has finished before the
	// answer is made (distribution stats the blob first): either is right.
	check("first GET", nil, "", want)
	f.waitFills(t)
	check("second GET", nil, "hit", want)
	check("no-cache GET of a good copy", noCache, "hit", want)
	if resp, _ := f.get(t, http.MethodHead, url, nil); resp.Header.Get("Hopless-Cache") != "hit" {
		t.Errorf("HEAD: Hopless-Cache %q, want hit", resp.Header.Get("Hopless-Cache"))
	}
	if n := up.Count(registrytest.BlobGET(layer)); n != 1 {
		t.Fatalf("%d upstream GETs, want 1", n)
	}

	stored, err := filepath.Glob(filepath.Join(f.env.Config.Storage.Root, "hopless", "blobs", "sha256", "*", layer.Hex))
	if err != nil || len(stored) != 1 {
		t.Fatalf("stored blob: %v, %v", stored, err)
	}
	flipByte(t, stored[0], 1000)
	bad := bytes.Clone(want)
	bad[1000] ^= 0x20

	check("GET of the flipped copy, which looks unchanged", nil, "hit", bad)
	failures := counter(t, f.metrics.VerifyFailures.WithLabelValues("store"))
	check("no-cache GET of the flipped copy", noCache, "miss", want)
	if got := counter(t, f.metrics.VerifyFailures.WithLabelValues("store")); got != failures+1 {
		t.Errorf("store verify failures went from %v to %v, want one more", failures, got)
	}
	if n := up.Count(registrytest.BlobGET(layer)); n != 2 {
		t.Errorf("%d upstream GETs, want 2: the bad copy was filled again", n)
	}
	f.waitFills(t)
	check("GET after the refill", nil, "hit", want)
}

// flipByte flips one bit of the byte at off in place and restores the file's times,
// so that size, mtime and inode stay the same.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := fh.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := fh.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
}
