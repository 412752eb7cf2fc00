package api_test

import (
	"bytes"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/registrytest"
)

// TestPeerBlobScope: the peer endpoint serves a cached blob under another
// repository only once the upstream confirms it there, and refuses repositories
// that no client name maps to without asking the upstream.
func TestPeerBlobScope(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	f.up.Push(t, registrytest.UpstreamPath+"/twin", "v1", f.img)
	f.up.Push(t, "other/secret", "v1", f.img)
	layer := registrytest.Blobs(t, f.img)[1]
	q := func(repo string) string {
		return "/hopless/v1/peer/blob?" + url.Values{"upstream": {f.up.Host}, "repo": {repo}, "digest": {layer.String()}}.Encode()
	}
	auth := "Bearer " + peerToken
	heads := func(repo string) int {
		return f.up.Count(func(r registrytest.Request) bool {
			return r.Method == http.MethodHead && r.Path == "/v2/"+repo+"/blobs/"+layer.String()
		})
	}

	resp, want := f.do(t, http.MethodGet, q(repo), auth, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", repo, resp.StatusCode, want)
	}
	nothere := registrytest.UpstreamPath + "/nothere"
	resp, b := f.do(t, http.MethodGet, q(nothere), auth, "")
	if resp.StatusCode != http.StatusNotFound || registrytest.Errors(t, b)[0].Code != "BLOB_UNKNOWN" || bytes.Contains(b, want[:64]) {
		t.Errorf("%s: %d %.200s, want 404 BLOB_UNKNOWN", nothere, resp.StatusCode, b)
	}
	if n := heads(nothere); n != 1 {
		t.Errorf("%s: %d upstream HEADs, want 1", nothere, n)
	}
	twin := registrytest.UpstreamPath + "/twin"
	for range 2 {
		if resp, b := f.do(t, http.MethodGet, q(twin), auth, ""); resp.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
			t.Errorf("%s: %d, %d bytes; want 200 with the blob", twin, resp.StatusCode, len(b))
		}
	}
	if n := heads(twin); n != 1 {
		t.Errorf("%s: %d upstream HEADs, want 1", twin, n)
	}

	before := len(f.up.Requests())
	for _, r := range []string{"other/secret", registrytest.UpstreamPath, "deckhouse/cex/install"} {
		resp, b := f.do(t, http.MethodGet, q(r), auth, "")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d %s, want 404", r, resp.StatusCode, b)
			continue
		}
		if e := registrytest.Errors(t, b)[0]; e.Code != "NAME_UNKNOWN" || !strings.Contains(e.Message, "not configured") {
			t.Errorf("%s: %+v, want NAME_UNKNOWN, not configured", r, e)
		}
	}
	if reqs := f.up.Requests()[before:]; len(reqs) != 0 {
		t.Errorf("repositories outside the alias reached the upstream: %v", reqs)
	}
}
