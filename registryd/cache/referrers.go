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

// referrersAnswer is what an upstream's referrers API said of a subject: its index,
// or, with supported false, that the upstream has no referrers API.
type referrersAnswer struct {
	index     v1.Index
	supported bool
}

// Referrers lists the manifests whose subject is d in req's repository, as the OCI
// distribution spec 1.1 says. The upstream's referrers API is asked first; its
// answer is kept like a tag list (see recall: tag_ttl, single-flight,
// stale-if-error), whether an index or the word that the upstream has no such API.
// Without the API the answer comes from the spec's fallback, the referrers tag
// schema: the index the upstream keeps under the tag `<algorithm>-<encoded digest>`,
// which is resolved and fetched like any other tag and manifest. A subject with no
// such tag has no referrers: an empty index. The manifests listed pull through like
// any other. artifactType, if set, keeps the descriptors of that artifact type only.
func (c *Cache) Referrers(ctx context.Context, req Request, d digest.Digest, artifactType string) (Referrers, error) {
	if err := d.Validate(); err != nil {
		return Referrers{}, fmt.Errorf("referrers of %q: %w: %w", d, err, errdefs.ErrInvalidArgument)
	}
	up, err := c.upstreamFor(req)
	if err != nil {
		return Referrers{}, err
	}
	r := recall[referrersAnswer]{c: c, m: &c.referrers, calls: &c.referrerCalls, kind: "referrers",
		host: up.Host(), repo: req.Route.Repo, key: up.Host() + "/" + req.Route.Repo + "@" + d.String(),
		what: "listing the referrers of " + req.Route.Repo + "@" + d.String()}
	ans, err := r.get(ctx, func(ctx context.Context) (referrersAnswer, error) {
		idx, supported, err := up.Referrers(ctx, req.Route.Repo, d, c.maxManifest)
		return referrersAnswer{index: idx, supported: supported}, err
	})
	if err != nil {
		return Referrers{}, fmt.Errorf("referrers of %s: %w", d, err)
	}
	var all []v1.Descriptor
	if ans.supported {
		all = ans.index.Manifests
	} else if all, err = c.referrersTag(ctx, req, d); err != nil {
		return Referrers{}, err
	}
	out := Referrers{Index: v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{}}}
	out.Index.SchemaVersion = 2
	for _, m := range all {
		if artifactType == "" || m.ArtifactType == artifactType {
			out.Index.Manifests = append(out.Index.Manifests, m)
		}
	}
	out.Filtered = artifactType != ""
	return out, nil
}

// referrersTag is the referrers of d from the referrers tag schema.
func (c *Cache) referrersTag(ctx context.Context, req Request, d digest.Digest) ([]v1.Descriptor, error) {
	tag := d.Algorithm().String() + "-" + d.Encoded()
	desc, err := c.resolveTag(ctx, req, tag)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: resolving the tag %s: %w", d, tag, err)
	}
	res, err := c.manifest(ctx, req, desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: fetching the index %s: %w", d, desc.Digest, err)
	}
	var idx v1.Index
	if err := json.Unmarshal(res.payload, &idx); err != nil || res.mediaType != v1.MediaTypeImageIndex {
		return nil, fmt.Errorf("referrers of %s: the tag %s is a %q, not an OCI image index: %w", d, tag, res.mediaType, errdefs.ErrInvalidArgument)
	}
	return idx.Manifests, nil
}

// ReferrersError is the registry error a client gets for err from Referrers.
func (c *Cache) ReferrersError(ctx context.Context, d digest.Digest, err error) error {
	return c.registryError(ctx, about("referrers of", d.String(), err))
}
