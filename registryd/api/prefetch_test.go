package api_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/test/registrytest"
)

// TestPrefetchRepeatedEntries prefetches an index that lists one image 10000 times:
// the image's manifest is fetched once and its blobs once each. (An index cannot
// list itself, or a child that lists it: its digest would have to be in its own
// bytes, and every manifest fetched by digest is verified.)
func TestPrefetchRepeatedEntries(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	child := manifestDigest(t, f.img)
	raw, err := f.img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	entry := fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d}`, child, len(raw))
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		strings.TrimSuffix(strings.Repeat(entry+",", 10000), ",") + `]}`)
	d := digest.FromBytes(index)
	f.up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/manifests/repeated") && !strings.HasSuffix(r.URL.Path, "/manifests/"+d.String()) {
			return false
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Header().Set("Content-Length", strconv.Itoa(len(index)))
		_, _ = w.Write(index)
		return true
	})
	job := f.prefetch(t, "system/deckhouse/install:repeated")
	p := job.Images[0]
	if p.Error != "" || p.Manifests != 2 || p.Blobs != 3 || p.BlobsDone != 3 {
		t.Fatalf("prefetch %+v, want the index and one manifest, three blobs", p)
	}
	if n := f.up.Count(func(r registrytest.Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/manifests/"+child.String())
	}); n != 1 {
		t.Errorf("the child manifest was fetched %d times, want 1", n)
	}
	for _, b := range registrytest.Blobs(t, f.img) {
		if n := f.up.Count(registrytest.BlobGET(b)); n != 1 {
			t.Errorf("blob %s was fetched %d times, want 1", b, n)
		}
	}
}
