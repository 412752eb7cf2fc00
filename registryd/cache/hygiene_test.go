package cache_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/registrytest"
)

// TestErrorHygiene makes requests fail in each way a client can see and checks the
// answers: the message names the repository as the client did and the content, and
// never a local path, the upstream's repository path or the configured ns values.
func TestErrorHygiene(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := scopeImages(t, up)
	up.Push(t, registrytest.UpstreamPath+"/denied", "v1", img)
	up.Push(t, registrytest.UpstreamPath+"/bad", "v1", img)
	up.Push(t, "other/secret", "v1", img)
	blobs := registrytest.Blobs(t, img)
	config, layer := blobs[0], blobs[1]
	manifest := registrytest.Digest(t, img).String()
	deniedPrefix := "/v2/" + registrytest.UpstreamPath + "/denied/"
	downPrefix := "/v2/" + registrytest.UpstreamPath + "/down/"
	badManifest := "/v2/" + registrytest.UpstreamPath + "/bad/manifests/" + manifest
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.HasPrefix(r.URL.Path, deniedPrefix):
			w.WriteHeader(http.StatusForbidden)
			return true
		case strings.HasPrefix(r.URL.Path, downPrefix):
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		case r.URL.Path == badManifest:
			// Bytes that do not hash to the digest asked for.
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			_, _ = w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`))
			return true
		}
		return false
	})
	f := start(t, up, nil)
	root := f.env.Config.Storage.Root
	base := "https://" + f.host + "/v2/"

	// The spool file of the config blob is a directory: its fill fails locally.
	hex := config.Hex
	if err := os.MkdirAll(filepath.Join(f.env.Config.Storage.Spool, "sha256", hex+".partial", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The layer's stored path is a directory: the stored copy is unusable.
	if err := os.MkdirAll(filepath.Join(root, "hopless", "blobs", "sha256", layer.Hex[:2], layer.Hex, "x"), 0o755); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, path string
		status     int
		code       string
		// mention lists what the message must name.
		mention []string
		// upstreamFailed: the upstream's own failure, whose message names its host.
		upstreamFailed bool
	}{
		{name: "the upstream fails", path: "system/deckhouse/down/blobs/" + manifest,
			status: 502, code: "UNAVAILABLE", mention: []string{up.Host, "503"}, upstreamFailed: true},
		{name: "the upstream denies a tag", path: "system/deckhouse/denied/manifests/v1",
			status: 403, code: "DENIED", mention: []string{"system/deckhouse/denied"}},
		{name: "the upstream denies a manifest", path: "system/deckhouse/denied/manifests/" + manifest,
			status: 403, code: "DENIED", mention: []string{"system/deckhouse/denied", manifest}},
		{name: "the upstream sends a manifest that does not match", path: "system/deckhouse/bad/manifests/" + manifest,
			status: 400, code: "MANIFEST_INVALID", mention: []string{"system/deckhouse/bad", manifest}},
		{name: "the spool is unusable", path: "system/deckhouse/install/blobs/" + config.String(),
			status: 500, code: "UNKNOWN", mention: []string{"system/deckhouse/install", config.String()}},
		{name: "the stored copy is unusable", path: "system/deckhouse/install/blobs/" + layer.String(),
			status: 503, code: "UNAVAILABLE", mention: []string{"system/deckhouse/install", layer.String()}},
		{name: "a name outside the alias", path: "other/secret/manifests/v1",
			status: 404, code: "NAME_UNKNOWN", mention: []string{"other/secret", "not configured"}},
		{name: "the upstream's own path", path: registrytest.UpstreamPath + "/install/manifests/v1",
			status: 404, code: "NAME_UNKNOWN", mention: []string{"not configured"}},
		{name: "an unknown ns", path: "system/deckhouse/install/manifests/v1?ns=evil.example",
			status: 403, code: "DENIED", mention: []string{"evil.example", "not configured"}},
		{name: "a name outside the alias with its ns", path: "other/secret/manifests/v1?ns=" + up.Host,
			status: 404, code: "NAME_UNKNOWN", mention: []string{"not configured"}},
		{name: "an unknown blob", path: "system/deckhouse/nothere/blobs/sha256:" + strings.Repeat("0", 64),
			status: 404, code: "BLOB_UNKNOWN"},
		{name: "a manifest the upstream lacks", path: "system/deckhouse/install/manifests/v404",
			status: 404, code: "MANIFEST_UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.get(t, http.MethodGet, base+tt.path, acceptAll)
			if resp.StatusCode != tt.status {
				t.Fatalf("GET %s: %d %s, want %d", tt.path, resp.StatusCode, body, tt.status)
			}
			e := registrytest.Errors(t, body)[0]
			if e.Code != tt.code {
				t.Errorf("error %+v, want %s", e, tt.code)
			}
			for _, m := range tt.mention {
				if !strings.Contains(e.Message, m) {
					t.Errorf("message %q does not name %q", e.Message, m)
				}
			}
			for _, secret := range []string{root, f.env.Dir, registrytest.UpstreamPath + "/", "/hopless/", "_spool", up.Host} {
				// Only what the client sent may come back.
				if tt.upstreamFailed && secret == up.Host {
					continue
				}
				if strings.Contains(string(body), secret) && !strings.Contains(tt.path, secret) {
					t.Errorf("the answer %s names %q", body, secret)
				}
			}
		})
	}
	if n := up.Count(func(r registrytest.Request) bool { return strings.Contains(r.Path, "other/secret") }); n != 0 {
		t.Errorf("names outside the alias reached the upstream %d times", n)
	}
}
