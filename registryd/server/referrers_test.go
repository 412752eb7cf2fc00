package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	gcr "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/test/registrytest"
)

// Referrers from the upstream's referrers tag (distribution has no referrers API):
// every referrer, or those of one artifact type with OCI-Filters-Applied; a subject
// without referrers has an empty index; each listed manifest pulls through.
func TestReferrers(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	repo := registrytest.UpstreamPath + "/app"
	img := registrytest.Image(t, 512, 1)
	up.Push(t, repo, "v1", img)
	subject, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]string{} // artifact type → digest
	for _, kind := range []string{"sig", "sbom"} {
		at := "application/vnd.example." + kind
		a := mutate.Subject(mutate.ConfigMediaType(empty.Image, types.MediaType(at)), *subject).(gcr.Image)
		up.Push(t, repo, kind, a)
		refs[at] = registrytest.Digest(t, a).String()
	}
	env := registrytest.NewEnv(t, "", up)
	env.Config.Cache.TagTTL.Duration = time.Hour
	s, _ := newServer(t, env.Config)
	base := "/v2/system/deckhouse/app/referrers/"

	get := func(target string) (v1.Index, http.Header) {
		t.Helper()
		w := serve(s, http.MethodGet, target)
		if w.Code != http.StatusOK || w.Header().Get("Content-Type") != v1.MediaTypeImageIndex {
			t.Fatalf("GET %s: %d %q %s", target, w.Code, w.Header().Get("Content-Type"), w.Body)
		}
		var idx v1.Index
		if err := json.Unmarshal(w.Body.Bytes(), &idx); err != nil {
			t.Fatal(err)
		}
		return idx, w.Header()
	}
	kinds := func(idx v1.Index) []string {
		var out []string
		for _, m := range idx.Manifests {
			if refs[m.ArtifactType] != m.Digest.String() {
				t.Errorf("descriptor %s of artifact type %q is not the referrer pushed for it", m.Digest, m.ArtifactType)
			}
			out = append(out, m.ArtifactType)
		}
		slices.Sort(out)
		return out
	}
	idx, h := get(base + subject.Digest.String())
	if got := kinds(idx); !slices.Equal(got, []string{"application/vnd.example.sbom", "application/vnd.example.sig"}) || h.Get("OCI-Filters-Applied") != "" {
		t.Errorf("referrers: %v, OCI-Filters-Applied %q; want both, unfiltered", got, h.Get("OCI-Filters-Applied"))
	}
	idx, h = get(base + subject.Digest.String() + "?artifactType=application/vnd.example.sig")
	if got := kinds(idx); !slices.Equal(got, []string{"application/vnd.example.sig"}) || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("referrers of one type: %v, OCI-Filters-Applied %q", got, h.Get("OCI-Filters-Applied"))
	}
	if w := serve(s, http.MethodGet, "/v2/system/deckhouse/app/manifests/"+refs["application/vnd.example.sig"]); w.Code != http.StatusOK {
		t.Errorf("the listed referrer does not pull through: %d %s", w.Code, w.Body)
	}
	other := registrytest.Digest(t, registrytest.Image(t, 256, 1)).String()
	if idx, _ := get(base + other); idx.SchemaVersion != 2 || len(idx.Manifests) != 0 || idx.Manifests == nil {
		t.Errorf("referrers of a subject without any: %+v, want an empty index", idx)
	}
	if head := serve(s, http.MethodHead, base+subject.Digest.String()); head.Code != http.StatusOK || head.Body.Len() != 0 || head.Header().Get("Content-Length") == "" {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q", head.Code, head.Body.Len(), head.Header().Get("Content-Length"))
	}
	if w := serve(s, http.MethodGet, base+"sha256:nothex"); w.Code != http.StatusBadRequest || registrytest.Errors(t, w.Body.Bytes())[0].Code != "DIGEST_INVALID" {
		t.Errorf("a bad digest: %d %s", w.Code, w.Body)
	}
}

// An upstream with the referrers API is asked through it, once within the tag TTL;
// the referrers tag is then not asked for.
func TestReferrersFromTheUpstreamAPI(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 512, 1)
	up.Push(t, registrytest.UpstreamPath+"/app", "v1", img)
	subject := registrytest.Digest(t, img).String()
	sig := "sha256:" + strings.Repeat("ab", 32)
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v2/"+registrytest.UpstreamPath+"/app/referrers/"+subject {
			return false
		}
		w.Header().Set("Content-Type", v1.MediaTypeImageIndex)
		fmt.Fprintf(w, `{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":10,"artifactType":"application/vnd.example.sig"},{"mediaType":%q,"digest":%q,"size":10,"artifactType":"application/vnd.example.sbom"}]}`,
			v1.MediaTypeImageIndex, v1.MediaTypeImageManifest, sig, v1.MediaTypeImageManifest, "sha256:"+strings.Repeat("cd", 32))
		return true
	})
	env := registrytest.NewEnv(t, "", up)
	env.Config.Cache.TagTTL.Duration = time.Hour
	s, _ := newServer(t, env.Config)
	target := "/v2/system/deckhouse/app/referrers/" + subject
	for range 2 {
		w := serve(s, http.MethodGet, target+"?artifactType=application/vnd.example.sig")
		var idx v1.Index
		if err := json.Unmarshal(w.Body.Bytes(), &idx); err != nil || w.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
		}
		if len(idx.Manifests) != 1 || idx.Manifests[0].Digest.String() != sig || w.Header().Get("OCI-Filters-Applied") != "artifactType" {
			t.Errorf("referrers of one type: %+v, OCI-Filters-Applied %q", idx.Manifests, w.Header().Get("OCI-Filters-Applied"))
		}
	}
	asked := up.Count(func(r registrytest.Request) bool { return strings.Contains(r.Path, "/referrers/") })
	fallback := up.Count(func(r registrytest.Request) bool { return strings.Contains(r.Path, "/manifests/sha256-") })
	if asked != 1 || fallback != 0 {
		t.Errorf("the upstream was asked %d times for referrers and %d for the referrers tag; want 1 and 0", asked, fallback)
	}
}
