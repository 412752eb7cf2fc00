package cache

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/registryd/upstream"
)

// Why a tag was served from its last known answer: the kind label of StaleServed
// and the kind field of the "serving stale" log line.
const (
	// staleTimeout: the revalidation had no answer within cache.stale_after; it goes
	// on in the background.
	staleTimeout = "timeout"
	// staleError: the upstream answered the revalidation with a failure.
	staleError = "error"
	// staleNegative: the upstream failed a moment ago and was not asked.
	staleNegative = "negative"
	// stalePeer: this master had no answer; a peer's last known one was served.
	stalePeer = "peer"
)

// cacheStale is the CacheHeader value of a manifest requested by a tag whose last
// known answer was served (from this master's store or a peer's).
const cacheStale = "stale"

// maxNegatives is the number of remembered failures beyond which the expired ones
// are dropped.
const maxNegatives = 1024

// negative is an upstream failure remembered for one repository of one upstream.
type negative struct {
	failure *upstream.Error
	// until is when the failure is forgotten: from then on one lookup, the probe,
	// may ask the upstream again.
	until time.Time
	// probe is the flight key of the lookup let through after until, while it runs.
	probe string
}

// negatives is the negative cache: per upstream and repository, the last failure of
// the upstream, so that requests do not queue on an upstream that just failed.
type negatives struct {
	mu sync.Mutex
	m  map[string]*negative
}

func negativeKey(host, repo string) string { return host + "/" + repo }

// admit reports whether the lookup with flight key may ask the upstream host about
// repo now, and returns the remembered failure when it may not. Nothing remembered
// admits every lookup. While a failure is remembered none is admitted; once it
// expires, one lookup is admitted as the probe, and the others still get the
// failure until the probe settles.
func (c *Cache) admit(host, repo, key string) *upstream.Error {
	c.negative.mu.Lock()
	defer c.negative.mu.Unlock()
	n := c.negative.m[negativeKey(host, repo)]
	if n == nil {
		return nil
	}
	if c.now().Before(n.until) || n.probe != "" {
		return n.failure
	}
	n.probe = key
	c.log.Info("probing the upstream after its remembered failure", "upstream", host, "repo", repo)
	return nil
}

// settle records what the lookup with flight key learnt of the upstream host for repo:
// a failure of the upstream is remembered for cache.negative_ttl; an answer (the
// upstream's content, or a definite not found or denied) forgets what was
// remembered; anything else, such as a lookup that did not need to ask, only ends
// the lookup's probe.
func (c *Cache) settle(host, repo, key string, err error) {
	nk := negativeKey(host, repo)
	var ue *upstream.Error
	failed := errors.As(err, &ue) && errdefs.IsUnavailable(ue)
	answered := err == nil || errdefs.IsNotFound(err) || errdefs.IsPermissionDenied(err)
	c.negative.mu.Lock()
	defer c.negative.mu.Unlock()
	n := c.negative.m[nk]
	switch {
	case failed:
		if c.negative.m == nil {
			c.negative.m = map[string]*negative{}
		}
		if len(c.negative.m) >= maxNegatives {
			c.dropExpiredNegatives()
		}
		c.negative.m[nk] = &negative{failure: ue, until: c.now().Add(c.negativeTTL)}
		c.log.Info("remembering the upstream's failure", "upstream", host, "repo", repo,
			"failure", ue.Failure().String(), "for", c.negativeTTL.String())
	case n == nil:
	case answered:
		delete(c.negative.m, nk)
		c.log.Info("the upstream answers again", "upstream", host, "repo", repo)
	case n.probe == key:
		n.probe = ""
	}
}

// dropExpiredNegatives forgets the failures that no longer keep lookups away; the
// caller holds c.negative.mu.
func (c *Cache) dropExpiredNegatives() {
	now := c.now()
	for k, n := range c.negative.m {
		if !now.Before(n.until) && n.probe == "" {
			delete(c.negative.m, k)
		}
	}
}

// rememberedError is the error of a lookup refused by the negative cache: the
// remembered failure, which the client gets as if the upstream had just answered it.
func rememberedError(what string, failure *upstream.Error) error {
	return fmt.Errorf("%s: the upstream's recent failure is remembered; not asking it again yet: %w", what, failure)
}

// isUpstreamFailure reports whether err is a failure of the upstream itself.
func isUpstreamFailure(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue) && errdefs.IsUnavailable(ue)
}

// serveStale returns the last known answer t for tag, notes it in ctx so that the
// response says Hopless-Cache: stale, and logs and counts it by kind.
func (c *Cache) serveStale(ctx context.Context, req Request, tag string, t store.Tag, kind string, why any) v1.Descriptor {
	c.metrics.StaleServed.WithLabelValues(kind).Inc()
	markStale(ctx)
	c.log.Warn("serving stale", "upstream", c.upstreams[req.Route.Upstream].Host(), "repo", req.Route.Repo, "tag", tag,
		"digest", t.Digest, "validated", t.Validated, "kind", kind, "why", why)
	return tagDescriptor(t)
}

// peerTag asks the healthy peers for their last known answer for tag, when this
// master has none and its upstream cannot give one. The newest answer whose manifest
// this master has, or can fetch from a peer that knows it and verify, is recorded
// with the time the upstream last confirmed it, and served as stale. A request from a
// peer never gets here, so lookups do not loop. Peers get cache.stale_after in all.
func (c *Cache) peerTag(ctx context.Context, req Request, tag string) (v1.Descriptor, bool) {
	if c.peers == nil || req.FromPeer {
		return v1.Descriptor{}, false
	}
	ps := c.peers.Healthy()
	if len(ps) == 0 {
		return v1.Descriptor{}, false
	}
	host, repo := c.upstreams[req.Route.Upstream].Host(), req.Route.Repo
	lctx, cancel := context.WithTimeout(ctx, c.staleAfter)
	defer cancel()
	type found struct {
		peer peers.Peer
		ans  peers.TagAnswer
	}
	var (
		mu      sync.Mutex
		answers []found
		wg      sync.WaitGroup
	)
	for _, p := range ps {
		wg.Go(func() {
			a, err := c.peers.Tag(lctx, p, host, repo, tag)
			if err != nil {
				if !errdefs.IsNotFound(err) {
					c.log.Info("a peer could not say what a tag points to", "peer", p.URL, "repo", repo, "tag", tag, "error", err)
				}
				return
			}
			mu.Lock()
			answers = append(answers, found{p, a})
			mu.Unlock()
		})
	}
	wg.Wait()
	sort.SliceStable(answers, func(i, j int) bool { return answers[i].ans.Validated.After(answers[j].ans.Validated) })
	for _, f := range answers {
		res, err := c.manifestFromPeer(lctx, f.peer, req, f.ans.Digest)
		if err != nil {
			c.log.Info("a peer's manifest for a tag is unusable", "peer", f.peer.URL, "repo", repo, "tag", tag,
				"digest", f.ans.Digest, "error", err)
			continue
		}
		rec := store.Tag{Digest: f.ans.Digest, MediaType: res.mediaType, Size: int64(len(res.payload)), Validated: f.ans.Validated}
		// Recorded unless this master has since learnt something newer.
		if old, err := c.store.GetTag(ctx, host, repo, tag); err != nil || old.Validated.Before(rec.Validated) {
			if err := c.store.PutTag(ctx, host, repo, tag, rec); err != nil {
				c.log.Warn("caching a peer's answer for a tag failed", "repo", repo, "tag", tag, "error", err)
			}
		}
		return c.serveStale(ctx, req, tag, rec, stalePeer, "peer "+f.peer.URL), true
	}
	return v1.Descriptor{}, false
}

// peerManifest fetches manifest d from the first healthy peer that has it, when the
// upstream cannot give it, within cache.stale_after. A manifest is immutable, so the
// answer is as good as the upstream's once it matches d.
func (c *Cache) peerManifest(ctx context.Context, req Request, d digest.Digest) (manifestResult, bool) {
	if c.peers == nil || req.FromPeer {
		return manifestResult{}, false
	}
	ps := c.peers.Healthy()
	if len(ps) == 0 {
		return manifestResult{}, false
	}
	lctx, cancel := context.WithTimeout(ctx, c.staleAfter)
	defer cancel()
	got := make(chan manifestResult, len(ps))
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			if res, err := c.manifestFromPeer(lctx, p, req, d); err == nil {
				got <- res
			}
		})
	}
	go func() {
		wg.Wait()
		close(got)
	}()
	res, ok := <-got
	cancel()
	if ok {
		c.log.Info("manifest served from a peer's copy", "repo", req.Route.Repo, "digest", d)
	}
	return res, ok
}

// manifestFromPeer returns manifest d from the store, or fetches it from peer p,
// which verifies it against d, and stores it.
func (c *Cache) manifestFromPeer(ctx context.Context, p peers.Peer, req Request, d digest.Digest) (manifestResult, error) {
	// The peer serves d only where it is linked to req's repository, so it vouches
	// for the link as the upstream would.
	if mt, pl, err := c.store.GetManifest(ctx, d); err == nil && c.linked(req, d) {
		return manifestResult{mt, pl}, nil
	}
	host := c.upstreams[req.Route.Upstream].Host()
	mt, pl, err := c.peers.Manifest(ctx, p, host, req.Route.Repo, d, c.maxManifest)
	if err != nil {
		return manifestResult{}, err
	}
	if err := c.store.PutManifest(ctx, d, mt, pl); err != nil {
		return manifestResult{}, fmt.Errorf("caching manifest %s from peer %s: %w", d, p.URL, err)
	}
	c.linkManifest(req, d)
	if mt2, pl2, err := c.store.GetManifest(ctx, d); err == nil {
		return manifestResult{mt2, pl2}, nil
	}
	return manifestResult{mt, pl}, nil
}

// LocalTag returns this master's last known answer for tag of repo at upstream
// upstreamIdx, from its store only, for a peer that asks: it never asks the upstream
// or another peer. A tag it does not know is errdefs.ErrNotFound.
func (c *Cache) LocalTag(ctx context.Context, upstreamIdx int, repo, tag string) (store.Tag, error) {
	up, err := c.upstreamFor(Request{Route: route.Route{Upstream: upstreamIdx}})
	if err != nil {
		return store.Tag{}, err
	}
	return c.store.GetTag(ctx, up.Host(), repo, tag)
}

// LocalManifest returns manifest d's media type and payload from the store only, for
// a peer that asks for it in repo at upstream upstreamIdx. A manifest it does not
// have, or has not linked to repo, is errdefs.ErrNotFound: a peer serves by the same
// repository rule as a client.
func (c *Cache) LocalManifest(ctx context.Context, upstreamIdx int, repo string, d digest.Digest) (string, []byte, error) {
	if !c.linked(Request{Route: route.Route{Upstream: upstreamIdx, Repo: repo}}, d) {
		return "", nil, fmt.Errorf("manifest %s is not linked to %s here: %w", d, repo, errdefs.ErrNotFound)
	}
	return c.store.GetManifest(ctx, d)
}
