package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The cluster tests check registryd's cluster features on real labs: peer fill,
// owner failure, the peer endpoint's authentication and loop freedom, eviction and
// pins, prefetch, the read-only guard, client and upstream authentication, and input
// validation. They assert what can be observed: the upstream's access log, the
// masters' access logs, digests, files on disk and metrics; never timing.

// TestClusterPeerFill pulls one image through three masters at once: the upstream
// sees each blob once, each master serves its own client, and the non-owners fill
// from the owner through the peer endpoint.
func TestClusterPeerFill(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterPeerFill, 3, 0)
	clWaitPeersUp(t, l)
	repo := lab.UpstreamPath + "/peerfill"
	img := seed(t, l, repo, "v1", 4, 4<<20)
	c := clHTTP(t, l)

	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 1; i <= 3; i++ {
		wg.Go(func() {
			<-start
			for _, d := range img.Layers {
				if err := clGetBlob(c, l, i, repo, d, nil); err != nil {
					t.Errorf("master-%d: %v", i, err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	up := clUpstreamGETs(t, l)
	for _, d := range img.Layers {
		gets := up[d]
		if len(gets) != 1 {
			t.Errorf("blob %s: want exactly 1 upstream GET, got %d: %+v", d, len(gets), gets)
			continue
		}
		if e := gets[0]; e.Status != http.StatusOK || e.Aborted || e.Range != "" {
			t.Errorf("blob %s: upstream GET was not one whole 200: %+v", d, e)
		}
	}
	for _, m := range l.Masters {
		for _, d := range img.Layers {
			if !clServedBlob(t, l, m.Name, d) {
				t.Errorf("%s's log shows no 200 GET of blob %s: it did not serve its client", m.Name, d)
			}
		}
	}
	peer := clPeerRequests(t, l)
	total := 0
	for _, n := range peer {
		total += n
	}
	if total == 0 {
		t.Errorf("no master's log shows a %s request: the masters did not fill from each other", clPeerPath)
	}
	// With every master healthy, each blob's two non-owners ask its owner.
	owners := map[string]int{}
	for _, d := range img.Layers {
		owners[clOwner(l, d)]++
	}
	for _, m := range l.Masters {
		if want := 2 * owners[m.Name]; peer[m.Name] != want {
			t.Errorf("%s served %d peer requests, want %d (2 for each of the %d blobs it owns); all: %v",
				m.Name, peer[m.Name], want, owners[m.Name], peer)
		}
	}
}

// TestClusterOwnerDown kills the owner of some blobs with SIGKILL, first while it
// streams one of them to another master, then idle: every blob still pulls whole
// through the other masters, from the upstream.
func TestClusterOwnerDown(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterOwnerDown, 3, 0)
	clWaitPeersUp(t, l)
	repo := lab.UpstreamPath + "/ownerdown"
	owned, _ := clSeedUntil(t, l, repo, 3, func(d string) bool { return clOwner(l, d) == "master-2" })
	var big string
	for n := 1; big == ""; n++ {
		if n > 20 {
			t.Fatal("seeded 20 images and none has a layer that master-2 owns")
		}
		img := seed(t, l, repo, fmt.Sprintf("big%d", n), 1, 4<<20)
		if clOwner(l, img.Layers[0]) == "master-2" {
			big = img.Layers[0]
		}
	}
	c := clHTTP(t, l)

	// The owner model matches the masters: master-1 fills master-2's blob from it.
	if err := clGetBlob(c, l, 1, repo, owned[0], nil); err != nil {
		t.Fatal(err)
	}
	if peer := clPeerRequests(t, l); peer["master-2"] != 1 || peer["master-1"]+peer["master-3"] != 0 {
		t.Fatalf("blob %s through master-1: want exactly one peer request, to its owner master-2; got %v", owned[0], peer)
	}

	// master-2 dies while it streams big to master-1: the upstream is slowed down so
	// that master-2's fill is seen half done on disk before the kill.
	if err := lab.WriteFaults(l.FaultsFile(), lab.Faults{ThrottleBPS: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- clGetBlob(c, l, 1, repo, big, nil) }()
	spool := filepath.Join(l.MasterData("master-2"), "_spool", "sha256", strings.TrimPrefix(big, "sha256:")+".partial")
	if why := clPoll(30*time.Second, func() string {
		if fi, err := os.Stat(spool); err != nil || fi.Size() < 1<<20 {
			return fmt.Sprintf("master-2 is not filling %s (%s: %v)", big, spool, err)
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
	clKill(t, l, "master-2")
	if err := lab.WriteFaults(l.FaultsFile(), lab.Faults{}); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("blob %s through master-1, its owner killed mid-stream: %v", big, err)
	}
	// One GET by master-2, cut by the kill, then master-1 resumes where the peer
	// stream stopped instead of starting over.
	if gets := clUpstreamGETs(t, l)[big]; len(gets) != 2 || gets[1].Status != http.StatusPartialContent ||
		!strings.HasPrefix(gets[1].Range, "bytes=") || strings.HasPrefix(gets[1].Range, "bytes=0-") {
		t.Errorf("blob %s: want master-2's GET and then master-1's Range GET from where it stopped; upstream saw %+v", big, gets)
	}

	// master-1 still serves the blob it filled, from its own store.
	if err := clGetBlob(c, l, 1, repo, owned[0], nil); err != nil {
		t.Errorf("with master-2 killed, master-1: cached blob: %v", err)
	} else if gets := clUpstreamGETs(t, l)[owned[0]]; len(gets) != 1 {
		t.Errorf("cached blob %s was fetched from upstream again: %d GETs", owned[0], len(gets))
	}
	// Fresh blobs that master-2 owned: master-3 may not have noticed its death yet and
	// ask it first; master-1 has ejected it. Both fall back to the upstream.
	for _, x := range []struct {
		master int
		d      string
	}{{3, owned[1]}, {1, owned[2]}} {
		if err := clGetBlob(c, l, x.master, repo, x.d, nil); err != nil {
			t.Errorf("with its owner master-2 killed, master-%d: %v", x.master, err)
			continue
		}
		if gets := clUpstreamGETs(t, l)[x.d]; len(gets) != 1 || gets[0].Status != http.StatusOK || gets[0].Aborted {
			t.Errorf("blob %s through master-%d with its owner down: want one whole upstream GET, got %+v", x.d, x.master, gets)
		}
	}
}

// clKill sends SIGKILL to a lab process and waits until it is gone.
func clKill(t *testing.T, l *lab.Lab, name string) {
	t.Helper()
	if err := l.Signal(name, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if why := clPoll(10*time.Second, func() string {
		for _, s := range l.Status() {
			if s.Name == name && s.Alive {
				return name + " still runs after SIGKILL"
			}
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
}

// TestClusterPeerAuth checks the peer endpoint's token and upstream checks.
func TestClusterPeerAuth(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterPeerAuth, 2, 0)
	repo := lab.UpstreamPath + "/peerauth"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	c := clHTTP(t, l)
	token := clSecret(t, l.PeerTokenFile())
	peerURL := func(upstream, d string) string {
		q := url.Values{"upstream": {upstream}, "repo": {repo}, "digest": {d}}
		return clMasterURL(l, 1) + clPeerPath + "?" + q.Encode()
	}
	d := img.Layers[0]

	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"no token", nil},
		{"wrong token", map[string]string{"Authorization": "Bearer " + token + "x"}},
		{"the API token", map[string]string{"Authorization": "Bearer " + clSecret(t, l.APIToken)}},
		{"the token as Basic", map[string]string{"Authorization": "Basic " + token}},
	} {
		before := clUpstreamCount(t, l)
		r := clMust(t, c, http.MethodGet, peerURL(l.Upstream, d), tc.hdr, nil)
		if r.Status != http.StatusUnauthorized {
			t.Errorf("%s: want 401, got %d: %s", tc.name, r.Status, r.Body)
		}
		if n := clUpstreamCount(t, l); n != before {
			t.Errorf("%s: a refused peer request reached the upstream (%d -> %d requests)", tc.name, before, n)
		}
	}

	auth := map[string]string{"Authorization": "Bearer " + token}
	r := clMust(t, c, http.MethodGet, peerURL(l.Upstream, d), auth, nil)
	if r.Status != http.StatusOK || clDigest(r.Body) != d {
		t.Errorf("with the peer token: want 200 and blob %s, got %d and %d bytes of %s", d, r.Status, len(r.Body), clDigest(r.Body))
	}

	before := clUpstreamCount(t, l)
	fresh := img.Layers[1]
	r = clMust(t, c, http.MethodGet, peerURL("evil.example:443", fresh), auth, nil)
	if r.Status != http.StatusNotFound {
		t.Errorf("unknown upstream: want 404, got %d: %s", r.Status, r.Body)
	}
	if n := clUpstreamCount(t, l); n != before {
		t.Errorf("a peer request for an unknown upstream reached the upstream (%d -> %d requests)", before, n)
	}
	if _, ok := clStoreBlobs(t, l, "master-1")[fresh]; ok {
		t.Errorf("blob %s is stored after a peer request for an unknown upstream", fresh)
	}

	log, err := os.ReadFile(l.Masters[0].Log)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(log, []byte(token)) {
		t.Errorf("master-1's log holds the peer token")
	}
}

// TestClusterPeerNoLoop asks a master's peer endpoint for a blob that another master
// owns: the master fills it from the upstream itself and never asks a peer.
func TestClusterPeerNoLoop(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterNoLoop, 3, 0)
	repo := lab.UpstreamPath + "/noloop"
	picked, _ := clSeedUntil(t, l, repo, 1, func(d string) bool { return clOwner(l, d) != "master-1" })
	d := picked[0]
	c := clHTTP(t, l)

	q := url.Values{"upstream": {l.Upstream}, "repo": {repo}, "digest": {d}}
	r := clMust(t, c, http.MethodGet, clMasterURL(l, 1)+clPeerPath+"?"+q.Encode(),
		map[string]string{"Authorization": "Bearer " + clSecret(t, l.PeerTokenFile())}, nil)
	if r.Status != http.StatusOK || clDigest(r.Body) != d {
		t.Fatalf("peer GET of %s (owned by %s) on master-1: got %d, %d bytes: %.300s", d, clOwner(l, d), r.Status, len(r.Body), r.Body)
	}
	if gets := clUpstreamGETs(t, l)[d]; len(gets) != 1 || gets[0].Status != http.StatusOK {
		t.Errorf("blob %s: want exactly 1 upstream GET, got %+v", d, gets)
	}
	peer := clPeerRequests(t, l)
	if peer["master-1"] != 1 || peer["master-2"] != 0 || peer["master-3"] != 0 {
		t.Errorf("want only our peer request, on master-1; the masters' logs show %v", peer)
	}
}

// clTightLab is one master whose store holds 24 MiB, evicting every second.
func clTightLab(t *testing.T, slot int) *lab.Lab {
	return upLab(t, slot, 1, 0, func(o *lab.Options) {
		o.Registryd = lab.RegistrydOptions{MaxBytes: "24MiB", EvictInterval: "1s", NoPeers: true}
	})
}

const clTightMax = 24 << 20

// clWaitStore polls until master-1's blobs take at most limit bytes and cond holds, and
// fails with the last state otherwise.
func clWaitStore(t *testing.T, l *lab.Lab, limit int64, what string, cond func(map[string]int64) string) map[string]int64 {
	t.Helper()
	var blobs map[string]int64
	why := clPoll(30*time.Second, func() string {
		blobs = clStoreBlobs(t, l, "master-1")
		if n := clTotal(blobs); n > limit {
			return fmt.Sprintf("the store holds %d bytes of blobs, over %d", n, limit)
		}
		if cond != nil {
			return cond(blobs)
		}
		return ""
	})
	if why != "" {
		t.Fatalf("%s: %s", what, why)
	}
	return blobs
}

func clPresent(blobs map[string]int64, ds []string) (in, out []string) {
	for _, d := range ds {
		if _, ok := blobs[d]; ok {
			in = append(in, d)
		} else {
			out = append(out, d)
		}
	}
	return in, out
}

// TestClusterEvictBySize pulls three images of 16 MiB through a master that may keep
// 24 MiB: the least recently used image goes, the newest stays and still serves from
// disk.
func TestClusterEvictBySize(t *testing.T) {
	t.Parallel()
	l := clTightLab(t, slotClusterEvict)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/evict"
	var blobs [][]string
	for i := 1; i <= 3; i++ {
		tag := fmt.Sprintf("v%d", i)
		img := seed(t, l, repo, tag, 2, 8<<20)
		blobs = append(blobs, clPullHTTP(t, c, l, 1, repo, tag, img, nil))
		clWaitStore(t, l, clTightMax+img.Bytes/2, fmt.Sprintf("after pulling image %d", i), nil)
	}

	clWaitStore(t, l, clTightMax, "after pulling three images", func(b map[string]int64) string {
		if in, _ := clPresent(b, blobs[0]); len(in) > 0 {
			return fmt.Sprintf("blobs %v of the least recently used image are still stored", in)
		}
		return ""
	})
	stored := clStoreBlobs(t, l, "master-1")
	if _, out := clPresent(stored, blobs[2]); len(out) > 0 {
		t.Fatalf("blobs %v of the newest image were evicted; the store holds %v", out, stored)
	}
	for d, n := range stored {
		if n <= 0 {
			t.Errorf("stored blob %s is empty", d)
		}
	}

	before := clUpstreamGETs(t, l)
	for _, d := range blobs[2] {
		if err := clGetBlob(c, l, 1, repo, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	after := clUpstreamGETs(t, l)
	for _, d := range blobs[2] {
		if len(after[d]) != len(before[d]) {
			t.Errorf("blob %s of the newest image was fetched from upstream again (%d -> %d GETs)", d, len(before[d]), len(after[d]))
		}
	}
	if n := clMetric(t, l, 1, "hopless_registryd_evictions_total"); n <= 0 {
		t.Errorf("hopless_registryd_evictions_total is %v after evicting", n)
	}
}

// TestClusterPins pins the first image through the API: it survives two more images
// that overflow the store, while an unpinned one is evicted.
func TestClusterPins(t *testing.T) {
	t.Parallel()
	l := clTightLab(t, slotClusterPins)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/pins"
	pinsURL := clMasterURL(l, 1) + "/hopless/v1/pins"
	token, err := l.NodeToken("node-1")
	if err != nil {
		t.Fatal(err)
	}
	otherNode, err := l.NodeToken("node-2")
	if err != nil {
		t.Fatal(err)
	}

	img1 := seed(t, l, repo, "v1", 2, 8<<20)
	pinned := clPullHTTP(t, c, l, 1, repo, "v1", img1, nil)

	body := func(d string) *strings.Reader {
		return strings.NewReader(fmt.Sprintf(`{"source":"node-1","images":[{"image":%q,"digest":%q}]}`, clLocalName(repo)+":v1", d))
	}
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		digest string
		status int
		code   string
	}{
		{"no token", nil, img1.Digest, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"wrong token", map[string]string{"Authorization": "Bearer " + token + "x"}, img1.Digest, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"Basic scheme", map[string]string{"Authorization": "Basic " + token}, img1.Digest, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"the API token", map[string]string{"Authorization": "Bearer " + clSecret(t, l.APIToken)}, img1.Digest, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"another node's token", map[string]string{"Authorization": "Bearer " + otherNode}, img1.Digest, http.StatusForbidden, "DENIED"},
		{"bad digest", map[string]string{"Authorization": "Bearer " + token}, "sha256:xyz", http.StatusBadRequest, "DIGEST_INVALID"},
		{"bad digest algorithm", map[string]string{"Authorization": "Bearer " + token}, "md5:" + strings.Repeat("0", 32), http.StatusBadRequest, "DIGEST_INVALID"},
		{"pin", map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}, img1.Digest, http.StatusOK, ""},
	} {
		r := clMust(t, c, http.MethodPut, pinsURL, tc.hdr, body(tc.digest))
		if r.Status != tc.status || (tc.code != "" && !clHasCode(r.Body, tc.code)) {
			t.Errorf("PUT pins, %s: want %d %s, got %d: %s", tc.name, tc.status, tc.code, r.Status, r.Body)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Pins are on disk once acknowledged: they survive a kill -9.
	clKill(t, l, "master-1")
	if err := l.Start(ctxFor(t, time.Minute), "master-1"); err != nil {
		t.Fatal(err)
	}

	var unpinned [][]string
	for i := 2; i <= 3; i++ {
		tag := fmt.Sprintf("v%d", i)
		img := seed(t, l, repo, tag, 2, 8<<20)
		unpinned = append(unpinned, clPullHTTP(t, c, l, 1, repo, tag, img, nil))
	}
	stored := clWaitStore(t, l, clTightMax, "after pulling two more images", func(b map[string]int64) string {
		if in, _ := clPresent(b, unpinned[0]); len(in) > 0 {
			return fmt.Sprintf("blobs %v of the unpinned image v2 are still stored", in)
		}
		return ""
	})
	if _, out := clPresent(stored, pinned); len(out) > 0 {
		t.Fatalf("blobs %v of the pinned image were evicted; the store holds %v", out, stored)
	}
	before := clUpstreamGETs(t, l)
	for _, d := range pinned {
		if err := clGetBlob(c, l, 1, repo, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	after := clUpstreamGETs(t, l)
	for _, d := range pinned {
		if len(after[d]) != len(before[d]) {
			t.Errorf("pinned blob %s was fetched from upstream again (%d -> %d GETs)", d, len(before[d]), len(after[d]))
		}
	}
}

// TestClusterPrefetchCLI warms a master with registryd prefetch; a node then pulls
// the image with the upstream stopped.
func TestClusterPrefetchCLI(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterPrefetch, 1, 1)
	repo := lab.UpstreamPath + "/prefetch"
	img := seed(t, l, repo, "v1", 3, 1<<20)
	image := clLocalName(repo) + ":v1"

	ctx := ctxFor(t, 2*time.Minute)
	out, err := exec.CommandContext(ctx, filepath.Join(root(t), "bin", "registryd"), "prefetch",
		"--config", l.MasterConfig("master-1"), image).CombinedOutput()
	t.Logf("registryd prefetch %s:\n%s", image, out)
	if err != nil {
		t.Fatalf("registryd prefetch: %v", err)
	}
	// Three layers and the config.
	for _, want := range []string{"prefetch job ", image + ": 4/4 blobs", ", done"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("prefetch output lacks %q", want)
		}
	}
	if strings.Contains(string(out), "failed") {
		t.Errorf("prefetch output reports a failure")
	}
	up := clUpstreamGETs(t, l)
	for _, d := range img.Layers {
		if len(up[d]) != 1 {
			t.Errorf("layer %s: want 1 upstream GET from the prefetch, got %d", d, len(up[d]))
		}
	}

	if err := l.Stop("upstream"); err != nil {
		t.Fatal(err)
	}
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
}

// TestClusterReadOnly sends every write method to /v2/: each is refused as
// UNSUPPORTED, and nothing reaches the upstream.
func TestClusterReadOnly(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterReadOnly, 1, 0)
	c := clHTTP(t, l)
	base := clMasterURL(l, 1) + "/v2/" + lab.LocalPrefix + "/readonly"
	d := "sha256:" + strings.Repeat("ab", 32)
	before := clUpstreamCount(t, l)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPut, "/manifests/v1"},
		{http.MethodPut, "/manifests/" + d},
		{http.MethodPost, "/blobs/uploads/"},
		{http.MethodPost, "/blobs/uploads/?mount=" + d + "&from=system/deckhouse/other"},
		{http.MethodPatch, "/blobs/uploads/0123-abcd"},
		{http.MethodPut, "/blobs/uploads/0123-abcd?digest=" + d},
		{http.MethodDelete, "/manifests/" + d},
		{http.MethodDelete, "/blobs/" + d},
		{http.MethodDelete, "/blobs/uploads/0123-abcd"},
		// An upload session is write state: reading it is refused too.
		{http.MethodGet, "/blobs/uploads/0123-abcd"},
		{http.MethodPut, "/../../"},
	} {
		r := clMust(t, c, tc.method, base+tc.path, map[string]string{"Content-Type": "application/octet-stream"}, strings.NewReader("data"))
		if r.Status != http.StatusMethodNotAllowed || !clHasCode(r.Body, "UNSUPPORTED") {
			t.Errorf("%s %s: want 405 UNSUPPORTED, got %d: %s", tc.method, tc.path, r.Status, r.Body)
		}
		if allow, ok := r.Header["Allow"]; !ok || strings.Contains(strings.Join(allow, ","), tc.method) {
			t.Errorf("%s %s: want an Allow header without %s, got %q", tc.method, tc.path, tc.method, allow)
		}
	}
	for _, p := range []string{"/v2/", "/v2"} {
		r := clMust(t, c, http.MethodDelete, clMasterURL(l, 1)+p, nil, nil)
		if r.Status != http.StatusMethodNotAllowed || !clHasCode(r.Body, "UNSUPPORTED") {
			t.Errorf("DELETE %s: want 405 UNSUPPORTED, got %d: %s", p, r.Status, r.Body)
		}
	}
	if n := clUpstreamCount(t, l); n != before {
		t.Errorf("refused writes reached the upstream (%d -> %d requests)", before, n)
	}
}

func clRandom(t *testing.T, prefix string) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// TestClusterAuth restarts a master with htpasswd client authentication and an
// upstream that wants credentials: anonymous clients are challenged, the right user
// pulls, and neither password reaches the master's log.
func TestClusterAuth(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterAuth, 1, 0)
	repo := lab.UpstreamPath + "/auth"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	c := clHTTP(t, l)

	clientUser, clientPass := "puller", clRandom(t, "client-pw-")
	upUser, upPass := "mirror", clRandom(t, "upstream-pw-")
	htpasswd := filepath.Join(l.MasterDir("master-1"), "htpasswd")
	creds := filepath.Join(l.MasterDir("master-1"), "upstream.credentials")
	if err := lab.WriteHtpasswd(htpasswd, clientUser, clientPass); err != nil {
		t.Fatal(err)
	}
	if err := lab.WriteCredentials(creds, upUser, upPass); err != nil {
		t.Fatal(err)
	}
	proxy, err := l.StartAuthUpstream(upUser, upPass)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proxy.Close(); err != nil {
			t.Errorf("closing the authenticating upstream: %v", err)
		}
	})
	err = l.ReconfigureMaster(ctxFor(t, time.Minute), "master-1", func(cfg string) (string, error) {
		oldURL := fmt.Sprintf("url = %q\n", "https://"+l.Upstream)
		if strings.Count(cfg, oldURL) != 1 || strings.Count(cfg, "[upstream.tls]\n") != 1 {
			return "", fmt.Errorf("unexpected registryd.toml:\n%s", cfg)
		}
		cfg = strings.Replace(cfg, oldURL, fmt.Sprintf("url = %q\n", "https://"+proxy.Addr), 1)
		cfg = strings.Replace(cfg, "[upstream.tls]\n", fmt.Sprintf("[upstream.auth]\ncredentials_file = %q\n[upstream.tls]\n", creds), 1)
		return cfg + fmt.Sprintf("\n[auth]\nhtpasswd = %q\n", htpasswd), nil
	})
	if err != nil {
		t.Fatal(err)
	}

	base := clMasterURL(l, 1) + "/v2/"
	basic := func(u, p string) map[string]string {
		return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p))}
	}
	r := clMust(t, c, http.MethodGet, base, nil, nil)
	if r.Status != http.StatusUnauthorized || !strings.HasPrefix(strings.ToLower(r.Header.Get("WWW-Authenticate")), "basic ") {
		t.Errorf("anonymous GET /v2/: want 401 with a Basic challenge, got %d, WWW-Authenticate %q", r.Status, r.Header.Get("WWW-Authenticate"))
	}
	if r := clMust(t, c, http.MethodGet, base, basic(clientUser, clientPass+"x"), nil); r.Status != http.StatusUnauthorized {
		t.Errorf("GET /v2/ with a wrong password: want 401, got %d", r.Status)
	}
	before := clUpstreamCount(t, l)
	if err := clGetBlob(c, l, 1, repo, img.Layers[0], nil); err == nil || !strings.Contains(err.Error(), "status 401") {
		t.Errorf("anonymous blob GET: want 401, got %v", err)
	}
	if n := clUpstreamCount(t, l); n != before {
		t.Errorf("an anonymous blob GET reached the upstream (%d -> %d requests)", before, n)
	}
	if r := clMust(t, c, http.MethodGet, base, basic(clientUser, clientPass), nil); r.Status != http.StatusOK {
		t.Errorf("GET /v2/ as %s: want 200, got %d: %s", clientUser, r.Status, r.Body)
	}
	clPullHTTP(t, c, l, 1, repo, "v1", img, basic(clientUser, clientPass))
	up := clUpstreamGETs(t, l)
	for _, d := range img.Layers {
		if len(up[d]) != 1 {
			t.Errorf("layer %s: want 1 upstream GET through the authenticating proxy, got %d", d, len(up[d]))
		}
	}
	if proxy.Authorized.Load() == 0 {
		t.Errorf("no request reached the upstream with its credentials")
	}
	t.Logf("authenticating upstream: %d authorized, %d refused", proxy.Authorized.Load(), proxy.Refused.Load())

	noSecrets(t, l, map[string]string{
		"client password": clientPass, "upstream password": upPass,
		"client Basic credentials":   base64.StdEncoding.EncodeToString([]byte(clientUser + ":" + clientPass)),
		"upstream Basic credentials": base64.StdEncoding.EncodeToString([]byte(upUser + ":" + upPass)),
	})
}

// TestClusterBadInput sends malformed names, digests, tags and ns values: each gets
// its registry error code, and none reaches the upstream or writes a file outside the
// master's storage.
func TestClusterBadInput(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotClusterBadInput, 1, 0)
	c := clHTTP(t, l)
	base := clMasterURL(l, 1)
	hexd := strings.Repeat("0123456789abcdef", 4)
	d := "sha256:" + hexd
	long := strings.Repeat("a", 200) + "/" + strings.Repeat("b", 100)

	filesBefore := clWalk(t, l.Dir)
	upBefore := clUpstreamCount(t, l)
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/system/deckhouse/../../../etc/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/../../../../tmp/blobs/" + d, 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/%2e%2e/%2e%2e/%2e%2e/etc/blobs/" + d, 400, "NAME_INVALID"},
		{"/v2/system%2fdeckhouse%2f..%2f..%2fetc/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/./x/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse//x/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/System/Deckhouse/x/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/X/blobs/" + d, 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/x%00y/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/" + long + "/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/../x/tags/list", 400, "NAME_INVALID"},
		{"/v2/../../etc/passwd", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/x/manifests/v1/..", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/x/blobs/" + d + "/../../../../../etc", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/x/blobs/uploads/../../../../etc/manifests/v1", 400, "NAME_INVALID"},
		{"/v2/system/deckhouse/x/blobs/sha256:zz", 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/blobs/sha256:" + hexd[:63], 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/blobs/sha256:" + strings.ToUpper(hexd), 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/blobs/md5:" + hexd[:32], 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/blobs/sha256:" + hexd[:62] + "..", 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/manifests/sha256:" + hexd + "00", 400, "DIGEST_INVALID"},
		{"/v2/system/deckhouse/x/manifests/-v1", 400, "TAG_INVALID"},
		{"/v2/system/deckhouse/x/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		{"/v2/system/deckhouse/x/manifests/v1?ns=evil.example.com", 403, "DENIED"},
		{"/v2/system/deckhouse/x/blobs/" + d + "?ns=evil.example.com", 403, "DENIED"},
		{"/v2/system/deckhouse/x/tags/list?ns=" + url.QueryEscape("evil.example.com:5000"), 403, "DENIED"},
	} {
		r := clMust(t, c, http.MethodGet, base+tc.path, map[string]string{"Accept": clManifestAccept}, nil)
		if r.Status != tc.status || !clHasCode(r.Body, tc.code) {
			t.Errorf("GET %.120s: want %d %s, got %d: %.300s", tc.path, tc.status, tc.code, r.Status, r.Body)
		}
	}

	if n := clUpstreamCount(t, l); n != upBefore {
		entries, _ := l.UpstreamLog()
		t.Errorf("bad requests reached the upstream: %+v", entries[upBefore:])
	}
	data := l.MasterData("master-1") + string(filepath.Separator)
	for p := range clWalk(t, l.Dir) {
		if !filesBefore[p] && !strings.HasPrefix(p, data) {
			t.Errorf("new file outside master-1's storage: %s", p)
		}
	}
}
