// Package cache is registryd's pull-through cache, plugged into distribution as a
// registry middleware: it wraps distribution's Namespace and owns blob serving,
// manifest and tag lookups, and refuses every write. Content lives in our own store
// (registryd/store), blobs are fetched once per digest by the fill engine
// (registryd/fill), first from the blob's owner among the peer masters and otherwise
// from the upstream chosen by registryd/route.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/registryd/upstream"
)

// Cache ties the store, the fill engine, the upstreams and the peers together.
type Cache struct {
	store     *store.Store
	filler    *fill.Filler
	upstreams []*upstream.Client
	router    *route.Router
	peers     *peers.Set
	log       *slog.Logger
	metrics   *metrics.Metrics
	now       func() time.Time

	tagTTL      time.Duration
	maxManifest int64
	// lookupTimeout bounds an upstream tag or manifest lookup that runs detached from
	// the request that started it.
	lookupTimeout time.Duration

	tagCalls      flight[tagResult]
	manifestCalls flight[manifestResult]
}

// Config carries the parts a Cache is built from.
type Config struct {
	Store       *store.Store
	Filler      *fill.Filler
	Upstreams   []*upstream.Client
	Router      *route.Router
	Peers       *peers.Set // nil without peers
	Log         *slog.Logger
	Metrics     *metrics.Metrics
	TagTTL      time.Duration
	MaxManifest int64
	Now         func() time.Time // nil: time.Now
}

// New builds a Cache.
func New(c Config) *Cache {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Cache{
		store: c.Store, filler: c.Filler, upstreams: c.Upstreams, router: c.Router, peers: c.Peers,
		log: c.Log, metrics: c.Metrics, now: c.Now,
		tagTTL: c.TagTTL, maxManifest: c.MaxManifest, lookupTimeout: time.Minute,
	}
}

// Router returns the cache's router, which the HTTP layer uses to route requests.
func (c *Cache) Router() *route.Router { return c.router }

// Request is the routing decision for one client request, carried in its context from
// the HTTP layer into the middleware.
type Request struct {
	Route route.Route
	// FromPeer marks a request from another master: it is served from the local cache
	// or the upstream, never forwarded to a peer again, so peer requests cannot loop.
	FromPeer bool
}

type requestKey struct{}

// WithRequest stores the routing decision in ctx.
func WithRequest(ctx context.Context, r Request) context.Context {
	return context.WithValue(ctx, requestKey{}, r)
}

func requestFrom(ctx context.Context) (Request, bool) {
	r, ok := ctx.Value(requestKey{}).(Request)
	return r, ok
}

// blobSource returns where a fill of d gets its bytes: the owner peer first (unless
// the request came from a peer), then the upstream. A failed peer is not asked again
// within the fill. The label says where the fill starts, for metrics.
func (c *Cache) blobSource(req Request, d digest.Digest) (fill.Source, string) {
	up := c.upstreams[req.Route.Upstream]
	var owner peers.Peer
	usePeer := false
	if c.peers != nil && !req.FromPeer {
		owner, usePeer = c.peers.Owner(d.String())
	}
	if !usePeer {
		return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
			return up.Blob(ctx, req.Route.Repo, d, offset)
		}, "upstream"
	}
	var peerFailed atomic.Bool
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		if !peerFailed.Load() {
			rc, size, err := c.peers.Blob(ctx, owner, up.Host(), req.Route.Repo, d, offset)
			if err == nil {
				return rc, size, nil
			}
			c.log.Warn("peer fill failed, falling back to upstream", "peer", owner.URL, "digest", d, "error", err)
			peerFailed.Store(true)
		}
		return up.Blob(ctx, req.Route.Repo, d, offset)
	}, "peer"
}

// fillBlob starts or joins the fill of d.
func (c *Cache) fillBlob(req Request, d digest.Digest) *fill.Fill {
	src, label := c.blobSource(req, d)
	return c.filler.Fill(d, label, src)
}

// flight runs one call per key at a time; callers with the same key share its
// result. The call runs on a context detached from the callers, so one client going
// away does not fail the others.
type flight[T any] struct {
	mu    sync.Mutex
	calls map[string]*call[T]
}

type call[T any] struct {
	done chan struct{}
	val  T
	err  error
}

func (f *flight[T]) do(ctx context.Context, key string, fn func() (T, error)) (T, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]*call[T]{}
	}
	c, ok := f.calls[key]
	if !ok {
		c = &call[T]{done: make(chan struct{})}
		f.calls[key] = c
		go func() {
			c.val, c.err = fn()
			f.mu.Lock()
			delete(f.calls, key)
			f.mu.Unlock()
			close(c.done)
		}()
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// upstreamUnavailable reports whether err means the upstream could not be asked, as
// opposed to an answer such as "not found".
func upstreamUnavailable(err error) bool {
	return errdefs.IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded)
}

func (c *Cache) upstreamFor(req Request) (*upstream.Client, error) {
	if req.Route.Upstream < 0 || req.Route.Upstream >= len(c.upstreams) {
		return nil, fmt.Errorf("upstream %d is not configured: %w", req.Route.Upstream, errdefs.ErrInvalidArgument)
	}
	return c.upstreams[req.Route.Upstream], nil
}
