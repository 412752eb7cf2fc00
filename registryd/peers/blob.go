package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/upstream"
)

// Results of a peer fill, the values of the result label of PeerFills: upstream is
// an owner that passed on its upstream's failure.
const (
	resultOK       = "ok"
	resultError    = "error"
	resultUpstream = "upstream"
)

// Blob fetches the blob d from peer p, starting at offset, through the peer endpoint.
// host is the upstream registry host and repo the repository on it. It returns the
// body positioned at offset and the blob's total size (-1 when the peer did not say).
//
// Errors are classified: 404 is errdefs.ErrNotFound, 401 and 403 are
// errdefs.ErrPermissionDenied, and every other failure errdefs.ErrUnavailable. A peer
// that fails to serve (transport error, 5xx, 408, 429, a malformed response, a body
// cut short or stalled for the stall timeout) is marked down at once; a definite 4xx
// answer does not mark it down. Nor does a 5xx or 429 with the Hopless-Upstream-Error
// header naming host: the peer passes on the upstream's failure, which Blob returns
// as an *upstream.Error so that the caller passes it on in turn.
func (s *Set) Blob(ctx context.Context, p Peer, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	rc, size, err := s.blob(ctx, p, host, repo, d, offset)
	if err != nil {
		if isUpstreamError(err) {
			s.count(p, resultUpstream)
		} else {
			s.count(p, resultError)
		}
		return nil, 0, err
	}
	return rc, size, nil
}

func (s *Set) blob(ctx context.Context, p Peer, host, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if offset < 0 {
		return nil, 0, fmt.Errorf("peer %s: blob %s: negative offset %d: %w", p.URL, d, offset, errdefs.ErrInvalidArgument)
	}
	q := url.Values{"upstream": {host}, "repo": {repo}, "digest": {d.String()}}
	// The request's context lives as long as the body: the stall timer cancels it.
	rctx, cancelCause := context.WithCancelCause(ctx)
	cancel := func() { cancelCause(nil) }
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, p.URL+BlobPath+"?"+q.Encode(), nil)
	if err != nil {
		cancel()
		return nil, 0, fmt.Errorf("peer %s: blob %s: %w: %w", p.URL, d, err, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set(HeaderPeer, s.self.URL)
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	// An owner sends headers only once its own fill has them, which may wait on the
	// upstream. One that is merely waiting still answers /healthz; one that is frozen
	// does not, and then the request stops at once instead of at the header timeout.
	probe := time.AfterFunc(probeAfter, func() {
		if err := s.checkWithin(ctx, p.URL, probeTimeout); err != nil && ctx.Err() == nil {
			cancelCause(fmt.Errorf("no answer to a health check while the request waited: %w", err))
		}
	})
	resp, err := s.client.Do(req)
	probe.Stop()
	if err != nil {
		if c := context.Cause(rctx); c != nil && ctx.Err() == nil && !errors.Is(c, context.Canceled) {
			err = c
		}
		cancel()
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("peer %s: blob %s: %w", p.URL, d, err)
		}
		err = fmt.Errorf("peer %s: blob %s: %w: %w", p.URL, d, err, errdefs.ErrUnavailable)
		s.eject(p, err)
		return nil, 0, err
	}
	// fail closes the response and marks the peer down for a broken response.
	fail := func(err error) (io.ReadCloser, int64, error) {
		resp.Body.Close()
		cancel()
		if ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, 0, err
	}
	var total int64
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, size, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != offset {
			return fail(fmt.Errorf("peer %s: blob %s: bad Content-Range %q for offset %d: %w",
				p.URL, d, resp.Header.Get("Content-Range"), offset, errdefs.ErrUnavailable))
		}
		total = size
	case http.StatusOK:
		total = resp.ContentLength
		if offset > 0 {
			// The peer ignored Range: skip to offset ourselves.
			if total >= 0 && offset > total {
				resp.Body.Close()
				cancel()
				return nil, 0, fmt.Errorf("peer %s: blob %s: offset %d beyond size %d: %w: %w", p.URL, d, offset, total, errdefs.ErrInvalidArgument, errdefs.ErrOutOfRange)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				return fail(fmt.Errorf("peer %s: blob %s: skipping to offset %d: %w: %w", p.URL, d, offset, err, errdefs.ErrUnavailable))
			}
		}
	default:
		if ue := s.upstreamFailure(p, d, host, resp); ue != nil {
			resp.Body.Close()
			cancel()
			return nil, 0, ue
		}
		err := s.statusError(p, d, resp)
		resp.Body.Close()
		cancel()
		if ejects(resp.StatusCode) && ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, 0, err
	}
	return s.newBody(ctx, cancel, resp.Body, p), total, nil
}

// upstreamFailure reads the Hopless-Upstream-Error header of a peer's failing answer
// into the upstream's failure, or returns nil when the peer failed on its own: no
// header, a header that does not parse or names another upstream than host, or a
// status that is not 5xx or 429.
func (s *Set) upstreamFailure(p Peer, d digest.Digest, host string, resp *http.Response) *upstream.Error {
	f, found, err := upstreamerr.FromResponse(resp)
	if !found {
		return nil
	}
	v := resp.Header.Get(upstreamerr.Header)
	if err == nil && !strings.EqualFold(f.Upstream, host) {
		err = fmt.Errorf("it names upstream %q, not %q", f.Upstream, host)
	}
	if err != nil {
		s.log.Warn("a peer's upstream error header is unusable; counting the answer as the peer's failure",
			"peer", p.URL, "status", resp.StatusCode, "error", err)
		return nil
	}
	ra := resp.Header.Get("Retry-After")
	if !upstreamerr.ValidRetryAfter(ra) {
		ra = ""
	}
	return &upstream.Error{Host: host, Status: f.Status, Reason: f.Reason, RetryAfter: ra,
		Err: fmt.Errorf("peer %s: blob %s: status %d: the owner passes on the failure of upstream %s (%s): %w",
			p.URL, d, resp.StatusCode, host, v, errdefs.ErrUnavailable)}
}

func isUpstreamError(err error) bool {
	var ue *upstream.Error
	return errors.As(err, &ue)
}

// statusError classifies a non-2xx answer, quoting the start of its body unless the
// peer echoed the token there.
func (s *Set) statusError(p Peer, d digest.Digest, resp *http.Response) error {
	var class error
	switch resp.StatusCode {
	case http.StatusNotFound:
		class = errdefs.ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		class = errdefs.ErrPermissionDenied
	default:
		class = errdefs.ErrUnavailable
	}
	const quote = 256
	// Reading len(token) more than is quoted finds a token that starts in the quote.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, int64(quote+len(s.token))))
	if s.token != "" && bytes.Contains(b, []byte(s.token)) {
		b = []byte("(body withheld: it holds the peer token)")
	}
	msg := strings.TrimSpace(string(b[:min(len(b), quote)]))
	if msg != "" {
		msg = ": " + msg
	}
	return fmt.Errorf("peer %s: blob %s: status %d%s: %w", p.URL, d, resp.StatusCode, msg, class)
}

// ejects reports whether a status means that the peer cannot serve now, rather than a
// definite answer about this request.
func ejects(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code < 400
}

// parseContentRange parses "bytes start-end/size"; size is -1 when it is "*".
func parseContentRange(v string) (start, size int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, errors.New("not a bytes range")
	}
	rng, sz, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, errors.New("no size")
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, errors.New("no range")
	}
	if start, err = strconv.ParseInt(first, 10, 64); err != nil || start < 0 {
		return 0, 0, errors.New("bad start")
	}
	end, err := strconv.ParseInt(last, 10, 64)
	if err != nil || end < start {
		return 0, 0, errors.New("bad end")
	}
	if sz == "*" {
		return start, -1, nil
	}
	if size, err = strconv.ParseInt(sz, 10, 64); err != nil || size <= end {
		return 0, 0, errors.New("bad size")
	}
	return start, size, nil
}

// count records the result of a peer fill.
func (s *Set) count(p Peer, result string) {
	if s.metrics != nil {
		s.metrics.PeerFills.WithLabelValues(p.URL, result).Inc()
	}
}

// body records the fill's result once: error when the peer cuts the stream or sends
// nothing for the stall timeout, ok when it ends or the caller closes it. A read that
// fails because the caller's context ended is not the peer's fault and does not mark
// it down. Only time spent inside Read counts towards a stall.
type body struct {
	rc     io.ReadCloser
	ctx    context.Context    // the caller's
	cancel context.CancelFunc // the request's
	set    *Set
	peer   Peer
	once   sync.Once
	// timer runs only while a Read waits for the peer.
	timer   *time.Timer
	stalled atomic.Bool
}

func (s *Set) newBody(ctx context.Context, cancel context.CancelFunc, rc io.ReadCloser, p Peer) *body {
	b := &body{rc: rc, ctx: ctx, cancel: cancel, set: s, peer: p}
	// Armed by Read.
	b.timer = time.AfterFunc(time.Duration(math.MaxInt64), func() {
		b.stalled.Store(true)
		cancel()
	})
	return b
}

func (b *body) Read(p []byte) (int, error) {
	b.timer.Reset(b.set.stall)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		b.finish(nil)
	case b.ctx.Err() != nil:
		b.finish(nil)
	case b.stalled.Load():
		err = fmt.Errorf("peer %s: reading blob: sent nothing for %s: %w", b.peer.URL, b.set.stall, errdefs.ErrUnavailable)
		b.finish(err)
	default:
		err = fmt.Errorf("peer %s: reading blob: %w: %w", b.peer.URL, err, errdefs.ErrUnavailable)
		b.finish(err)
	}
	return n, err
}

func (b *body) Close() error {
	b.timer.Stop()
	b.finish(nil)
	err := b.rc.Close()
	b.cancel()
	return err
}

func (b *body) finish(err error) {
	b.once.Do(func() {
		if err != nil {
			b.set.eject(b.peer, err)
			b.set.count(b.peer, resultError)
			return
		}
		b.set.count(b.peer, resultOK)
	})
}
