package api_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/registryd/upstream"
	"github.com/hopless/hopless/test/registrytest"
)

const (
	apiToken  = "api-token-for-tests"
	peerToken = "peer-token-for-tests"
	nodeKey   = "node-key-for-tests-0123456789"
	repo      = registrytest.UpstreamPath + "/install"
)

// fixture is the API over a real cache, store and upstream, served by httptest.
type fixture struct {
	up      *registrytest.Upstream
	store   *store.Store
	cache   *cache.Cache
	peers   *peers.Set
	metrics *metrics.Metrics
	srv     *httptest.Server
	api     *api.API
	img     v1.Image
}

// newFixture pushes a small image as install:v1 and serves the API; token is the
// API token ("" disables pins and prefetch).
func newFixture(t testing.TB, token string) *fixture {
	t.Helper()
	o := fixtureOptions{token: token}
	if token != "" {
		o.nodeKey = []byte(nodeKey)
	}
	return newFixtureWith(t, o)
}

// fixtureOptions are newFixtureWith's: the API token and node key ("" disables
// prefetch and pins), and a peer that exists (its URL and a client that trusts it;
// without it the one peer does not exist).
type fixtureOptions struct {
	token      string
	nodeKey    []byte
	peerURL    string
	peerClient *http.Client
	now        func() time.Time
}

func newFixtureWith(t testing.TB, o fixtureOptions) *fixture {
	t.Helper()
	token := o.token
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 100<<10, 2)
	up.Push(t, repo, "v1", img)
	env := registrytest.NewEnv(t, "", up)
	f := &fixture{up: up, img: img, metrics: metrics.New()}
	log, _ := registrytest.Logger(t)

	ctx, cancel := context.WithCancel(context.Background())
	var err error
	f.store, err = store.New(ctx, env.Config.Storage, store.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	filler := fill.New(f.store, fill.WithLogger(log), fill.WithMetrics(f.metrics))
	u, err := upstream.New(env.Config.Upstream[0], upstream.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	// The other peer does not exist: a request from a peer must never be forwarded
	// to one, so it is never asked.
	tokenFile := filepath.Join(env.Dir, "peer-token")
	registrytest.WriteSecret(t, tokenFile, peerToken)
	peerURL := "https://127.0.0.2:1"
	popts := []peers.Option{peers.WithMetrics(f.metrics)}
	if o.peerURL != "" {
		peerURL = o.peerURL
		popts = append(popts, peers.WithHTTPClient(o.peerClient))
	}
	f.peers, err = peers.New(conf.Peers{
		Self:      "https://127.0.0.1:1",
		Endpoints: []conf.Endpoint{{URL: "https://127.0.0.1:1", Weight: 1}, {URL: peerURL, Weight: 1000}},
		TokenFile: tokenFile,
	}, popts...)
	if err != nil {
		t.Fatal(err)
	}
	f.cache = cache.New(ctx, cache.Config{
		Store: f.store, Filler: filler, Upstreams: []*upstream.Client{u}, Router: route.New(env.Config.Upstream),
		Peers: f.peers, Log: log, Metrics: f.metrics, TagTTL: time.Minute, MaxManifest: 4 << 20,
	})
	a := api.New(ctx, api.Config{Cache: f.cache, Store: f.store, Peers: f.peers, Token: token, Log: log, Metrics: f.metrics,
		NodeKey: o.nodeKey, Now: o.now})
	f.api = a
	f.srv = httptest.NewUnstartedServer(a)
	// TestClient's untrusting client makes the server log a handshake error.
	f.srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(func() {
		f.srv.Close()
		cancel()
		a.Close()
		f.cache.Close()
		filler.Close()
		_ = u.Close()
		if err := f.store.Close(); err != nil {
			t.Error(err)
		}
	})
	return f
}

func (f *fixture) client() *api.Client {
	return api.NewClient(f.srv.URL, apiToken, f.srv.Client().Transport.(*http.Transport).TLSClientConfig)
}

// nodeClient is a client with node's token.
func (f *fixture) nodeClient(t *testing.T, node string) *api.Client {
	return api.NewClient(f.srv.URL, nodeTokenOf(t, node), f.srv.Client().Transport.(*http.Transport).TLSClientConfig)
}

func nodeTokenOf(t testing.TB, node string) string {
	t.Helper()
	tok, err := nodetoken.Derive([]byte(nodeKey), node)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) do(t *testing.T, method, path, auth, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// prefetch warms image through the API and waits for the job.
func (f *fixture) prefetch(t *testing.T, images ...string) api.Job {
	t.Helper()
	c := f.client()
	job, err := c.Prefetch(t.Context(), images)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !job.Done {
		if time.Now().After(deadline) {
			t.Fatalf("prefetch job %s not done after 30s", job.ID)
		}
		time.Sleep(10 * time.Millisecond)
		if job, err = c.PrefetchStatus(t.Context(), job.ID); err != nil {
			t.Fatal(err)
		}
	}
	return job
}

func manifestDigest(t testing.TB, img v1.Image) digest.Digest {
	return digest.Digest(registrytest.Digest(t, img).String())
}

func TestAPIDisabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "")
	for _, tt := range []struct{ method, path, file string }{
		{http.MethodPut, "/hopless/v1/pins", "api.node_key_file"},
		{http.MethodPut, "/hopless/v1/peer/pins", "api.node_key_file"},
		{http.MethodPost, "/hopless/v1/prefetch", "api.token_file"},
		{http.MethodGet, "/hopless/v1/prefetch/1", "api.token_file"},
	} {
		auth := "Bearer "
		if strings.Contains(tt.path, "/peer/") {
			auth += peerToken
		}
		resp, b := f.do(t, tt.method, tt.path, auth, `{}`)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(b), tt.file+" is not set") {
			t.Errorf("%s %s with the API off: %d %s, want 404 naming %s", tt.method, tt.path, resp.StatusCode, b, tt.file)
		}
	}
}

func TestPrefetchJob(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	d := manifestDigest(t, f.img)
	job := f.prefetch(t, "system/deckhouse/install:v1", "system/deckhouse/install@"+string(d),
		"system/deckhouse/install:missing", "Not/A/Name")
	if !job.Done || len(job.Images) != 4 {
		t.Fatalf("job %+v, want 4 images done", job)
	}
	var size int64
	for _, h := range registrytest.Blobs(t, f.img) {
		s, err := f.store.StatBlob(t.Context(), digest.Digest(h.String()))
		if err != nil {
			t.Fatalf("blob %s not cached: %v", h, err)
		}
		size += s
	}
	for i, want := range []struct {
		image, err string
	}{
		{"system/deckhouse/install:v1", ""},
		{"system/deckhouse/install@" + string(d), ""},
		{"system/deckhouse/install:missing", "not found"},
		{"Not/A/Name", "invalid"},
	} {
		p := job.Images[i]
		if p.Image != want.image || !p.Done {
			t.Errorf("image %d: %+v, want %s done", i, p, want.image)
		}
		if want.err == "" {
			if p.Error != "" || p.Manifests != 1 || p.Blobs != 3 || p.BlobsDone != 3 || p.Bytes != size || p.BytesDone != size {
				t.Errorf("image %d: %+v, want 1 manifest and 3 blobs of %d bytes done", i, p, size)
			}
		} else if !strings.Contains(p.Error, want.err) {
			t.Errorf("image %d: error %q, want it to contain %q", i, p.Error, want.err)
		}
	}
	if n := f.up.Count(registrytest.BlobGET(registrytest.Blobs(t, f.img)[1])); n != 1 {
		t.Errorf("two prefetches of one image fetched a layer %d times, want 1", n)
	}

	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"unknown job", http.MethodGet, "/hopless/v1/prefetch/999", "", http.StatusNotFound},
		{"no images", http.MethodPost, "/hopless/v1/prefetch", `{"images":[]}`, http.StatusBadRequest},
		{"unknown field", http.MethodPost, "/hopless/v1/prefetch", `{"images":["a:b"],"x":1}`, http.StatusBadRequest},
		{"wrong method", http.MethodDelete, "/hopless/v1/prefetch/1", "", http.StatusNotFound},
		{"unknown endpoint", http.MethodGet, "/hopless/v1/nothing", "", http.StatusNotFound},
	}
	for _, tt := range tests {
		if resp, b := f.do(t, tt.method, tt.path, "Bearer "+apiToken, tt.body); resp.StatusCode != tt.want {
			t.Errorf("%s: %d %s, want %d", tt.name, resp.StatusCode, b, tt.want)
		}
	}
}

func TestPeerBlob(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	layer := registrytest.Blobs(t, f.img)[1]
	q := func(upstreamHost, repo, d string) string {
		return "/hopless/v1/peer/blob?" + url.Values{"upstream": {upstreamHost}, "repo": {repo}, "digest": {d}}.Encode()
	}
	tests := []struct {
		name, method, path, auth string
		want                     int
		code                     string
	}{
		{"no token", http.MethodGet, q(f.up.Host, repo, layer.String()), "", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"API token", http.MethodGet, q(f.up.Host, repo, layer.String()), "Bearer " + apiToken, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"unknown upstream", http.MethodGet, q("evil.example", repo, layer.String()), "Bearer " + peerToken, http.StatusNotFound, "NAME_UNKNOWN"},
		{"bad repo", http.MethodGet, q(f.up.Host, "../etc", layer.String()), "Bearer " + peerToken, http.StatusBadRequest, "NAME_INVALID"},
		{"uppercase repo", http.MethodGet, q(f.up.Host, "Deckhouse/x", layer.String()), "Bearer " + peerToken, http.StatusBadRequest, "NAME_INVALID"},
		{"bad digest", http.MethodGet, q(f.up.Host, repo, "sha256:nope"), "Bearer " + peerToken, http.StatusBadRequest, "DIGEST_INVALID"},
		{"unknown blob", http.MethodGet, q(f.up.Host, repo, "sha256:"+strings.Repeat("0", 64)), "Bearer " + peerToken, http.StatusNotFound, "BLOB_UNKNOWN"},
		{"POST", http.MethodPost, q(f.up.Host, repo, layer.String()), "Bearer " + peerToken, http.StatusNotFound, "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, b := f.do(t, tt.method, tt.path, tt.auth, "")
			if resp.StatusCode != tt.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, tt.want)
			}
			if e := registrytest.Errors(t, b)[0]; e.Code != tt.code {
				t.Errorf("error %+v, want %s", e, tt.code)
			}
			for _, h := range []string{"Docker-Content-Digest", "Cache-Control"} {
				if v := resp.Header.Get(h); v != "" {
					t.Errorf("the error response has %s: %s", h, v)
				}
			}
		})
	}
}

// TestPeerRoundTrip fetches blobs through the peer client, as another master does:
// a miss is filled from the upstream (never from a peer), a Range resumes, and an
// unknown blob is a definite not-found that does not mark this master down.
func TestPeerRoundTrip(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	layer := registrytest.Blobs(t, f.img)[1]
	d := digest.Digest(layer.String())
	self := peers.Peer{URL: f.srv.URL, Weight: 1}
	tokenFile := filepath.Join(t.TempDir(), "token")
	registrytest.WriteSecret(t, tokenFile, peerToken)
	asker, err := peers.New(conf.Peers{
		Self:      "https://127.0.0.3:1",
		Endpoints: []conf.Endpoint{{URL: f.srv.URL, Weight: 1}},
		TokenFile: tokenFile,
	}, peers.WithHTTPClient(f.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}

	for _, offset := range []int64{0, 70000} {
		rc, size, err := asker.Blob(t.Context(), self, f.up.Host, repo, d, offset)
		if err != nil {
			t.Fatalf("offset %d: %v", offset, err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			t.Fatalf("offset %d: reading: %v", offset, err)
		}
		if offset == 0 && fmt.Sprintf("sha256:%x", sha256.Sum256(b)) != layer.String() {
			t.Errorf("the blob's bytes do not match its digest")
		}
		if int64(len(b)) != size-offset {
			t.Errorf("offset %d: %d bytes of a %d-byte blob", offset, len(b), size)
		}
	}
	if n := f.up.Count(registrytest.BlobGET(layer)); n != 1 {
		t.Errorf("the upstream saw %d GETs for the blob, want 1", n)
	}
	if got := len(f.peers.Healthy()); got != 1 {
		t.Errorf("%d healthy peers, want the unreachable one still unasked and up", got)
	}

	_, _, err = asker.Blob(t.Context(), self, f.up.Host, repo, digest.Digest("sha256:"+strings.Repeat("0", 64)), 0)
	if !errdefs.IsNotFound(err) {
		t.Errorf("unknown blob: %v, want not found", err)
	}
	if len(asker.Healthy()) != 1 {
		t.Errorf("a not-found answer marked this master down")
	}
}

func TestClient(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	c := f.client()
	job, err := c.Prefetch(t.Context(), []string{"system/deckhouse/install:v1"})
	if err != nil {
		t.Fatal(err)
	}
	if job.ID == "" || len(job.Images) != 1 || job.Images[0].Image != "system/deckhouse/install:v1" {
		t.Errorf("Prefetch = %+v, want a job for the image", job)
	}
	got, err := c.PrefetchStatus(t.Context(), job.ID)
	if err != nil || got.ID != job.ID {
		t.Errorf("PrefetchStatus = %+v, %v", got, err)
	}
	if a, err := f.nodeClient(t, "node-1").PutPins(t.Context(), api.Pins{Source: "node-1"}); err != nil || a.Source != "node-1" || a.TTLSeconds != 600 {
		t.Errorf("PutPins = %+v, %v; want node-1's lease for 600s", a, err)
	}

	bad := api.NewClient(f.srv.URL, "wrong", f.srv.Client().Transport.(*http.Transport).TLSClientConfig)
	_, err = bad.Prefetch(t.Context(), []string{"a:b"})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("Prefetch with a wrong token = %v, want a 401 error", err)
	}
	if se, ok := errors.AsType[*api.StatusError](err); !ok || se.StatusCode != http.StatusUnauthorized || !strings.Contains(se.Body, "UNAUTHORIZED") {
		t.Errorf("Prefetch with a wrong token = %#v, want a StatusError of 401 UNAUTHORIZED", err)
	}
	if _, err := c.PrefetchStatus(t.Context(), "999"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("PrefetchStatus of an unknown job = %v, want a 404 error", err)
	}
	untrusting := api.NewClient(f.srv.URL, apiToken, nil)
	if _, err := untrusting.PutPins(t.Context(), api.Pins{Source: "node-1"}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client that does not trust the server = %v, want a certificate error", err)
	}
}

func TestCloseRefusesJobs(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	f.api.Close()
	resp, b := f.do(t, http.MethodPost, "/hopless/v1/prefetch", "Bearer "+apiToken, `{"images":["system/deckhouse/install:v1"]}`)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("prefetch after Close: %d %s, want 503", resp.StatusCode, b)
	}
}

// TestPrefetchWorkers checks that a job of 10 images is warmed by 4 workers: never
// more than 4 images are asked of the upstream at once, the others wait as queued.
func TestPrefetchWorkers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	const images, workers = 10, 4
	var names []string
	for i := range images {
		tag := fmt.Sprintf("w%d", i)
		f.up.Push(t, repo, tag, f.img)
		names = append(names, "system/deckhouse/install:"+tag)
	}
	// Each image's first request, for its tag, is held until the test lets it go;
	// inflight counts the images being asked for at the upstream.
	var (
		mu                sync.Mutex
		seen              = map[string]bool{}
		inflight, maxSeen int
		arrived           = make(chan struct{}, images)
		gate              = make(chan struct{})
	)
	f.up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		_, tag, ok := strings.Cut(r.URL.Path, "/manifests/")
		if !ok || !strings.HasPrefix(tag, "w") {
			return false
		}
		mu.Lock()
		if seen[tag] {
			mu.Unlock()
			return false
		}
		seen[tag] = true
		inflight++
		maxSeen = max(maxSeen, inflight)
		mu.Unlock()
		arrived <- struct{}{}
		select {
		case <-gate:
		case <-r.Context().Done():
		}
		mu.Lock()
		inflight--
		mu.Unlock()
		return false
	})

	c := f.client()
	job, err := c.Prefetch(t.Context(), names)
	if err != nil {
		t.Fatal(err)
	}
	for range workers {
		<-arrived
	}
	st, err := c.PrefetchStatus(t.Context(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running != workers || st.Queued != images-workers || st.Done {
		t.Errorf("with %d images held: running %d, queued %d, done %v; want %d, %d, false", workers, st.Running, st.Queued, st.Done, workers, images-workers)
	}
	for i, p := range st.Images {
		want := api.StateRunning
		if i >= workers {
			want = api.StateQueued
		}
		if p.State != want {
			t.Errorf("image %d (%s): state %q, want %q", i, p.Image, p.State, want)
		}
	}
	// Let one image go at a time: each frees a worker for the next queued one.
	for range images - workers {
		gate <- struct{}{}
		<-arrived
	}
	close(gate)
	for !st.Done {
		if st, err = c.PrefetchStatus(t.Context(), job.ID); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if maxSeen != workers {
		t.Errorf("at most %d images were asked of the upstream at once, want %d", maxSeen, workers)
	}
	if len(seen) != images {
		t.Errorf("%d images asked of the upstream, want %d", len(seen), images)
	}
	for i, p := range st.Images {
		if p.State != api.StateDone || !p.Done || p.Error != "" {
			t.Errorf("image %d: %+v, want done without error", i, p)
		}
	}
	if st.Running != 0 || st.Queued != 0 {
		t.Errorf("finished job: running %d, queued %d; want 0, 0", st.Running, st.Queued)
	}
}
