package balance

import (
	"context"
	"net/http"
	"path"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

type reverifyKey struct{}

// WithReverify returns a context whose requests for the blobs dgsts carry
// "Cache-Control: no-cache": a master then hashes its stored copy again before it
// serves it. The transfer wrapper uses it to pull again a blob whose bytes failed
// verification on the node. Digests already in ctx are kept.
func WithReverify(ctx context.Context, dgsts ...digest.Digest) context.Context {
	old, _ := ctx.Value(reverifyKey{}).([]digest.Digest)
	set := slices.Clone(old)
	for _, d := range dgsts {
		if !slices.Contains(set, d) {
			set = append(set, d)
		}
	}
	return context.WithValue(ctx, reverifyKey{}, set)
}

func reverifying(ctx context.Context, d digest.Digest) bool {
	set, _ := ctx.Value(reverifyKey{}).([]digest.Digest)
	return slices.Contains(set, d)
}

// blobDigest is the digest of a request for /v2/<name>/blobs/<digest>.
func blobDigest(req *http.Request) (digest.Digest, bool) {
	dir, last := path.Split(req.URL.Path)
	if !strings.HasSuffix(dir, "/blobs/") || !strings.HasPrefix(dir, "/v2/") {
		return "", false
	}
	d, err := digest.Parse(last)
	if err != nil || !d.Algorithm().Available() {
		return "", false
	}
	return d, true
}
