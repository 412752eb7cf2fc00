package api_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/test/registrytest"
)

// TestPeerLookups checks the peer tag and manifest endpoints: the peer token is
// required, answers come from the store only (an unknown tag or manifest is 404
// without a request to the upstream, or to the peer this master has), and a known
// one is the stored answer.
func TestPeerLookups(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	host := strings.TrimPrefix(f.up.URL, "https://")
	d := manifestDigest(t, f.img)
	tagPath := func(tag string) string {
		return peers.TagPath + "?" + url.Values{"upstream": {host}, "repo": {repo}, "tag": {tag}}.Encode()
	}
	manifestPath := func(d digest.Digest) string {
		return peers.ManifestPath + "?" + url.Values{"upstream": {host}, "repo": {repo}, "digest": {d.String()}}.Encode()
	}
	peerAuth := "Bearer " + peerToken

	for _, auth := range []string{"", "Bearer " + apiToken} {
		for _, path := range []string{tagPath("v1"), manifestPath(d)} {
			if resp, b := f.do(t, http.MethodGet, path, auth, ""); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("GET %s with %q: %d %s, want 401", path, auth, resp.StatusCode, b)
			}
		}
	}
	before := f.up.Count(registrytest.Any)
	for _, path := range []string{tagPath("v1"), manifestPath(d)} {
		resp, b := f.do(t, http.MethodGet, path, peerAuth, "")
		if resp.StatusCode != http.StatusNotFound || registrytest.Errors(t, b)[0].Code != "MANIFEST_UNKNOWN" {
			t.Errorf("GET %s before the image was pulled: %d %s, want 404 MANIFEST_UNKNOWN", path, resp.StatusCode, b)
		}
	}
	for _, bad := range []string{
		peers.TagPath + "?" + url.Values{"upstream": {host}, "repo": {repo}, "tag": {"-bad"}}.Encode(),
		peers.TagPath + "?" + url.Values{"upstream": {host}, "repo": {"Bad"}, "tag": {"v1"}}.Encode(),
		peers.ManifestPath + "?" + url.Values{"upstream": {host}, "repo": {repo}, "digest": {"sha256:nope"}}.Encode(),
	} {
		if resp, b := f.do(t, http.MethodGet, bad, peerAuth, ""); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d %s, want 400", bad, resp.StatusCode, b)
		}
	}
	if resp, b := f.do(t, http.MethodGet, peers.TagPath+"?"+url.Values{"upstream": {"elsewhere.example"}, "repo": {repo}, "tag": {"v1"}}.Encode(), peerAuth, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a tag of an upstream not configured here: %d %s, want 404", resp.StatusCode, b)
	}
	if n := f.up.Count(registrytest.Any) - before; n != 0 {
		t.Errorf("peer lookups made %d upstream requests, want 0", n)
	}

	f.prefetch(t, "system/deckhouse/install:v1")
	before = f.up.Count(registrytest.Any)
	resp, b := f.do(t, http.MethodGet, tagPath("v1"), peerAuth, "")
	var a peers.TagAnswer
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &a) != nil || a.Digest != d || a.Validated.IsZero() {
		t.Errorf("GET the tag: %d %s, want 200 naming %s with its validation time", resp.StatusCode, b, d)
	}
	resp, b = f.do(t, http.MethodGet, manifestPath(d), peerAuth, "")
	if resp.StatusCode != http.StatusOK || digest.FromBytes(b) != d || resp.Header.Get("Content-Type") == "" {
		t.Errorf("GET the manifest: %d, %q, digest %s; want 200 with a payload of %s", resp.StatusCode, resp.Header.Get("Content-Type"), digest.FromBytes(b), d)
	}
	if n := f.up.Count(registrytest.Any) - before; n != 0 {
		t.Errorf("peer lookups of a cached image made %d upstream requests, want 0", n)
	}
}
