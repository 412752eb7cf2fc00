package cache

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers is the answer to a referrers request: an image index of the manifests
// that refer to a subject, and whether it was filtered by artifact type.
type Referrers struct {
	Index    v1.Index
	Filtered bool
}

// Referrers lists the manifests whose subject is d in req's repository, as the OCI
// distribution spec 1.1 says: from the referrers tag schema, the index the upstream
// keeps under the tag `<algorithm>-<encoded digest>` (the spec's fallback, which is
// what registries without the referrers API, distribution v3 among them, serve). The
// tag is resolved and its index fetched like any other tag and manifest: cached for
// tag_ttl, single-flight, stale-if-error, and the manifests it lists pull through
// like any other. A subject with no such tag has no referrers: an empty index.
// artifactType, if set, keeps the descriptors of that artifact type only.
func (c *Cache) Referrers(ctx context.Context, req Request, d digest.Digest, artifactType string) (Referrers, error) {
	if err := d.Validate(); err != nil {
		return Referrers{}, fmt.Errorf("referrers of %q: %w: %w", d, err, errdefs.ErrInvalidArgument)
	}
	out := Referrers{Index: v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}}
	out.Index.SchemaVersion = 2
	tag := d.Algorithm().String() + "-" + d.Encoded()
	desc, err := c.resolveTag(ctx, req, tag)
	if errdefs.IsNotFound(err) {
		return out, nil
	}
	if err != nil {
		return Referrers{}, fmt.Errorf("referrers of %s: resolving the tag %s: %w", d, tag, err)
	}
	res, err := c.manifest(ctx, req, desc.Digest)
	if err != nil {
		return Referrers{}, fmt.Errorf("referrers of %s: fetching the index %s: %w", d, desc.Digest, err)
	}
	var idx v1.Index
	if err := json.Unmarshal(res.payload, &idx); err != nil || res.mediaType != v1.MediaTypeImageIndex {
		return Referrers{}, fmt.Errorf("referrers of %s: the tag %s is a %q, not an OCI image index: %w", d, tag, res.mediaType, errdefs.ErrInvalidArgument)
	}
	for _, m := range idx.Manifests {
		if artifactType == "" || m.ArtifactType == artifactType {
			out.Index.Manifests = append(out.Index.Manifests, m)
		}
	}
	out.Filtered = artifactType != ""
	return out, nil
}

// ReferrersError is the registry error a client gets for err from Referrers.
func (c *Cache) ReferrersError(ctx context.Context, d digest.Digest, err error) error {
	return c.registryError(ctx, about("referrers of", d.String(), err))
}
