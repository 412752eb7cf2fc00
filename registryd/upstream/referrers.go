package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers asks the upstream's referrers API (OCI distribution spec 1.1) for the
// manifests that refer to d in repo. It returns the index, and supported false when
// the upstream has no referrers API: it answers 404, 400 or 405 where the spec
// wants an index (an empty one for a subject without referrers), as distribution v3
// does. An answer that is not an OCI image index, or is larger than maxBytes, is an
// ErrInvalidArgument naming the upstream.
func (c *Client) Referrers(ctx context.Context, repo string, d digest.Digest, maxBytes int64) (v1.Index, bool, error) {
	what := fmt.Sprintf("listing the referrers of %s@%s", repo, d)
	if err := checkRepo(repo); err != nil {
		return v1.Index{}, false, fmt.Errorf("%s: %w", what, err)
	}
	if err := d.Validate(); err != nil {
		return v1.Index{}, false, fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.do(rctx, call{method: http.MethodGet, kind: kindReferrers, repo: repo, path: "referrers/" + d.String(),
		header: http.Header{"Accept": {v1.MediaTypeImageIndex}}, what: what})
	if err != nil {
		return v1.Index{}, false, err
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed:
		return v1.Index{}, false, nil
	default:
		return v1.Index{}, false, c.statusError(what, resp)
	}
	body, err := c.readAtMost(ctx, cancel, resp, what, maxBytes)
	if err != nil {
		return v1.Index{}, false, err
	}
	var idx v1.Index
	if err := json.Unmarshal(body, &idx); err != nil || idx.MediaType != v1.MediaTypeImageIndex {
		return v1.Index{}, false, fmt.Errorf("%s: upstream %s answered with something other than an OCI image index: %w", what, c.host, errdefs.ErrInvalidArgument)
	}
	for _, m := range idx.Manifests {
		if err := m.Digest.Validate(); err != nil {
			return v1.Index{}, false, fmt.Errorf("%s: upstream %s lists a referrer with digest %q: %v: %w", what, c.host, m.Digest, err, errdefs.ErrInvalidArgument)
		}
	}
	if idx.Manifests == nil {
		idx.Manifests = []v1.Descriptor{}
	}
	return idx, true, nil
}
