package upstream

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

// distribution v3 has no referrers API: Referrers says so, without an error.
func TestReferrersUnsupportedByDistribution(t *testing.T) {
	srv := newRegistry(t, nil)
	c := newTestClient(t, srv, conf.Upstream{})
	_, supported, err := c.Referrers(testContext(t), "team/app", digest.FromString("subject"), 1<<20)
	if err != nil || supported {
		t.Fatalf("Referrers = supported %v, %v; want unsupported, nil", supported, err)
	}
}

// An upstream with the referrers API: its index, or its failure, or a refusal of an
// answer that is no index.
func TestReferrersAnswers(t *testing.T) {
	subject := digest.FromString("subject")
	ref := digest.FromString("signature")
	cases := []struct {
		name      string
		status    int
		body      string
		supported bool
		want      string // in the error; "" for none
		manifests int
	}{
		{name: "an index", status: 200, supported: true, manifests: 1,
			body: fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":10,"artifactType":"application/vnd.example.sig"}]}`, ref)},
		{name: "an empty index", status: 200, supported: true,
			body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`},
		{name: "not an index", status: 200, body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`, want: "other than an OCI image index"},
		{name: "a bad digest listed", status: 200, want: "lists a referrer with digest",
			body: `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:nothex","size":1}]}`},
		{name: "too large", status: 200, body: `{"manifests":"` + strings.Repeat("a", 2048) + `"}`, want: "exceeds 1024 bytes"},
		{name: "method not allowed", status: 405},
		{name: "a failure", status: 503, want: "503"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				if r.URL.Path != "/v2/team/app/referrers/"+subject.String() || r.Header.Get("Accept") != "application/vnd.oci.image.index.v1+json" {
					http.Error(w, "unexpected request "+r.URL.Path, http.StatusTeapot)
					return
				}
				w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			c := newTestClient(t, srv, conf.Upstream{})
			idx, supported, err := c.Referrers(testContext(t), "team/app", subject, 1024)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Referrers: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Referrers = %v, want an error with %q", err, tc.want)
			case tc.status == 503 && !errdefs.IsUnavailable(err):
				t.Errorf("Referrers = %v, want unavailable", err)
			}
			if supported != tc.supported || len(idx.Manifests) != tc.manifests {
				t.Errorf("Referrers = supported %v, %d manifests; want %v, %d", supported, len(idx.Manifests), tc.supported, tc.manifests)
			}
		})
	}
}
