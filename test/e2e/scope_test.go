package e2e

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// Slots 80..84 belong to the repository scoping tests (this file).
const (
	slotScopeRepositories = 80
)

// TestScopeRepositories runs a blob cached for one repository against two others on
// a real lab: one whose upstream repository lacks it (refused, with one HEAD and no
// GET upstream) and one that holds the same image (served from the cache after one
// HEAD); and names outside the alias, by /v2/ and by the peer endpoint, which are
// refused without any upstream request.
func TestScopeRepositories(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotScopeRepositories, 2, 0)
	pool, err := lab.LoadPool(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	seedAs := func(repo string, seed uint64) lab.SeedResult {
		t.Helper()
		res, err := lab.Seed(ctxFor(t, time.Minute), lab.SeedOptions{Registry: l.Upstream, Repo: repo, Tag: "v1",
			Layers: 1, LayerSize: 512 << 10, RootCAs: pool, Seed: seed})
		if err != nil {
			t.Fatalf("seed %s: %v", repo, err)
		}
		return res
	}
	app := seedAs(lab.UpstreamPath+"/app", 80)
	twin := seedAs(lab.UpstreamPath+"/twin", 80)
	seedAs(lab.UpstreamPath+"/nothere", 81)
	secret := seedAs("other/secret", 82)
	d := app.Layers[0]
	if twin.Layers[0] != d {
		t.Fatalf("the twin's layer is %s, want the app's %s", twin.Layers[0], d)
	}
	c := labHTTP(t, l)
	blobPath := func(repo string) string { return "/v2/" + repo + "/blobs/" + d }
	since := func(mark int) []lab.AccessEntry { return upstreamLog(t, l)[mark:] }
	count := func(es []lab.AccessEntry, method, path string) int {
		n := 0
		for _, e := range es {
			if e.Method == method && e.Path == path {
				n++
			}
		}
		return n
	}

	if r := getBlob(ctxFor(t, time.Minute), c, l, 1, lab.UpstreamPath+"/app", d, ""); r.Status != http.StatusOK || !r.complete() || sha(r.Body) != d {
		t.Fatalf("app: %s", r)
	}
	eventually(t, 30*time.Second, "master-1 stores the blob", func() bool {
		_, ok := clStoreBlobs(t, l, "master-1")[d]
		return ok
	})

	t.Run("refused where the upstream lacks it", func(t *testing.T) {
		mark := len(upstreamLog(t, l))
		r := getBlob(ctxFor(t, time.Minute), c, l, 1, lab.UpstreamPath+"/nothere", d, "")
		if r.Status != http.StatusNotFound || !clHasCode(r.Body, "BLOB_UNKNOWN") {
			t.Errorf("nothere: want 404 BLOB_UNKNOWN, got %s: %.300s", r, r.Body)
		}
		if len(r.Body) > 1024 {
			t.Errorf("nothere: the refusal has %d bytes: the blob's?", len(r.Body))
		}
		head := blobPath(lab.UpstreamPath + "/nothere")
		eventually(t, 10*time.Second, "the upstream logs the HEAD under nothere", func() bool {
			return count(since(mark), http.MethodHead, head) == 1
		})
		if es := lab.BlobGETs(since(mark)); len(es) != 0 {
			t.Errorf("the refusal made upstream GETs:%s", describeEntries(es))
		}
	})

	t.Run("served where the upstream confirms it", func(t *testing.T) {
		mark := len(upstreamLog(t, l))
		for i := range 2 {
			r := getBlob(ctxFor(t, time.Minute), c, l, 1, lab.UpstreamPath+"/twin", d, "")
			if r.Status != http.StatusOK || !r.complete() || sha(r.Body) != d || r.Header.Get("Hopless-Cache") != "hit" {
				t.Errorf("twin GET %d: want a complete 200 hit of %s, got %s, Hopless-Cache %q", i+1, d, r, r.Header.Get("Hopless-Cache"))
			}
		}
		head := blobPath(lab.UpstreamPath + "/twin")
		eventually(t, 10*time.Second, "the upstream logs the HEAD under twin", func() bool {
			return count(since(mark), http.MethodHead, head) >= 1
		})
		es := since(mark)
		if n := count(es, http.MethodHead, head); n != 1 {
			t.Errorf("%d HEADs under twin, want 1: confirmed once, then linked:%s", n, describeEntries(es))
		}
		if gets := lab.BlobGETs(es); len(gets) != 0 {
			t.Errorf("serving the twin made upstream GETs:%s", describeEntries(gets))
		}
		if n := blobGETsUpstream(t, l)[d]; n != 1 {
			t.Errorf("the blob left the upstream %d times, want 1", n)
		}
	})

	t.Run("names outside the alias", func(t *testing.T) {
		mark := len(upstreamLog(t, l))
		for _, query := range []string{"", "?ns=" + l.ImageHost, "?ns=" + l.Upstream} {
			m, err := fetchManifest(ctxFor(t, time.Minute), c, l, 1, "other/secret", "v1", query)
			if err != nil {
				t.Fatal(err)
			}
			if m.Status != http.StatusNotFound || m.registryErrorCode() != "NAME_UNKNOWN" || !bytes.Contains(m.Body, []byte("not configured")) {
				t.Errorf("other/secret%s: want 404 NAME_UNKNOWN, not configured; got %s", query, m)
			}
		}
		q := url.Values{"upstream": {l.Upstream}, "repo": {"other/secret"}, "digest": {secret.Layers[0]}}
		r := clMust(t, c, http.MethodGet, clMasterURL(l, 1)+clPeerPath+"?"+q.Encode(),
			map[string]string{"Authorization": "Bearer " + clSecret(t, l.PeerTokenFile())}, nil)
		if r.Status != http.StatusNotFound || !clHasCode(r.Body, "NAME_UNKNOWN") {
			t.Errorf("the peer endpoint for other/secret: want 404 NAME_UNKNOWN, got %d: %.300s", r.Status, r.Body)
		}
		m, err := fetchManifest(ctxFor(t, time.Minute), c, l, 1, "other/secret", "v1", "?ns=docker.io")
		if err != nil {
			t.Fatal(err)
		}
		if m.Status != http.StatusForbidden || strings.Contains(string(m.Body), l.ImageHost) || strings.Contains(string(m.Body), l.Upstream) {
			t.Errorf("an unknown ns: want 403 naming no configured ns, got %s", m)
		}
		if es := since(mark); len(es) != 0 {
			t.Errorf("names outside the alias reached the upstream:%s", describeEntries(es))
		}
	})
}
