package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file freeze the upstream (SIGSTOP: it accepts connections and
// reads nothing) after an image went through master-1, and check what the masters
// serve meanwhile: the last known answer of a tag once its revalidation has had no
// answer for cache.stale_after, a peer's answer on a master that never saw the tag,
// and, for cache.negative_ttl after the upstream's failure, no new request to it.
// They use slots 70..74.
const (
	slotStalePeers    = 70
	slotStaleNegative = 71
)

// stTagTTL is the masters' cache.tag_ttl; stale_after and negative_ttl keep their
// defaults (1s and 3s), as the upstream's response_header (4s).
const stTagTTL = "2s"

// stFreezeUpstream stops the upstream until the test ends.
func stFreezeUpstream(t *testing.T, l *lab.Lab) {
	t.Helper()
	if err := l.Signal("upstream", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Signal("upstream", syscall.SIGCONT); err != nil {
			t.Errorf("continuing the upstream: %v", err)
		}
	})
}

// stGetTag GETs the manifest of repo:tag from master i and checks that it is a 200
// with the image's manifest; it returns the response's Hopless-Cache.
func stGetTag(t *testing.T, c *http.Client, l *lab.Lab, i int, repo, tag string, img lab.SeedResult) string {
	t.Helper()
	u := clMasterURL(l, i) + "/v2/" + clLocalName(repo) + "/manifests/" + tag
	r, err := clDo(c, http.MethodGet, u, map[string]string{"Accept": clManifestAccept}, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	if r.Status != http.StatusOK || clDigest(r.Body) != img.Digest || r.Header.Get("Docker-Content-Digest") != img.Digest {
		t.Fatalf("GET %s: status %d, digest %q: %.300s; want 200 with %s", u, r.Status, r.Header.Get("Docker-Content-Digest"), r.Body, img.Digest)
	}
	return r.Header.Get("Hopless-Cache")
}

// stStaleLines returns master i's "serving stale" log records for repo:tag.
func stStaleLines(t *testing.T, l *lab.Lab, i int, repo, tag string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, rec := range masterLogLines(t, l, i, "serving stale") {
		if rec["repo"] == repo && rec["tag"] == tag {
			out = append(out, rec)
		}
	}
	return out
}

// TestStalePeers pulls an image through master-1 only and freezes the upstream: a
// master that never saw the tag serves it from master-1's answer, marked stale, and
// a node pulls the image through all the masters.
func TestStalePeers(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotStalePeers, 3, 1, tagTTL(stTagTTL), inprocess())
	clWaitPeersUp(t, l)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/stale-peers"
	img := seed(t, l, repo, "v1", 2, 64<<10)
	clPullHTTP(t, c, l, 1, repo, "v1", img, nil)
	stFreezeUpstream(t, l)

	// master-3 never saw the tag: its revalidation hangs, so it asks its peers after
	// stale_after and serves master-1's answer.
	if got := stGetTag(t, c, l, 3, repo, "v1", img); got != "stale" {
		t.Errorf("master-3's answer says Hopless-Cache %q, want stale", got)
	}
	if n := metric(t, l, 3, "hopless_registryd_stale_served_total", map[string]string{"kind": "peer"}); n != 1 {
		t.Errorf("master-3 served %v stale answers from a peer, want 1", n)
	}
	if n := metric(t, l, 3, "hopless_registryd_peer_lookups_total", map[string]string{"kind": "tag", "result": "ok"}); n < 1 {
		t.Errorf("master-3 has %v successful peer tag lookups, want at least 1", n)
	}
	if recs := stStaleLines(t, l, 3, repo, "v1"); len(recs) != 1 || recs[0]["kind"] != "peer" || recs[0]["digest"] != img.Digest {
		t.Errorf("master-3's \"serving stale\" lines for %s:v1: %v, want one of kind peer naming %s", repo, recs, img.Digest)
	}
	// master-1 answered from its store: it asked no peer itself.
	if n := metric(t, l, 1, "hopless_registryd_peer_lookups_total", nil); n != 0 {
		t.Errorf("master-1 asked its peers %v times, want 0", n)
	}

	// Once the tag TTL has passed, a node pulls through the masters: each serves the
	// tag from what it or a peer last knew, and the blobs from its store or their
	// owners.
	eventually(t, waitLimit, "master-1 serves "+repo+":v1 stale", func() bool {
		return stGetTag(t, c, l, 1, repo, "v1", img) == "stale"
	})
	staleServed := func() float64 {
		var n float64
		for i := range l.Masters {
			n += metric(t, l, i+1, "hopless_registryd_stale_served_total", nil)
		}
		return n
	}
	before := staleServed()
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	if n := staleServed() - before; n < 1 {
		t.Errorf("the masters served %v stale answers to the node's pull, want at least 1", n)
	}
}

// TestStaleNegative freezes the upstream after an image went through the master:
// the first request after the tag TTL is served the last known answer once
// stale_after has passed, the revalidation fails after the upstream's
// response_header, and for negative_ttl from then on the requests are served stale
// without a new revalidation, as the upstream's access log shows once it runs again.
func TestStaleNegative(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotStaleNegative, 1, 0, tagTTL(stTagTTL))
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/stale-negative"
	img := seed(t, l, repo, "v1", 1, 4096)
	clPullHTTP(t, c, l, 1, repo, "v1", img, nil)
	since := len(upstreamLog(t, l))
	stFreezeUpstream(t, l)

	// Fresh answers until the tag TTL passes; then one revalidation, which hangs.
	eventually(t, waitLimit, "master-1 serves "+repo+":v1 stale", func() bool {
		return stGetTag(t, c, l, 1, repo, "v1", img) == "stale"
	})
	if n := metric(t, l, 1, "hopless_registryd_stale_served_total", map[string]string{"kind": "timeout"}); n < 1 {
		t.Errorf("master-1 served %v stale answers of kind timeout, want at least 1", n)
	}

	// The revalidation fails after the upstream's response_header; the failure is
	// remembered.
	var remembered map[string]any
	eventually(t, waitLimit, "master-1 remembers the upstream's failure", func() bool {
		for _, rec := range masterLogLines(t, l, 1, "remembering the upstream's failure") {
			if rec["repo"] == repo {
				remembered = rec
				return true
			}
		}
		return false
	})
	if f, _ := remembered["failure"].(string); !strings.HasSuffix(f, "reason=timeout") {
		t.Errorf("the remembered failure is %q, want a timeout", f)
	}
	negative := metric(t, l, 1, "hopless_registryd_stale_served_total", map[string]string{"kind": "negative"})
	const n = 5
	for range n {
		if got := stGetTag(t, c, l, 1, repo, "v1", img); got != "stale" {
			t.Errorf("within negative_ttl: Hopless-Cache %q, want stale", got)
		}
	}
	if got := metric(t, l, 1, "hopless_registryd_stale_served_total", map[string]string{"kind": "negative"}) - negative; got != n {
		t.Errorf("%d requests within negative_ttl were served %v stale answers of kind negative, want %d", n, got, n)
	}

	// Let the upstream read what was sent to it while it was stopped; a request of
	// our own after that marks the end of its backlog.
	if err := l.Signal("upstream", syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	marker := "/v2/marker-" + hex.EncodeToString(b) + "/manifests/none"
	if _, err := clDo(c, http.MethodGet, "https://"+l.Upstream+marker, nil, nil); err != nil {
		t.Fatalf("GET %s from the upstream: %v", marker, err)
	}
	eventually(t, waitLimit, "the upstream logs the marker request", func() bool {
		for _, e := range upstreamLog(t, l)[since:] {
			if e.Path == marker {
				return true
			}
		}
		return false
	})
	reqs := upstreamManifestReads(t, l, since, repo, "v1")
	t.Logf("the upstream got %d requests for %s:v1 while it was stopped:%s", len(reqs), repo, describeEntries(reqs))
	if len(reqs) > 1 {
		t.Errorf("the upstream got %d requests for %s:v1 while it was stopped, want at most 1 (the revalidation that failed):%s",
			len(reqs), repo, describeEntries(reqs))
	}
	recs := stStaleLines(t, l, 1, repo, "v1")
	kinds := map[any]int{}
	for _, rec := range recs {
		kinds[rec["kind"]]++
	}
	if kinds["timeout"] < 1 || kinds["negative"] != n {
		t.Errorf("master-1's \"serving stale\" lines by kind: %v, want timeout at least once and negative %d times", kinds, n)
	}
}
