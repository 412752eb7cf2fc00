package cache_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/server"
	"github.com/hopless/hopless/test/registrytest"
)

// scopeImages pushes one image as install:v1 and as twin:v1 (same blobs), and
// another image as nothere:v1: a repository that exists without the first image's
// blobs.
func scopeImages(t *testing.T, up *registrytest.Upstream) v1.Image {
	t.Helper()
	img := registrytest.Image(t, 64<<10, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	up.Push(t, registrytest.UpstreamPath+"/twin", "v1", img)
	up.Push(t, registrytest.UpstreamPath+"/nothere", "v1", registrytest.Image(t, 1<<10, 1))
	return img
}

// upstreamAt counts the upstream's requests with method for path below
// /v2/<UpstreamPath>/<repo>/.
func upstreamAt(up *registrytest.Upstream, method, repo, path string) int {
	want := "/v2/" + registrytest.UpstreamPath + "/" + repo + "/" + path
	return up.Count(func(r registrytest.Request) bool { return r.Method == method && r.Path == want })
}

// TestBlobScopedToRepository: a blob cached for one repository is served under
// another only once the upstream confirms (one HEAD) that the other has it; where
// the upstream does not, it is BLOB_UNKNOWN and its bytes never leave.
func TestBlobScopedToRepository(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := scopeImages(t, up)
	layer := registrytest.Blobs(t, img)[1]
	want := blobBytes(t, img)[layer]
	f := start(t, up, nil)
	url := func(repo string) string {
		return "https://" + f.host + "/v2/system/deckhouse/" + repo + "/blobs/" + layer.String()
	}
	path := "blobs/" + layer.String()

	if resp, body := f.get(t, http.MethodGet, url("install"), nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("install: %d, %d bytes; want 200 with the blob", resp.StatusCode, len(body))
	}
	f.waitFills(t)

	for i, tc := range []struct {
		method string
		header http.Header
	}{
		{http.MethodGet, nil},
		{http.MethodHead, nil},
		{http.MethodGet, http.Header{"Range": {"bytes=10-20"}}},
	} {
		resp, body := f.get(t, tc.method, url("nothere"), tc.header)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s nothere %v: %d, want 404", tc.method, tc.header, resp.StatusCode)
		}
		if tc.method == http.MethodGet {
			if e := registrytest.Errors(t, body)[0]; e.Code != "BLOB_UNKNOWN" {
				t.Errorf("%s nothere: error %+v, want BLOB_UNKNOWN", tc.method, e)
			}
		}
		if n := upstreamAt(up, http.MethodHead, "nothere", path); n != i+1 {
			t.Errorf("after request %d under nothere the upstream got %d HEADs, want %d", i+1, n, i+1)
		}
	}
	if n := upstreamAt(up, http.MethodGet, "nothere", path); n != 0 {
		t.Errorf("the upstream got %d GETs under nothere, want none: the blob is stored", n)
	}

	for i := range 2 {
		resp, body := f.get(t, http.MethodGet, url("twin"), nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) || resp.Header.Get("Hopless-Cache") != "hit" {
			t.Fatalf("twin GET %d: %d, %d bytes, Hopless-Cache %q; want a 200 hit with the blob",
				i+1, resp.StatusCode, len(body), resp.Header.Get("Hopless-Cache"))
		}
	}
	if resp, _ := f.get(t, http.MethodHead, url("twin"), nil); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD twin: %d, want 200", resp.StatusCode)
	}
	if n := upstreamAt(up, http.MethodHead, "twin", path); n != 1 {
		t.Errorf("the upstream got %d HEADs under twin, want 1: confirmed once, then linked", n)
	}
	if n := up.Count(registrytest.BlobGET(layer)); n != 1 {
		t.Errorf("the upstream got %d GETs of the blob, want 1", n)
	}
}

// TestManifestScopedToRepository: a cached manifest is served under another
// repository only once the upstream confirms it there; the content it references
// comes along without more questions.
func TestManifestScopedToRepository(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := scopeImages(t, up)
	d := registrytest.Digest(t, img).String()
	f := start(t, up, nil)
	base := "https://" + f.host + "/v2/system/deckhouse/"

	if resp, body := f.get(t, http.MethodGet, base+"install/manifests/"+d, acceptAll); resp.StatusCode != http.StatusOK {
		t.Fatalf("install: %d %s", resp.StatusCode, body)
	}
	for _, b := range registrytest.Blobs(t, img) {
		if resp, _ := f.get(t, http.MethodGet, base+"install/blobs/"+b.String(), nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("install blob %s: %d", b, resp.StatusCode)
		}
	}
	f.waitFills(t)
	getsBefore := countGETs(up.Requests())

	resp, body := f.get(t, http.MethodGet, base+"nothere/manifests/"+d, acceptAll)
	if resp.StatusCode != http.StatusNotFound || registrytest.Errors(t, body)[0].Code != "MANIFEST_UNKNOWN" {
		t.Fatalf("nothere: %d %s, want 404 MANIFEST_UNKNOWN", resp.StatusCode, body)
	}
	if bytes.Contains(body, []byte(`"layers"`)) {
		t.Errorf("the refusal carries the manifest: %s", body)
	}
	if n := upstreamAt(up, http.MethodHead, "nothere", "manifests/"+d); n != 1 {
		t.Errorf("the upstream got %d manifest HEADs under nothere, want 1", n)
	}

	resp, body = f.get(t, http.MethodGet, base+"twin/manifests/"+d, acceptAll)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d {
		t.Fatalf("twin: %d %s", resp.StatusCode, body)
	}
	if n := upstreamAt(up, http.MethodHead, "twin", "manifests/"+d); n != 1 {
		t.Errorf("the upstream got %d manifest HEADs under twin, want 1", n)
	}
	asked := len(up.Requests())
	for _, b := range registrytest.Blobs(t, img) {
		if resp, _ := f.get(t, http.MethodGet, base+"twin/blobs/"+b.String(), nil); resp.StatusCode != http.StatusOK {
			t.Errorf("twin blob %s: %d, want 200", b, resp.StatusCode)
		}
	}
	if resp, _ := f.get(t, http.MethodGet, base+"twin/manifests/"+d, acceptAll); resp.StatusCode != http.StatusOK {
		t.Errorf("twin again: %d", resp.StatusCode)
	}
	if reqs := up.Requests()[asked:]; len(reqs) != 0 {
		t.Errorf("the twin's blobs and its manifest again made upstream requests: %v", reqs)
	}
	if n := countGETs(up.Requests()) - getsBefore; n != 0 {
		t.Errorf("%d upstream GETs after the first pull, want none: only HEADs confirm", n)
	}
}

func countGETs(reqs []registrytest.Request) int {
	n := 0
	for _, r := range reqs {
		if r.Method == http.MethodGet {
			n++
		}
	}
	return n
}

// signals is a slog handler that passes records on and closes a channel the first
// time a record with a given message arrives.
type signals struct {
	slog.Handler
	shared *signalSet
}

type signalSet struct {
	mu    sync.Mutex
	waits map[string]chan struct{}
}

func (s *signals) on(msg string) <-chan struct{} {
	s.shared.mu.Lock()
	defer s.shared.mu.Unlock()
	if s.shared.waits == nil {
		s.shared.waits = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	s.shared.waits[msg] = ch
	return ch
}

func (s *signals) Handle(ctx context.Context, r slog.Record) error {
	s.shared.mu.Lock()
	if ch, ok := s.shared.waits[r.Message]; ok {
		close(ch)
		delete(s.shared.waits, r.Message)
	}
	s.shared.mu.Unlock()
	return s.Handler.Handle(ctx, r)
}

func (s *signals) WithAttrs(a []slog.Attr) slog.Handler {
	return &signals{Handler: s.Handler.WithAttrs(a), shared: s.shared}
}

func (s *signals) WithGroup(name string) slog.Handler {
	return &signals{Handler: s.Handler.WithGroup(name), shared: s.shared}
}

// startSignalling is start with a log whose messages the test can wait for.
func startSignalling(t *testing.T, up *registrytest.Upstream) (*fixture, *signals) {
	t.Helper()
	env := registrytest.NewEnv(t, "", up)
	f := &fixture{up: up, env: env, metrics: metrics.New(), clock: &clock{}, apiToken: "api-token-for-tests"}
	env.Config.API.TokenFile = filepath.Join(env.Dir, "api-token")
	registrytest.WriteSecret(t, env.Config.API.TokenFile, f.apiToken)
	l, logs := registrytest.Logger(t)
	f.log = logs
	sig := &signals{Handler: l.Handler(), shared: &signalSet{}}
	s, err := server.New(t.Context(), env.Config, server.WithLogger(slog.New(sig)), server.WithMetrics(f.metrics), server.WithClock(f.clock.Now))
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	registrytest.Start(t, s)
	f.host = s.Addr().String()
	f.repo = "https://" + f.host + "/v2/system/deckhouse/install"
	f.client = env.Cert.Client(t)
	return f, sig
}

// joinedMsg is what the cache logs when a request joins the fill of another
// repository.
const joinedMsg = "waiting for the fill of a blob for another repository"

// TestWrongRepositoryJoinsRightOne joins a request naming a repository without the
// blob to the fill of one naming the right repository, in both orders: the right one
// gets the blob, the wrong one BLOB_UNKNOWN, and the upstream sent the blob's body
// once.
func TestWrongRepositoryJoinsRightOne(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		first, then  string
		wantGETsWrng int // GETs under the wrong repository: the wrong one's own fill
	}{
		{name: "wrong first", first: "nothere", then: "install", wantGETsWrng: 1},
		{name: "right first", first: "install", then: "nothere", wantGETsWrng: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := registrytest.NewUpstream(t)
			img := scopeImages(t, up)
			layer := registrytest.Blobs(t, img)[1]
			want := blobBytes(t, img)[layer]
			f, sig := startSignalling(t, up)
			joined := sig.on(joinedMsg)
			firstPath := "/v2/" + registrytest.UpstreamPath + "/" + tc.first + "/blobs/" + layer.String()
			// The first request's upstream GET waits until the second request has
			// joined its fill.
			firstAsked := make(chan struct{})
			var once sync.Once
			up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == http.MethodGet && r.URL.Path == firstPath {
					once.Do(func() { close(firstAsked) })
					select {
					case <-joined:
					case <-r.Context().Done():
					}
				}
				return false
			})
			url := func(repo string) string {
				return "https://" + f.host + "/v2/system/deckhouse/" + repo + "/blobs/" + layer.String()
			}
			type result struct {
				status int
				body   []byte
			}
			results := map[string]result{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			get := func(repo string) {
				resp, body := f.get(t, http.MethodGet, url(repo), nil)
				mu.Lock()
				results[repo] = result{resp.StatusCode, body}
				mu.Unlock()
			}
			wg.Go(func() { get(tc.first) })
			// The second request starts once the first one's fill is at the upstream.
			<-firstAsked
			wg.Go(func() { get(tc.then) })
			wg.Wait()

			if r := results["install"]; r.status != http.StatusOK || !bytes.Equal(r.body, want) {
				t.Errorf("install: %d, %d bytes; want 200 with the blob", r.status, len(r.body))
			}
			if r := results["nothere"]; r.status != http.StatusNotFound || registrytest.Errors(t, r.body)[0].Code != "BLOB_UNKNOWN" {
				t.Errorf("nothere: %d %s; want 404 BLOB_UNKNOWN", r.status, r.body)
			}
			path := "blobs/" + layer.String()
			if n := upstreamAt(up, http.MethodGet, "install", path); n != 1 {
				t.Errorf("the upstream got %d GETs under install, want the one that sent the body", n)
			}
			if n := upstreamAt(up, http.MethodGet, "nothere", path); n != tc.wantGETsWrng {
				t.Errorf("the upstream got %d GETs under nothere, want %d", n, tc.wantGETsWrng)
			}
		})
	}
}

// TestManifestFlightPerRepository: a manifest lookup naming a repository without the
// manifest does not fail a concurrent one naming the right repository.
func TestManifestFlightPerRepository(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := scopeImages(t, up)
	d := registrytest.Digest(t, img).String()
	wrongPath := "/v2/" + registrytest.UpstreamPath + "/nothere/manifests/" + d
	rightPath := "/v2/" + registrytest.UpstreamPath + "/install/manifests/" + d
	rightAsked, wrongAsked := make(chan struct{}), make(chan struct{})
	var rightOnce, wrongOnce sync.Once
	// The wrong repository's lookup is answered only once the right one has asked
	// the upstream itself: a flight by digest alone would never ask.
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case rightPath:
			rightOnce.Do(func() { close(rightAsked) })
		case wrongPath:
			wrongOnce.Do(func() { close(wrongAsked) })
			select {
			case <-rightAsked:
			case <-r.Context().Done():
			}
		}
		return false
	})
	f := start(t, up, nil)
	base := "https://" + f.host + "/v2/system/deckhouse/"
	var wg sync.WaitGroup
	var wrong, right int
	wg.Go(func() {
		resp, _ := f.get(t, http.MethodGet, base+"nothere/manifests/"+d, acceptAll)
		wrong = resp.StatusCode
	})
	<-wrongAsked
	wg.Go(func() {
		resp, _ := f.get(t, http.MethodGet, base+"install/manifests/"+d, acceptAll)
		right = resp.StatusCode
	})
	wg.Wait()
	if wrong != http.StatusNotFound || right != http.StatusOK {
		t.Errorf("nothere %d, install %d; want 404 and 200", wrong, right)
	}
	if n := upstreamAt(up, http.MethodGet, "install", "manifests/"+d); n != 1 {
		t.Errorf("the upstream got %d manifest GETs under install, want 1", n)
	}
}
