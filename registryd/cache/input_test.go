package cache_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/test/registrytest"
)

// TestHostileManifests has the upstream answer manifests that registryd must refuse
// without holding them whole: an index of a million entries (streamed, and with
// its Content-Length), and manifests of media types it does not know. Each is a 4xx
// for the client, and the index is read no further than the manifest limit.
func TestHostileManifests(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	const entries = 1_000_000
	entry := func(i int) string {
		return fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":1},`, digest.FromString(fmt.Sprint(i)))
	}
	head := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`
	// Every entry has the same length; the last one's comma becomes the closing "]}".
	full := int64(len(head)) + entries*int64(len(entry(0))) + 1
	huge := digest.FromString("a million entries")
	hugeSized := digest.FromString("a million entries, sized")
	var written atomic.Int64

	unknown := []byte(`{"schemaVersion":2,"mediaType":"application/x-unknown","layers":[]}`)
	noType := []byte(`{"schemaVersion":2,"layers":[]}`)
	answers := map[string]struct {
		contentType string
		body        []byte
	}{
		digest.FromBytes(unknown).String(): {"application/x-unknown", unknown},
		digest.FromBytes(noType).String():  {"application/x-unknown+json", noType},
	}
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		ref := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if ref == huge.String() || ref == hugeSized.String() {
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			if ref == hugeSized.String() {
				w.Header().Set("Content-Length", fmt.Sprint(full))
			}
			n, err := fmt.Fprint(w, head)
			written.Add(int64(n))
			for i := 0; i < entries && err == nil; i++ {
				e := entry(i)
				if i == entries-1 {
					e = e[:len(e)-1] + "]}"
				}
				n, err = fmt.Fprint(w, e)
				written.Add(int64(n))
			}
			return true
		}
		if a, ok := answers[ref]; ok {
			w.Header().Set("Content-Type", a.contentType)
			_, _ = w.Write(a.body)
			return true
		}
		return false
	})
	f := start(t, up, nil)
	for _, tc := range []struct {
		name string
		d    string
		want string // in the error message
	}{
		{"an index of a million entries", huge.String(), "exceeds"},
		{"an index of a million entries, with its Content-Length", hugeSized.String(), "exceeds"},
		{"an unknown media type", digest.FromBytes(unknown).String(), ""},
		{"an unknown media type without one in the payload", digest.FromBytes(noType).String(), ""},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, body := f.get(t, method, f.repo+"/manifests/"+tc.d, acceptAll)
			if resp.StatusCode < 400 || resp.StatusCode >= 500 {
				t.Errorf("%s, %s: %d %s, want 4xx", tc.name, method, resp.StatusCode, body)
				continue
			}
			if method == http.MethodGet {
				if e := registrytest.Errors(t, body)[0]; e.Code != "MANIFEST_INVALID" || !strings.Contains(e.Message, tc.want) {
					t.Errorf("%s: error %+v, want MANIFEST_INVALID containing %q", tc.name, e, tc.want)
				}
			}
		}
	}
	if n := written.Load(); n >= full/2 {
		t.Errorf("registryd read %d bytes of a %d-byte index, past its limit of %d", n, full, f.env.Config.Cache.MaxManifestBytes)
	}
}
