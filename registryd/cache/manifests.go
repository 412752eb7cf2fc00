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
		return nil, m.cache.registryError(ctx, err)
	}
	man, _, err := distribution.UnmarshalManifest(res.mediaType, res.payload)
	if err != nil {
		return nil, m.cache.registryError(ctx, fmt.Errorf("manifest %s of media type %q: %v: %w", d, res.mediaType, err, errdefs.ErrInvalidArgument))
	}
	return man, nil
}

// manifest returns manifest d from the store, or fetches it from the upstream once
// for all concurrent callers and stores it.
func (c *Cache) manifest(ctx context.Context, req Request, d digest.Digest) (manifestResult, error) {
	if mt, p, err := c.store.GetManifest(ctx, d); err == nil {
		c.metrics.CacheHits.WithLabelValues("manifest").Inc()
		return manifestResult{mt, p}, nil
	} else if !errdefs.IsNotFound(err) {
		return manifestResult{}, err
	}
	c.metrics.CacheMisses.WithLabelValues("manifest").Inc()
	up, err := c.upstreamFor(req)
	if err != nil {
		return manifestResult{}, err
	}
	return c.manifestCalls.do(ctx, d.String(), func() (manifestResult, error) {
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		// A call that finished just before this one started may have stored it.
		if mt, p, err := c.store.GetManifest(lctx, d); err == nil {
			return manifestResult{mt, p}, nil
		}
		man, err := up.Manifest(lctx, req.Route.Repo, d.String(), c.maxManifest)
		if err != nil {
			return manifestResult{}, fmt.Errorf("fetching manifest %s of %s from %s: %w", d, req.Route.Repo, up.Host(), err)
		}
		if err := c.store.PutManifest(lctx, d, man.MediaType, man.Payload); err != nil {
			if errdefs.IsInvalidArgument(err) {
				return manifestResult{}, fmt.Errorf("caching manifest %s: %w", d, err)
			}
			// The upstream answered: a store that cannot keep it (a full disk) does
			// not fail the client.
			c.log.Warn("serving a manifest that could not be cached", "digest", d, "error", err)
		}
		return manifestResult{man.MediaType, man.Payload}, nil
	})
}

func (m *manifests) Put(context.Context, distribution.Manifest, ...distribution.ManifestServiceOption) (digest.Digest, error) {
	return "", distribution.ErrUnsupported
}

func (m *manifests) Delete(context.Context, digest.Digest) error {
	return distribution.ErrUnsupported
}
