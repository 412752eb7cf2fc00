package cache

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/space"
)

// blobs is a read-only BlobStore over the cache.
type blobs struct {
	cache *Cache
	req   Request
	// missed is set when Stat, which distribution calls before ServeBlob, started
	// the fill: the request is a miss even if the fill of a small blob has committed
	// by the time ServeBlob looks.
	missed atomic.Bool
	// direct is the stream Stat opened for a blob that the store cannot take, for
	// ServeBlob to serve.
	direct atomic.Pointer[fill.DirectReader]
	// known is the size that Stat found. distribution's notification
	// listener calls Stat again after ServeBlob, on a context that is never
	// cancelled: that call must neither start a fill nor open a stream.
	known atomic.Pointer[knownSize]
}

type knownSize struct {
	d    digest.Digest
	size int64
}

var _ distribution.BlobStore = (*blobs)(nil)

func blobDescriptor(d digest.Digest, size int64) v1.Descriptor {
	return v1.Descriptor{Digest: d, Size: size, MediaType: "application/octet-stream"}
}

// Stat answers from the store, or starts the fill and waits for the size that the
// first upstream response gives: a HEAD is usually followed by a GET. Either way the
// blob must be linked to the request's repository, or be confirmed there.
func (b *blobs) Stat(ctx context.Context, d digest.Digest) (v1.Descriptor, error) {
	if k := b.known.Load(); k != nil && k.d == d {
		return blobDescriptor(d, k.size), nil
	}
	if size, err := b.cache.store.StatBlob(ctx, d); err == nil {
		if err := b.cache.allowBlob(ctx, b.req, d); err != nil {
			return v1.Descriptor{}, b.cache.blobError(ctx, d, err)
		}
		b.known.Store(&knownSize{d, size})
		return blobDescriptor(d, size), nil
	} else if !errdefs.IsNotFound(err) {
		return v1.Descriptor{}, b.cache.blobError(ctx, d, err)
	}
	b.missed.Store(true)
	_, size, dr, err := b.cache.missBlob(ctx, b.req, d)
	if dr != nil {
		if old := b.direct.Swap(dr); old != nil {
			_ = old.Close()
		}
	}
	if err != nil {
		return v1.Descriptor{}, b.cache.blobError(ctx, d, err)
	}
	b.known.Store(&knownSize{d, size})
	return blobDescriptor(d, size), nil
}

func (b *blobs) Get(ctx context.Context, d digest.Digest) ([]byte, error) {
	rc, err := b.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// Open returns the stored blob, filling it first if needed.
func (b *blobs) Open(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, error) {
	rs, _, err := b.cache.store.OpenBlob(ctx, d)
	if err == nil {
		if err := b.cache.allowBlob(ctx, b.req, d); err != nil {
			_ = rs.Close()
			return nil, b.cache.blobError(ctx, d, err)
		}
		return rs, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, b.cache.blobError(ctx, d, err)
	}
	fl, _, err := b.cache.scopedFill(ctx, b.req, d)
	if err != nil {
		return nil, b.cache.blobError(ctx, d, err)
	}
	select {
	case <-fl.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := fl.Err(); err != nil {
		return nil, b.cache.blobError(ctx, d, err)
	}
	rs, _, err = b.cache.store.OpenBlob(ctx, d)
	if err != nil {
		return nil, b.cache.blobError(ctx, d, err)
	}
	return rs, nil
}

// ServeBlob serves a cached blob with http.ServeContent (Range and HEAD included), or
// streams it from the running fill as its bytes arrive.
func (b *blobs) ServeBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, d digest.Digest) error {
	if dr := b.direct.Swap(nil); dr != nil {
		if dr.Digest() == d {
			b.cache.metrics.CacheMisses.WithLabelValues("blob").Inc()
			return b.cache.serveDirect(w, r, d, dr)
		}
		_ = dr.Close()
	}
	return b.cache.serveBlob(ctx, w, r, b.req, d, b.missed.Load())
}

// ServeBlob serves blob d for req; the peer endpoint calls it directly.
//
// The blob's headers are set only once it is known to be served: an error response
// must not carry its digest or a year-long Cache-Control.
func (c *Cache) ServeBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, req Request, d digest.Digest) error {
	return c.serveBlob(ctx, w, r, req, d, false)
}

// serveBlob serves d; missed says the request already missed the store. A GET with
// Cache-Control: no-cache first hashes the stored copy whole, whatever was verified
// before; a bad copy is removed and the request served as a miss. A stored copy is
// served only under a repository it is linked to, or confirmed in now.
func (c *Cache) serveBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, req Request, d digest.Digest, missed bool) error {
	if r.Method == http.MethodGet && noCache(r.Header) {
		err := c.store.VerifyBlob(ctx, d)
		switch {
		case errdefs.IsDataLoss(err):
			c.log.Warn("a client asked for a fresh copy and the stored one was corrupt; filling it again", "digest", d)
		case err != nil && !errdefs.IsNotFound(err):
			return c.blobError(ctx, d, err)
		}
	}
	rs, _, err := c.store.OpenBlob(ctx, d)
	if err == nil {
		defer rs.Close()
		if err := c.allowBlob(ctx, req, d); err != nil {
			return c.blobError(ctx, d, err)
		}
		if missed {
			c.metrics.CacheMisses.WithLabelValues("blob").Inc()
		} else {
			c.metrics.CacheHits.WithLabelValues("blob").Inc()
		}
		setBlobHeaders(w, d, cacheHit)
		http.ServeContent(w, r, "", time.Time{}, rs)
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return c.blobError(ctx, d, err)
	}
	c.metrics.CacheMisses.WithLabelValues("blob").Inc()
	fl, size, dr, err := c.missBlob(ctx, req, d)
	if err != nil {
		return c.blobError(ctx, d, err)
	}
	if dr != nil {
		return c.serveDirect(w, r, d, dr)
	}
	start, end, ok := writeMissHeaders(w, r, d, size)
	if !ok || r.Method == http.MethodHead || end == start {
		return nil
	}
	rd, err := fl.Reader(ctx, start)
	if err != nil {
		abort(c, d, err)
	}
	defer rd.Close()
	if _, err := io.CopyN(w, rd, end-start); err != nil {
		abort(c, d, err)
	}
	return nil
}

// missBlob joins the running fill of d or starts one, and waits for its size. When
// the store cannot take d (a filesystem below storage.min_free, or no room for this
// blob), or the fill is refused for lack of space, it opens a direct stream of d
// instead, which caches nothing.
func (c *Cache) missBlob(ctx context.Context, req Request, d digest.Digest) (*fill.Fill, int64, *fill.DirectReader, error) {
	if c.filler.Running(d) == nil {
		if err := c.store.CanFill(d); err != nil {
			return c.openDirect(ctx, req, d, err)
		}
	}
	fl, size, err := c.scopedFill(ctx, req, d)
	if space.Is(err) {
		return c.openDirect(ctx, req, d, err)
	}
	return fl, size, nil, err
}

// openDirect opens d from its source for one response, without caching it; why is
// the reason the store could not take it.
func (c *Cache) openDirect(ctx context.Context, req Request, d digest.Digest, why error) (*fill.Fill, int64, *fill.DirectReader, error) {
	c.log.Debug("streaming a blob through without caching it", "digest", d, "reason", why)
	src, _ := c.blobSource(req, d)
	dr, err := c.filler.Direct(ctx, d, src)
	if err != nil {
		c.metrics.PassThrough.WithLabelValues("error").Inc()
		return nil, 0, nil, err
	}
	return nil, dr.Size(), dr, nil
}

// serveDirect serves a blob that streams from its source without caching (Range and
// HEAD included). A range that does not start at 0 is served after the bytes before
// it have been read and hashed: the whole blob's digest is checked before its last
// 64 KiB are sent.
func (c *Cache) serveDirect(w http.ResponseWriter, r *http.Request, d digest.Digest, dr *fill.DirectReader) error {
	defer dr.Close()
	start, end, ok := writeMissHeaders(w, r, d, dr.Size())
	if !ok {
		return nil
	}
	if r.Method == http.MethodHead || end == start {
		c.metrics.PassThrough.WithLabelValues("ok").Inc()
		return nil
	}
	if _, err := io.CopyN(io.Discard, dr, start); err != nil {
		c.metrics.PassThrough.WithLabelValues("error").Inc()
		abort(c, d, err)
	}
	if _, err := io.CopyN(w, dr, end-start); err != nil {
		c.metrics.PassThrough.WithLabelValues("error").Inc()
		abort(c, d, err)
	}
	c.metrics.PassThrough.WithLabelValues("ok").Inc()
	return nil
}

// writeMissHeaders writes the headers of a blob of size streamed from its source,
// for the request's Range: the half-open interval to send, or ok false when the
// range cannot be satisfied (the answer, 416, is written).
func writeMissHeaders(w http.ResponseWriter, r *http.Request, d digest.Digest, size int64) (start, end int64, ok bool) {
	setBlobHeaders(w, d, cacheMiss)
	start, end, partial, ok := parseRange(r.Header.Get("Range"), size)
	if !ok {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		http.Error(w, "requested range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return 0, 0, false
	}
	w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	status := http.StatusOK
	if partial {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	return start, end, true
}

// abort ends a response whose headers are sent: the client sees a cut connection,
// never a short or unverified blob that looks complete.
func abort(c *Cache, d digest.Digest, err error) {
	c.log.Warn("aborting blob response", "digest", d, "error", err)
	panic(http.ErrAbortHandler)
}

// CacheHeader is the response header of every blob that registryd serves: "hit"
// when the bytes come from its store, "miss" when they are streamed from a fill in
// progress, whose speed is the upstream's (or the owner peer's), not the store's.
const (
	CacheHeader = "Hopless-Cache"
	cacheHit    = "hit"
	cacheMiss   = "miss"
)

func setBlobHeaders(w http.ResponseWriter, d digest.Digest, cache string) {
	h := w.Header()
	h.Set(CacheHeader, cache)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000")
	h.Set("Accept-Ranges", "bytes")
}

// noCache reports whether a Cache-Control header asks for no-cache.
func noCache(h http.Header) bool {
	for _, v := range h.Values("Cache-Control") {
		for dir := range strings.SplitSeq(v, ",") {
			name, _, _ := strings.Cut(dir, "=")
			if strings.EqualFold(strings.TrimSpace(name), "no-cache") {
				return true
			}
		}
	}
	return false
}

// parseRange reads a single "bytes=a-b", "bytes=a-" or "bytes=-n" range; anything
// else (including multiple ranges) is served whole, which RFC 9110 allows. It returns
// the half-open interval [start, end).
func parseRange(h string, size int64) (start, end int64, partial, ok bool) {
	// An empty blob has no part to send ("bytes 0--1/0"): it is served whole, as
	// http.ServeContent serves it on a hit for "bytes=0-".
	if h == "" || size == 0 {
		return 0, size, false, true
	}
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, size, false, true
	}
	a, bs, found := strings.Cut(spec, "-")
	if !found {
		return 0, size, false, true
	}
	if a == "" {
		n, err := strconv.ParseInt(bs, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, false
		}
		if n > size {
			n = size
		}
		return size - n, size, true, true
	}
	s, err := strconv.ParseInt(a, 10, 64)
	if err != nil || s < 0 || s >= size {
		return 0, 0, false, false
	}
	e := size
	if bs != "" {
		v, err := strconv.ParseInt(bs, 10, 64)
		if err != nil || v < s {
			return 0, 0, false, false
		}
		if v < size-1 {
			e = v + 1
		}
	}
	return s, e, true, true
}

func (b *blobs) Put(context.Context, string, []byte) (v1.Descriptor, error) {
	return v1.Descriptor{}, distribution.ErrUnsupported
}

func (b *blobs) Create(context.Context, ...distribution.BlobCreateOption) (distribution.BlobWriter, error) {
	return nil, distribution.ErrUnsupported
}

func (b *blobs) Resume(context.Context, string) (distribution.BlobWriter, error) {
	return nil, distribution.ErrUnsupported
}

func (b *blobs) Delete(context.Context, digest.Digest) error {
	return distribution.ErrUnsupported
}
