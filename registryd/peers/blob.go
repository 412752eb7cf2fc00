package peers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Results of a peer fill, the values of the result label of PeerFills.
const (
	resultOK    = "ok"
	resultError = "error"
)

// Blob fetches the blob d from peer p, starting at offset, through the peer endpoint.
// upstream is the upstream registry host and repo the repository on it. It returns the
// body positioned at offset and the blob's total size (-1 when the peer did not say).
//
// Errors are classified: 404 is errdefs.ErrNotFound, 401 and 403 are
// errdefs.ErrPermissionDenied, and every other failure errdefs.ErrUnavailable. A peer
// that fails to serve (transport error, 5xx, 408, 429, a malformed response, or a body
// cut short) is marked down at once; a definite 4xx answer does not mark it down.
func (s *Set) Blob(ctx context.Context, p Peer, upstream, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	rc, size, err := s.blob(ctx, p, upstream, repo, d, offset)
	if err != nil {
		s.count(p, resultError)
		return nil, 0, err
	}
	return rc, size, nil
}

func (s *Set) blob(ctx context.Context, p Peer, upstream, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if offset < 0 {
		return nil, 0, fmt.Errorf("peer %s: blob %s: negative offset %d: %w", p.URL, d, offset, errdefs.ErrInvalidArgument)
	}
	q := url.Values{"upstream": {upstream}, "repo": {repo}, "digest": {d.String()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+BlobPath+"?"+q.Encode(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("peer %s: blob %s: %w: %w", p.URL, d, err, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set(HeaderPeer, s.self.URL)
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := s.client.Do(req)
	if err != nil {
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
				return nil, 0, fmt.Errorf("peer %s: blob %s: offset %d beyond size %d: %w", p.URL, d, offset, total, errdefs.ErrInvalidArgument)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				return fail(fmt.Errorf("peer %s: blob %s: skipping to offset %d: %w: %w", p.URL, d, offset, err, errdefs.ErrUnavailable))
			}
		}
	default:
		err := s.statusError(p, d, resp)
		resp.Body.Close()
		if ejects(resp.StatusCode) && ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, 0, err
	}
	return &body{rc: resp.Body, ctx: ctx, set: s, peer: p}, total, nil
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

// body records the fill's result once: error when the peer cuts the stream, ok when it
// ends or the caller closes it. A read that fails because the caller's context ended is
// not the peer's fault and does not mark it down.
type body struct {
	rc   io.ReadCloser
	ctx  context.Context
	set  *Set
	peer Peer
	once sync.Once
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		b.finish(nil)
	case b.ctx.Err() != nil:
		b.finish(nil)
	default:
		err = fmt.Errorf("peer %s: reading blob: %w: %w", b.peer.URL, err, errdefs.ErrUnavailable)
		b.finish(err)
	}
	return n, err
}

func (b *body) Close() error {
	b.finish(nil)
	return b.rc.Close()
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
