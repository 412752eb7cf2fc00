package cache

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// maxListedTags is the most tags a repository's list may hold; longer lists from the
// upstream are refused.
const maxListedTags = 100_000

// maxTagLists is how many repositories' tag lists are remembered; beyond it the one
// listed least recently is forgotten.
const maxTagLists = 1024

// TagList is a repository's tags, sorted, and whether they are a last known list
// served because the upstream failed or did not answer in time.
type TagList struct {
	Tags  []string
	Stale bool
}

// tagList is a remembered list and when the upstream gave it.
type tagList struct {
	tags      []string
	validated time.Time
	used      time.Time
}

// tagLists remembers the upstreams' tag lists by upstream and repository.
type tagLists struct {
	mu sync.Mutex
	m  map[string]*tagList
}

// Tags lists req's repository as its upstream does, sorted. A list is kept for the
// tag TTL; then the upstream is asked once for all concurrent callers, and a caller
// waits for it up to stale_after when it has a last known list to serve instead, as
// it does when the upstream fails (stale-if-error). An upstream that failed is not
// asked again for negative_ttl. Lists live in memory only: a restarted master asks
// again.
func (c *Cache) Tags(ctx context.Context, req Request) (TagList, error) {
	up, err := c.upstreamFor(req)
	if err != nil {
		return TagList{}, err
	}
	host, repo := up.Host(), req.Route.Repo
	key := host + "/" + repo
	last, ok := c.tagLists.get(key, c.now())
	if ok && c.now().Sub(last.validated) < c.tagTTL {
		c.metrics.CacheHits.WithLabelValues("tag-list").Inc()
		return TagList{Tags: last.tags}, nil
	}
	c.metrics.CacheMisses.WithLabelValues("tag-list").Inc()
	stale := func(kind string, why any) TagList {
		c.metrics.StaleServed.WithLabelValues(kind).Inc()
		c.log.Warn("serving a stale tag list", "upstream", host, "repo", repo, "validated", last.validated, "kind", kind, "why", why)
		markStale(ctx)
		return TagList{Tags: last.tags, Stale: true}
	}
	flightKey := key + ":tags/list"
	if failure := c.admit(host, repo, flightKey); failure != nil {
		err := rememberedError(fmt.Sprintf("listing the tags of %s at %s", repo, host), failure)
		if ok {
			return stale(staleNegative, err), nil
		}
		c.metrics.NegativeFailures.Inc()
		return TagList{}, err
	}
	call, err := c.tagListCalls.start(flightKey, func() ([]string, error) {
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		tags, err := up.Tags(lctx, repo, maxListedTags)
		c.settle(host, repo, flightKey, err)
		if err != nil {
			return nil, err
		}
		tags = slices.Clone(tags)
		slices.Sort(tags)
		tags = slices.Compact(tags)
		c.tagLists.put(key, &tagList{tags: tags, validated: c.now(), used: c.now()})
		return tags, nil
	})
	if err != nil {
		c.settle(host, repo, flightKey, errNotAsked)
		if ok {
			return stale(staleError, err), nil
		}
		return TagList{}, err
	}
	var tags []string
	if ok {
		var done bool
		if tags, done, err = call.waitUntil(ctx, c.staleAfter); !done {
			return stale(staleTimeout, fmt.Sprintf("upstream %s has not answered within %s", host, c.staleAfter)), nil
		}
	} else {
		tags, err = call.wait(ctx)
	}
	switch {
	case err == nil:
		return TagList{Tags: tags}, nil
	case ok && upstreamUnavailable(err) && ctx.Err() == nil:
		return stale(staleError, err), nil
	case errdefs.IsNotFound(err):
		c.tagLists.drop(key)
	}
	return TagList{}, err
}

// TagsError is the registry error a client gets for err from Tags: NAME_UNKNOWN for
// a repository the upstream does not have, and as registryError otherwise.
func (c *Cache) TagsError(ctx context.Context, req Request, err error) error {
	if errdefs.IsNotFound(err) {
		return errcode.ErrorCodeNameUnknown.WithMessage(fmt.Sprintf("repository %s is not known to its upstream", req.Name))
	}
	return c.registryError(ctx, err)
}

// get returns key's list and marks it used at now.
func (l *tagLists) get(key string, now time.Time) (tagList, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.m[key]
	if t == nil {
		return tagList{}, false
	}
	t.used = now
	return *t, true
}

// put records key's list, forgetting the least recently used one when full.
func (l *tagLists) put(key string, t *tagList) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*tagList{}
	}
	if _, ok := l.m[key]; !ok && len(l.m) >= maxTagLists {
		var oldest string
		for k, v := range l.m {
			if oldest == "" || v.used.Before(l.m[oldest].used) {
				oldest = k
			}
		}
		delete(l.m, oldest)
	}
	l.m[key] = t
}

func (l *tagLists) drop(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, key)
}
