package server

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/test/registrytest"
)

// TestPullThroughTLS pushes an image into a real distribution upstream behind TLS
// and pulls it through registryd, itself on TLS, by the alias path: once by name as
// a client would, and once by ns as containerd's mirror requests are sent.
func TestPullThroughTLS(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 4096, 2)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	env := registrytest.NewEnv(t, "", up)
	env.Config.Metrics.Listen = "127.0.0.1:0"
	s, _ := newServer(t, env.Config)
	run := registrytest.Start(t, s)
	client := env.Cert.Client(t)

	ref, err := name.ParseReference(s.Addr().String() + "/system/deckhouse/install:v1")
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref, remote.WithTransport(client.Transport), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	registrytest.Verify(t, pulled)
	if got, want := registrytest.Digest(t, pulled), registrytest.Digest(t, img); got != want {
		t.Errorf("pulled manifest %s, want %s", got, want)
	}

	// containerd asks the mirror with ?ns=<image host>; every blob is now cached.
	base := baseURL(s) + "/v2/system/deckhouse/install"
	blobs := registrytest.Blobs(t, img)
	for _, d := range blobs {
		resp, body := registrytest.Do(t, client, http.MethodGet, base+"/blobs/"+d.String()+"?ns="+up.Host, nil)
		if resp.StatusCode != http.StatusOK || fmt.Sprintf("%x", sha256.Sum256(body)) != d.Hex {
			t.Errorf("blob %s by ns: %d, %d bytes that do not match", d, resp.StatusCode, len(body))
		}
		if n := up.Count(registrytest.BlobGET(d)); n != 1 {
			t.Errorf("blob %s: %d upstream GETs, want 1", d, n)
		}
	}
	for _, r := range up.Requests() {
		if strings.Contains(r.Path, "/manifests/") || strings.Contains(r.Path, "/blobs/") {
			if !strings.HasPrefix(r.Path, "/v2/"+registrytest.UpstreamPath+"/install/") {
				t.Errorf("upstream request %s %s is not for the aliased repository", r.Method, r.Path)
			}
		}
	}

	resp, metrics := registrytest.Do(t, http.DefaultClient, http.MethodGet, "http://"+s.MetricsAddr().String()+"/metrics", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	for _, want := range []string{
		fmt.Sprintf(`hopless_registryd_http_requests_total{code="200",kind="blob",method="GET"} %d`, 2*len(blobs)),
		`hopless_registryd_http_requests_total{code="200",kind="manifest",method="GET"}`,
		`hopless_registryd_http_response_bytes_total{kind="blob"}`,
		`hopless_registryd_cache_misses_total{kind="blob"}`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if err := run.Stop(); err != nil {
		t.Errorf("Run: %v, want nil after a clean shutdown", err)
	}
}
