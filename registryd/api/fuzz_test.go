package api_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/registrytest"
)

// bodyCall sends body to the API's handler, as the server does, and checks what
// holds for any body: no 5xx, an oversized body refused with 400 or 413, and no
// secret in the answer that the request did not carry itself.
func bodyCall(t *testing.T, f *fixture, method, path, auth string, body []byte) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r.Header.Set("Authorization", auth)
	w := httptest.NewRecorder()
	f.api.ServeHTTP(w, r)
	if w.Code >= 500 {
		t.Fatalf("%s %s with body %q: %d %s", method, path, body, w.Code, w.Body)
	}
	if len(body) > 1<<20 && w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("%s %s with a %d-byte body: %d, want 400 or 413", method, path, len(body), w.Code)
	}
	noSecrets(t, w.Body.Bytes(), body)
	return w
}

// noSecrets fails if answer holds a token or key that sent does not.
func noSecrets(t *testing.T, answer, sent []byte) {
	t.Helper()
	for _, s := range []string{apiToken, peerToken, nodeKey, nodeTokenOf(t, "node-1")} {
		if bytes.Contains(answer, []byte(s)) && !bytes.Contains(sent, []byte(s)) {
			t.Fatalf("the answer %q echoes a secret", answer)
		}
	}
}

func FuzzPinsBody(f *testing.F) {
	fx := newFixture(f, apiToken)
	good := string(manifestDigest(f, fx.img))
	auth := "Bearer " + nodeTokenOf(f, "node-1")
	// The bodies of TestPinsValidation.
	for _, b := range []string{
		`{"source":"node-1","images":[{"image":"a","digest":"` + good + `"},{"image":"b","digest":"sha256:bad"}]}`,
		`{"source":"node-1","images":[],"extra":1}`,
		`{"source":"node-1","images":[{"image":"a","digest":"` + good + `","size":1}]}`,
		`source=node-1`,
		`{"source":"node-1","images":[]}{}`,
		`{"source":"node-1","images":{}}`,
		`{"source":"../etc","images":[]}`,
		`{"images":[]}`,
		`{"source":"node-1","images":[{"image":"system/deckhouse/install:v1","digest":"` + good + `"}]}`,
		`{"source":"node-1","images":[{"digest":"SHA256:` + strings.Repeat("A", 64) + `"}]}`,
		`{"source":"node-1","images":[{"digest":"sha512:` + strings.Repeat("a", 64) + `"}]}`,
		`{"source":"node-1","images":null}`,
		`[` + strings.Repeat(`[`, 10000),
		``,
	} {
		f.Add([]byte(b))
	}
	f.Add([]byte(`{"source":"node-1","images":[` + strings.Repeat(`{"image":"a","digest":"`+good+`"},`, 20000) + `]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		bodyCall(t, fx, http.MethodPut, "/hopless/v1/pins", auth, body)
	})
}

func FuzzPeerPinsBody(f *testing.F) {
	fx := newFixture(f, apiToken)
	good := string(manifestDigest(f, fx.img))
	for _, b := range []string{
		`{"leases":[{"source":"../x","manifests":["` + good + `"],"reported":"2030-01-01T00:00:00Z","expires":"2030-01-01T00:01:00Z"}]}`,
		`{"leases":[{"source":"node-1","manifests":["sha256:bad"],"reported":"2030-01-01T00:00:00Z","expires":"2030-01-01T00:01:00Z"}]}`,
		`{"leases":[{"source":"node-1","manifests":["` + good + `"],"reported":"2030-01-01T00:00:00Z","expires":"9999-12-31T23:59:59Z"}]}`,
		`{"leases":[{"source":"node-2","manifests":[],"reported":"0001-01-01T00:00:00Z","expires":"0001-01-01T00:00:00Z"}]}`,
		`{"leases":[{"source":"node-3","manifests":null,"reported":"x","expires":1}]}`,
		`{"leases":null}`,
		`{}`,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		bodyCall(t, fx, http.MethodPut, "/hopless/v1/peer/pins", "Bearer "+peerToken, body)
	})
}

func FuzzPrefetchBody(f *testing.F) {
	fx := newFixture(f, apiToken)
	for _, b := range []string{
		`{"images":[]}`,
		`{"images":["a:b"],"x":1}`,
		`{"images":["system/deckhouse/install:v1"]}`,
		`{"images":["system/deckhouse/install:missing","Not/A/Name"]}`,
		`{"images":["system/deckhouse/../../etc/passwd:v1"]}`,
		`{"images":["registry.example/system/deckhouse/x@sha256:` + strings.Repeat("a", 64) + `"]}`,
		`{"images":"system/deckhouse/install:v1"}`,
		`{"images":[1]}`,
		`null`,
	} {
		f.Add([]byte(b))
	}
	f.Add([]byte(`{"images":[` + strings.Repeat(`"x:y",`, 1000) + `"x:y"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		bodyCall(t, fx, http.MethodPost, "/hopless/v1/prefetch", "Bearer "+apiToken, body)
	})
}

// FuzzPeerLookup sends arbitrary queries to the peer endpoints: no 5xx, no secret
// echoed, and nothing reaches the upstream for a repository that no client name
// maps to.
func FuzzPeerLookup(f *testing.F) {
	fx := newFixture(f, apiToken)
	host := strings.TrimPrefix(fx.up.URL, "https://")
	d := string(manifestDigest(f, fx.img))
	layer := registrytest.Blobs(f, fx.img)[1].String()
	paths := []string{"/hopless/v1/peer/tag", "/hopless/v1/peer/manifest", "/hopless/v1/peer/blob"}
	for _, q := range []url.Values{
		{"upstream": {host}, "repo": {repo}, "tag": {"v1"}},
		{"upstream": {host}, "repo": {repo}, "tag": {"-bad"}},
		{"upstream": {host}, "repo": {"Bad"}, "tag": {"v1"}},
		{"upstream": {host}, "repo": {repo}, "digest": {d}},
		{"upstream": {host}, "repo": {repo}, "digest": {"sha256:nope"}},
		{"upstream": {host}, "repo": {repo}, "digest": {layer}},
		{"upstream": {host}, "repo": {"../etc"}, "digest": {layer}},
		{"upstream": {host}, "repo": {"other/secret"}, "digest": {layer}},
		{"upstream": {"elsewhere.example"}, "repo": {repo}, "tag": {"v1"}},
		{"upstream": {host}, "repo": {repo}, "digest": {"sha256:" + strings.Repeat("A", 64)}},
	} {
		for i := range paths {
			f.Add(uint8(i), q.Encode())
		}
	}
	f.Add(uint8(2), "upstream="+host+"&repo="+repo+"%0d%0aX:1&digest="+layer)
	f.Fuzz(func(t *testing.T, which uint8, query string) {
		r := httptest.NewRequest(http.MethodGet, paths[int(which)%len(paths)], nil)
		r.URL.RawQuery = query
		r.Header.Set("Authorization", "Bearer "+peerToken)
		before := len(fx.up.Requests())
		w := httptest.NewRecorder()
		fx.api.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("GET %s?%s: %d %s", r.URL.Path, query, w.Code, w.Body)
		}
		if w.Code != http.StatusOK {
			noSecrets(t, w.Body.Bytes(), []byte(query))
		}
		for _, req := range fx.up.Requests()[before:] {
			if req.Path != "/v2/" && !strings.HasPrefix(req.Path, "/v2/"+registrytest.UpstreamPath+"/") || strings.Contains(req.Path, "..") {
				t.Fatalf("GET %s?%s reached the upstream at %s", r.URL.Path, query, req.Path)
			}
		}
	})
}
