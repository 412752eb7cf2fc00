package cache

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
)

// manifests is a read-only ManifestService: a manifest fetched by digest is immutable
// once cached.
type manifests struct {
	cache *Cache
	req   Request
	name  string
}

var _ distribution.ManifestService = (*manifests)(nil)

type manifestResult struct {
	mediaType string
	payload   []byte
}

func (m *manifests) Exists(ctx context.Context, d digest.Digest) (bool, error) {
	_, err := m.Get(ctx, d)
	if err == nil {
		return true, nil
	}
	if _, unknown := err.(distribution.ErrManifestUnknownRevision); unknown {
		return false, nil
	}
	return false, err
}

func (m *manifests) Get(ctx context.Context, d digest.Digest, _ ...distribution.ManifestServiceOption) (distribution.Manifest, error) {
	res, err := m.cache.manifest(ctx, m.req, d)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, distribution.ErrManifestUnknownRevision{Name: m.name, Revision: d}
		}
		return nil, m.cache.registryError(ctx, about("manifest", d.String(), err))
	}
	man, _, err := distribution.UnmarshalManifest(res.mediaType, res.payload)
	if err != nil {
		return nil, m.cache.registryError(ctx, about("manifest", d.String(), fmt.Errorf("manifest %s of media type %q: %v: %w", d, res.mediaType, err, errdefs.ErrInvalidArgument)))
	}
	return man, nil
}

// manifest returns manifest d from the store, or fetches it from the upstream once
// for all concurrent callers and stores it. It is served under req's repository only
// when it is linked there: fetched for it, or confirmed there by the upstream with a
// HEAD (a 404 is not found for this repository, whatever the store holds). Calls are
// single per upstream, repository and digest, so that a request naming a repository
// that lacks the manifest does not fail a concurrent one naming the right one. When
// the upstream fails, or failed a moment ago and is not asked (see admit), a peer's
// copy is taken if one has it.
func (c *Cache) manifest(ctx context.Context, req Request, d digest.Digest) (manifestResult, error) {
	if mt, p, err := c.store.GetManifest(ctx, d); err == nil && c.linked(req, d) {
		c.metrics.CacheHits.WithLabelValues("manifest").Inc()
		// Its references may not be linked yet (a child of an index).
		c.linkManifest(req, d)
		return manifestResult{mt, p}, nil
	} else if err != nil && !errdefs.IsNotFound(err) {
		return manifestResult{}, err
	}
	c.metrics.CacheMisses.WithLabelValues("manifest").Inc()
	up, err := c.upstreamFor(req)
	if err != nil {
		return manifestResult{}, err
	}
	host, repo := up.Host(), req.Route.Repo
	key := host + "/" + repo + "@" + d.String()
	if failure := c.admit(host, repo, key); failure != nil {
		if res, ok := c.peerManifest(ctx, req, d); ok {
			return res, nil
		}
		c.metrics.NegativeFailures.Inc()
		return manifestResult{}, rememberedError(fmt.Sprintf("fetching manifest %s of %s from %s", d, repo, host), failure)
	}
	res, err := c.manifestCalls.do(ctx, key, func() (manifestResult, error) {
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		// A call that finished just before this one started may have stored it, or
		// another repository's fetch did.
		if mt, p, err := c.store.GetManifest(lctx, d); err == nil {
			if !c.linked(req, d) {
				err := c.confirmManifest(lctx, req, d)
				c.settle(host, repo, key, err)
				if err != nil {
					return manifestResult{}, err
				}
			} else {
				c.settle(host, repo, key, errNotAsked)
			}
			return manifestResult{mt, p}, nil
		}
		man, err := up.Manifest(lctx, repo, d.String(), c.maxManifest)
		c.settle(host, repo, key, err)
		if err != nil {
			return manifestResult{}, fmt.Errorf("fetching manifest %s of %s from %s: %w", d, repo, host, err)
		}
		if err := c.store.PutManifest(lctx, d, man.MediaType, man.Payload); err != nil {
			if errdefs.IsInvalidArgument(err) {
				return manifestResult{}, fmt.Errorf("caching manifest %s: %w", d, err)
			}
			// The upstream answered: a store that cannot keep it (a full disk) does
			// not fail the client.
			c.log.Warn("serving a manifest that could not be cached", "digest", d, "error", err)
		}
		c.linkManifest(req, d)
		return manifestResult{man.MediaType, man.Payload}, nil
	})
	if err != nil && isUpstreamFailure(err) && ctx.Err() == nil {
		if res, ok := c.peerManifest(ctx, req, d); ok {
			return res, nil
		}
	}
	return res, err
}

func (m *manifests) Put(context.Context, distribution.Manifest, ...distribution.ManifestServiceOption) (digest.Digest, error) {
	return "", distribution.ErrUnsupported
}

func (m *manifests) Delete(context.Context, digest.Digest) error {
	return distribution.ErrUnsupported
}
