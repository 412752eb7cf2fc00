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
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
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
	// staleAfter bounds the wait for a tag's revalidation of a request that has a
	// last known answer to serve instead, and the wait for peers' answers.
	staleAfter time.Duration
	// negativeTTL is how long an upstream's failure is remembered per repository.
	negativeTTL time.Duration
	negative    negatives
	// lookupTimeout bounds an upstream tag or manifest lookup that runs detached from
	// the request that started it.
	lookupTimeout time.Duration

	// ctx is the cache's lifetime: detached lookups run on it.
	ctx context.Context

	tagCalls      flight[tagResult]
	manifestCalls flight[manifestResult]
	tagListCalls  flight[[]string]
	tagLists      memo[[]string] // see taglist.go
	referrerCalls flight[referrersAnswer]
	referrers     memo[referrersAnswer] // see referrers.go
	scope         scope                 // see scope.go
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
	StaleAfter  time.Duration    // 0: conf.DefaultStaleAfter
	NegativeTTL time.Duration    // 0: conf.DefaultNegativeTTL
	Now         func() time.Time // nil: time.Now
}

// New builds a Cache. Upstream lookups that run detached from the requests that
// started them end when ctx does; Close waits for them.
func New(ctx context.Context, c Config) *Cache {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = conf.DefaultStaleAfter
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = conf.DefaultNegativeTTL
	}
	return &Cache{
		store: c.Store, filler: c.Filler, upstreams: c.Upstreams, router: c.Router, peers: c.Peers,
		log: c.Log, metrics: c.Metrics, now: c.Now,
		tagTTL: c.TagTTL, maxManifest: c.MaxManifest, lookupTimeout: time.Minute, ctx: ctx,
		staleAfter: c.StaleAfter, negativeTTL: c.NegativeTTL,
	}
}

// Close waits for the detached lookups to end; cancel New's ctx first to end them.
// Lookups asked for afterwards fail.
func (c *Cache) Close() {
	c.tagCalls.close()
	c.manifestCalls.close()
	c.tagListCalls.close()
	c.referrerCalls.close()
	c.scope.confirms.close()
}

// ValidName reports whether name is a repository name as the OCI distribution spec
// defines it: lowercase path components, at most 255 characters. distribution's
// reference.NameRegexp is not enough, since it also takes a leading registry host,
// which may hold uppercase letters and a port.
func ValidName(name string) bool {
	return len(name) <= 255 && nameRE.MatchString(name)
}

var nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// ValidTag reports whether tag is a tag as the OCI distribution spec defines it.
func ValidTag(tag string) bool { return tagRE.MatchString(tag) }

var tagRE = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// Router returns the cache's router, which the HTTP layer uses to route requests.
func (c *Cache) Router() *route.Router { return c.router }

// Request is the routing decision for one client request, carried in its context from
// the HTTP layer into the middleware.
type Request struct {
	Route route.Route
	// Name is the repository as the client named it, for error messages.
	Name string
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
// within the fill. An owner that passes on its upstream's failure has not failed: the
// failure is the fill's, and the upstream is not asked again from here, which would
// double the load on a failing upstream and the wait of whoever asked. The label says
// where the fill starts, for metrics. An answer with the blob links it to req's
// repository; a stored copy is used only when it is linked there already.
func (c *Cache) blobSource(req Request, d digest.Digest) (fill.Source, string) {
	up := c.upstreams[req.Route.Upstream]
	var owner peers.Peer
	usePeer := false
	if c.peers != nil && !req.FromPeer {
		owner, usePeer = c.peers.Owner(d.String())
	}
	if !usePeer {
		return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
			if rc, size, ok := c.storedBlob(ctx, req, d, offset); ok {
				return rc, size, nil
			}
			return c.fetched(req, d)(up.Blob(ctx, req.Route.Repo, d, offset))
		}, "upstream"
	}
	var peerFailed atomic.Bool
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, error) {
		if rc, size, ok := c.storedBlob(ctx, req, d, offset); ok {
			return rc, size, nil
		}
		if !peerFailed.Load() {
			rc, size, err := c.peers.Blob(ctx, owner, up.Host(), req.Route.Repo, d, offset)
			if err == nil {
				c.link(req, d)
				return rc, size, nil
			}
			var ue *upstream.Error
			if errors.As(err, &ue) {
				return nil, 0, err
			}
			c.log.Warn("peer fill failed, falling back to upstream", "peer", owner.URL, "digest", d, "error", err)
			peerFailed.Store(true)
		}
		return c.fetched(req, d)(up.Blob(ctx, req.Route.Repo, d, offset))
	}, "peer"
}

// fetched links d to req's repository when the upstream's answer has it.
func (c *Cache) fetched(req Request, d digest.Digest) func(io.ReadCloser, int64, error) (io.ReadCloser, int64, error) {
	return func(rc io.ReadCloser, size int64, err error) (io.ReadCloser, int64, error) {
		if err == nil {
			c.link(req, d)
		}
		return rc, size, err
	}
}

// storedBlob opens d in the store at offset. A caller that missed the store can start
// a new fill just after the previous fill of d committed and left the in-flight set;
// that fill then copies the stored blob instead of fetching it again, if it is
// linked to req's repository (otherwise the fetch is what confirms it there).
func (c *Cache) storedBlob(ctx context.Context, req Request, d digest.Digest, offset int64) (io.ReadCloser, int64, bool) {
	if !c.linked(req, d) {
		return nil, 0, false
	}
	rs, size, err := c.store.OpenBlob(ctx, d)
	if err != nil {
		return nil, 0, false
	}
	if _, err := rs.Seek(offset, io.SeekStart); err != nil {
		_ = rs.Close()
		return nil, 0, false
	}
	return rs, size, true
}

// flight runs one call per key at a time; callers with the same key share its
// result. The call runs on a context detached from the callers, so one client going
// away does not fail the others.
type flight[T any] struct {
	mu     sync.Mutex
	calls  map[string]*call[T]
	closed bool
	wg     sync.WaitGroup
}

type call[T any] struct {
	done chan struct{}
	val  T
	err  error
	// started is when the call began, for callers that wait on it for a bounded time.
	started time.Time
}

func (f *flight[T]) do(ctx context.Context, key string, fn func() (T, error)) (T, error) {
	c, err := f.start(key, fn)
	if err != nil {
		var zero T
		return zero, err
	}
	return c.wait(ctx)
}

// start joins the running call for key, or starts fn as that call.
func (f *flight[T]) start(key string, fn func() (T, error)) (*call[T], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, fmt.Errorf("the cache is closed: %w", errdefs.ErrUnavailable)
	}
	if f.calls == nil {
		f.calls = map[string]*call[T]{}
	}
	c, ok := f.calls[key]
	if !ok {
		c = &call[T]{done: make(chan struct{}), started: time.Now()}
		f.calls[key] = c
		f.wg.Go(func() {
			c.val, c.err = fn()
			f.mu.Lock()
			delete(f.calls, key)
			f.mu.Unlock()
			close(c.done)
		})
	}
	return c, nil
}

// wait returns the call's result, or ctx's error if ctx ends first.
func (c *call[T]) wait(ctx context.Context) (T, error) {
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// waitUntil is wait, except that it also gives up, with done false, once the call
// has run for limit.
func (c *call[T]) waitUntil(ctx context.Context, limit time.Duration) (val T, done bool, err error) {
	t := time.NewTimer(max(0, limit-time.Since(c.started)))
	defer t.Stop()
	select {
	case <-c.done:
		return c.val, true, c.err
	case <-t.C:
		select {
		case <-c.done:
			return c.val, true, c.err
		default:
		}
		return val, false, nil
	case <-ctx.Done():
		return val, true, ctx.Err()
	}
}

// close refuses new calls and waits for the running ones. A handler that outlives
// the server's shutdown may still call do; the flag, set under mu, keeps it from
// starting a call that Wait would miss.
func (f *flight[T]) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wg.Wait()
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
