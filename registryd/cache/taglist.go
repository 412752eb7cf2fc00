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

// maxTagLists is how many tag lists (and how many referrers lists) are remembered;
// beyond it the one asked for least recently is forgotten.
const maxTagLists = 1024

// remembered is an upstream's answer kept in memory, and when the upstream gave it.
type remembered[T any] struct {
	val       T
	validated time.Time
	used      time.Time
}

// memo keeps upstreams' answers (tag lists, referrers) by key, at most
// maxTagLists of them; beyond that the one used least recently is forgotten.
type memo[T any] struct {
	mu sync.Mutex
	m  map[string]*remembered[T]
}

// Tags lists req's repository as its upstream does, sorted. A list is kept for the
// tag TTL, and asked for again as recall says. Lists live in memory only: a
// restarted master asks again.
func (c *Cache) Tags(ctx context.Context, req Request) ([]string, error) {
	up, err := c.upstreamFor(req)
	if err != nil {
		return nil, err
	}
	r := recall[[]string]{c: c, m: &c.tagLists, calls: &c.tagListCalls, kind: "tag-list",
		host: up.Host(), repo: req.Route.Repo, key: up.Host() + "/" + req.Route.Repo, what: "listing the tags of " + req.Route.Repo}
	return r.get(ctx, func(ctx context.Context) ([]string, error) {
		tags, err := up.Tags(ctx, req.Route.Repo, maxListedTags)
		if err != nil {
			return nil, err
		}
		tags = slices.Clone(tags)
		slices.Sort(tags)
		return slices.Compact(tags), nil
	})
}

// recall is one lookup of an upstream answer kept in m by key (a tag list, a
// referrers list): served while younger than the tag TTL; then the upstream is asked
// once for all concurrent callers (calls), detached from them, and a caller waits for
// it up to stale_after when it has a last known answer to serve instead, as it does
// when the upstream fails (stale-if-error). An upstream that failed is not asked
// again for negative_ttl. A last known answer served is marked stale in ctx, logged
// and counted; a not found forgets it.
type recall[T any] struct {
	c                     *Cache
	m                     *memo[T]
	calls                 *flight[T]
	kind                  string // the cache metrics' kind
	host, repo, key, what string
}

func (r recall[T]) get(ctx context.Context, fetch func(context.Context) (T, error)) (T, error) {
	c := r.c
	var zero T
	last, ok := r.m.get(r.key, c.now())
	if ok && c.now().Sub(last.validated) < c.tagTTL {
		c.metrics.CacheHits.WithLabelValues(r.kind).Inc()
		return last.val, nil
	}
	c.metrics.CacheMisses.WithLabelValues(r.kind).Inc()
	stale := func(kind string, why any) (T, error) {
		c.metrics.StaleServed.WithLabelValues(kind).Inc()
		c.log.Warn("serving a stale "+r.kind, "upstream", r.host, "repo", r.repo, "key", r.key, "validated", last.validated, "kind", kind, "why", why)
		markStale(ctx)
		return last.val, nil
	}
	flightKey := r.key + ":" + r.kind
	if failure := c.admit(r.host, r.repo, flightKey); failure != nil {
		err := rememberedError(fmt.Sprintf("%s at %s", r.what, r.host), failure)
		if ok {
			return stale(staleNegative, err)
		}
		c.metrics.NegativeFailures.Inc()
		return zero, err
	}
	call, err := r.calls.start(flightKey, func() (T, error) {
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		v, err := fetch(lctx)
		c.settle(r.host, r.repo, flightKey, err)
		if err != nil {
			return zero, err
		}
		r.m.put(r.key, &remembered[T]{val: v, validated: c.now(), used: c.now()})
		return v, nil
	})
	if err != nil {
		c.settle(r.host, r.repo, flightKey, errNotAsked)
		if ok {
			return stale(staleError, err)
		}
		return zero, err
	}
	var v T
	if ok {
		var done bool
		if v, done, err = call.waitUntil(ctx, c.staleAfter); !done {
			return stale(staleTimeout, fmt.Sprintf("upstream %s has not answered within %s", r.host, c.staleAfter))
		}
	} else {
		v, err = call.wait(ctx)
	}
	switch {
	case err == nil:
		return v, nil
	case ok && upstreamUnavailable(err) && ctx.Err() == nil:
		return stale(staleError, err)
	case errdefs.IsNotFound(err):
		r.m.drop(r.key)
	}
	return zero, err
}

// TagsError is the registry error a client gets for err from Tags: NAME_UNKNOWN for
// a repository the upstream does not have, and as registryError otherwise.
func (c *Cache) TagsError(ctx context.Context, req Request, err error) error {
	if errdefs.IsNotFound(err) {
		return errcode.ErrorCodeNameUnknown.WithMessage(fmt.Sprintf("repository %s is not known to its upstream", req.Name))
	}
	return c.registryError(ctx, err)
}

// get returns key's answer and marks it used at now.
func (l *memo[T]) get(key string, now time.Time) (remembered[T], bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.m[key]
	if t == nil {
		return remembered[T]{}, false
	}
	t.used = now
	return *t, true
}

// put records key's answer, forgetting the least recently used one when full.
func (l *memo[T]) put(key string, t *remembered[T]) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*remembered[T]{}
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

func (l *memo[T]) drop(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, key)
}
