package cache

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/registryd/store"
)

// tags resolves tags through the cache: a tag is served from the store for TagTTL
// after upstream last confirmed it; then upstream is asked once for all concurrent
// callers, in the background. A caller with a last known answer waits for that
// revalidation for StaleAfter at most, and is served the last known answer if it
// takes longer or the upstream fails (stale-if-error). A caller without one asks the
// peers for theirs when the upstream fails or is slow. An upstream that failed is
// not asked again for NegativeTTL (see admit).
type tags struct {
	cache *Cache
	req   Request
}

var _ distribution.TagService = (*tags)(nil)

type tagResult struct {
	desc v1.Descriptor
}

func (t *tags) Get(ctx context.Context, tag string) (v1.Descriptor, error) {
	desc, err := t.cache.resolveTag(ctx, t.req, tag)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return v1.Descriptor{}, distribution.ErrTagUnknown{Tag: tag}
		}
		return v1.Descriptor{}, t.cache.registryError(ctx, err)
	}
	return desc, nil
}

func (c *Cache) resolveTag(ctx context.Context, req Request, tag string) (v1.Descriptor, error) {
	up, err := c.upstreamFor(req)
	if err != nil {
		return v1.Descriptor{}, err
	}
	host, repo := up.Host(), req.Route.Repo
	cached, cerr := c.store.GetTag(ctx, host, repo, tag)
	if cerr == nil && c.fresh(cached) {
		c.metrics.CacheHits.WithLabelValues("tag").Inc()
		return tagDescriptor(cached), nil
	}
	if cerr != nil && !errdefs.IsNotFound(cerr) {
		return v1.Descriptor{}, cerr
	}
	c.metrics.CacheMisses.WithLabelValues("tag").Inc()
	stale := cerr == nil
	key := host + "/" + repo + ":" + tag
	if failure := c.admit(host, repo, key); failure != nil {
		err := rememberedError(fmt.Sprintf("resolving %s:%s at %s", repo, tag, host), failure)
		if stale {
			return c.serveStale(ctx, req, tag, cached, staleNegative, err), nil
		}
		if desc, ok := c.peerTag(ctx, req, tag); ok {
			return desc, nil
		}
		c.metrics.NegativeFailures.Inc()
		return v1.Descriptor{}, err
	}
	call, err := c.tagCalls.start(key, func() (tagResult, error) {
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		// A revalidation that finished just before this one started counts.
		if t, err := c.store.GetTag(lctx, host, repo, tag); err == nil && c.fresh(t) {
			c.settle(host, repo, key, errNotAsked)
			return tagResult{desc: tagDescriptor(t)}, nil
		}
		return c.revalidateTag(lctx, req, key, tag)
	})
	if err != nil {
		c.settle(host, repo, key, errNotAsked)
		if stale {
			return c.serveStale(ctx, req, tag, cached, staleError, err), nil
		}
		return v1.Descriptor{}, err
	}
	res, done, err := call.waitUntil(ctx, c.staleAfter)
	askedPeers := false
	if !done {
		// No answer within stale_after: the revalidation goes on for later callers.
		if stale {
			return c.serveStale(ctx, req, tag, cached, staleTimeout,
				fmt.Sprintf("upstream %s has not answered within %s", host, c.staleAfter)), nil
		}
		if desc, ok := c.peerTag(ctx, req, tag); ok {
			return desc, nil
		}
		askedPeers = true
		res, err = call.wait(ctx)
	}
	if err == nil {
		return res.desc, nil
	}
	if !upstreamUnavailable(err) || ctx.Err() != nil {
		return v1.Descriptor{}, err
	}
	if stale {
		return c.serveStale(ctx, req, tag, cached, staleError, err), nil
	}
	if !askedPeers {
		if desc, ok := c.peerTag(ctx, req, tag); ok {
			return desc, nil
		}
	}
	return v1.Descriptor{}, err
}

// errNotAsked settles a lookup that did not ask the upstream.
var errNotAsked = errors.New("the upstream was not asked")

// revalidateTag asks upstream what tag points to, makes sure that manifest is cached,
// and records the tag. key is the lookup's flight key, for the negative cache.
func (c *Cache) revalidateTag(ctx context.Context, req Request, key, tag string) (tagResult, error) {
	up := c.upstreams[req.Route.Upstream]
	desc, err := up.HeadManifest(ctx, req.Route.Repo, tag, c.maxManifest)
	c.settle(up.Host(), req.Route.Repo, key, err)
	if err != nil {
		return tagResult{}, fmt.Errorf("resolving %s:%s at %s: %w", req.Route.Repo, tag, up.Host(), err)
	}
	if _, err := c.manifest(ctx, req, desc.Digest); err != nil {
		return tagResult{}, err
	}
	rec := store.Tag{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size, Validated: c.now()}
	if err := c.store.PutTag(ctx, up.Host(), req.Route.Repo, tag, rec); err != nil {
		if errdefs.IsInvalidArgument(err) {
			return tagResult{}, fmt.Errorf("caching tag %s:%s: %w", req.Route.Repo, tag, err)
		}
		// The upstream answered: a store that cannot keep it (a full disk) does not
		// fail the client.
		c.log.Warn("serving a tag that could not be cached", "repo", req.Route.Repo, "tag", tag, "error", err)
	}
	return tagResult{desc: tagDescriptor(rec)}, nil
}

// fresh reports whether t was confirmed by upstream within the tag TTL.
func (c *Cache) fresh(t store.Tag) bool {
	return c.now().Sub(t.Validated) < c.tagTTL
}

func tagDescriptor(t store.Tag) v1.Descriptor {
	return v1.Descriptor{Digest: t.Digest, MediaType: t.MediaType, Size: t.Size}
}

func (t *tags) Tag(context.Context, string, v1.Descriptor) error { return distribution.ErrUnsupported }
func (t *tags) Untag(context.Context, string) error              { return distribution.ErrUnsupported }
func (t *tags) All(context.Context) ([]string, error)            { return nil, errTagList }
func (t *tags) Lookup(context.Context, v1.Descriptor) ([]string, error) {
	return nil, errTagList
}

// List is refused with a registry error, which distribution's tags handler passes on
// as it is; a plain error would become a 500.
func (t *tags) List(context.Context, int, string) ([]string, error) {
	return nil, errTagList
}

var errTagList = errcode.ErrorCodeUnsupported.WithMessage("registryd does not list tags")
