package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopless/hopless/internal/upstreamerr"
)

// Manifest is a manifest as the upstream sent it.
type Manifest struct {
	// Digest is computed from Payload.
	Digest    digest.Digest
	MediaType string
	Payload   []byte
}

// Descriptor identifies a manifest without its payload.
type Descriptor struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
}

// manifestAccept lists the manifest media types registryd serves.
const manifestAccept = string(types.OCIImageIndex) + ", " + string(types.OCIManifestSchema1) + ", " +
	string(types.DockerManifestList) + ", " + string(types.DockerManifestSchema2)

// call is one request for a repository's content.
type call struct {
	method, kind, repo string
	path               string // below /v2/<repo>/, e.g. "blobs/sha256:..."
	query              url.Values
	header             http.Header
	what               string // what is being done, for errors
}

// do sends r with repo's authentication. If the upstream answers a 401 with a Bearer
// challenge that GET /v2/ did not give, do sets up tokens for repo and sends r again.
func (c *Client) do(ctx context.Context, r call) (*http.Response, error) {
	if err := c.heldOff(r.what); err != nil {
		return nil, err
	}
	ctx = withKind(ctx, r.kind)
	sc, err := c.scope(ctx, r.repo)
	if err != nil {
		return nil, c.waitError(ctx, r.what, err)
	}
	u := url.URL{Scheme: c.scheme, Host: c.host, Path: "/v2/" + r.repo + "/" + r.path, RawQuery: r.query.Encode()}
	resp, err := c.send(ctx, sc, r, &u)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusUnauthorized || sc.bearer || resp.Header.Get("WWW-Authenticate") == "" {
		return resp, nil
	}
	ch, err := c.parseChallenge(ctx, resp)
	if err != nil || !strings.EqualFold(ch.Scheme, "bearer") {
		return resp, nil
	}
	drain(resp)
	c.log.Debug("upstream asks for a token that GET /v2/ did not ask for", "repo", r.repo)
	if sc, err = c.rescope(ctx, r.repo, ch); err != nil {
		return nil, c.waitError(ctx, r.what, err)
	}
	return c.send(ctx, sc, r, &u)
}

func (c *Client) send(ctx context.Context, sc *scope, r call, u *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.what, err)
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	resp, err := sc.client.Do(req)
	if err != nil {
		return nil, c.authError(ctx, r.what, err)
	}
	return resp, nil
}

// waitError wraps an error from waiting for the authentication of a repository: the
// caller's own context ending, or the already classified failure of the setup.
func (c *Client) waitError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return c.transportError(ctx, what+": waiting for authentication", err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Blob opens the blob dgst in repo at offset, with a Range request when offset > 0. It
// returns the body positioned at offset and the blob's total size, or -1 when the
// upstream does not say. If the upstream ignores the range and sends the whole blob,
// the first offset bytes are read and discarded here. An offset equal to the size gives
// an empty body; a larger one is an ErrInvalidArgument and ErrOutOfRange (the fill
// engine drops a spool file that reaches past the end). The body counts bytes into
// UpstreamBytes as they are read and fails with ErrUnavailable if the upstream stalls.
func (c *Client) Blob(ctx context.Context, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	what := fmt.Sprintf("fetching blob %s@%s", repo, dgst)
	if offset > 0 {
		what += fmt.Sprintf(" from offset %d", offset)
	}
	if err := checkBlob(repo, dgst); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("%s: negative offset: %w", what, errdefs.ErrInvalidArgument)
	}
	header := http.Header{}
	if offset > 0 {
		header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	// The request's context lives as long as the body: it is what the stall timer and
	// Close cancel.
	rctx, cancel := context.WithCancel(ctx)
	resp, err := c.do(rctx, call{method: http.MethodGet, kind: kindBlob, repo: repo, path: "blobs/" + dgst.String(), header: header, what: what})
	if err != nil {
		cancel()
		return nil, 0, err
	}
	b := c.newBody(ctx, cancel, resp.Body, what)
	total, err := c.position(resp, b, offset, what)
	if err != nil {
		_ = b.Close()
		return nil, 0, err
	}
	return b, total, nil
}

// position checks a blob response against the requested offset and returns the
// blob's total size, leaving b at offset.
func (c *Client) position(resp *http.Response, b *body, offset int64, what string) (int64, error) {
	switch resp.StatusCode {
	case http.StatusOK:
		total := resp.ContentLength
		if offset == 0 {
			return total, nil
		}
		if total >= 0 && offset > total {
			return 0, beyond(what, offset, total)
		}
		c.log.Debug("upstream ignored a Range request; skipping to the offset", "what", what)
		if _, err := io.CopyN(io.Discard, b, offset); err != nil {
			if errors.Is(err, io.EOF) {
				return 0, beyond(what, offset, -1)
			}
			return 0, err
		}
		return total, nil
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		first, last, total, err := parseContentRange(cr)
		switch {
		case err != nil:
			return 0, c.badAnswer(resp.StatusCode, fmt.Errorf("%s: upstream %s answered 206 with Content-Range %q: %v: %w",
				what, c.host, cr, err, errdefs.ErrUnavailable))
		case first != offset || (total >= 0 && last != total-1) ||
			(resp.ContentLength >= 0 && resp.ContentLength != last-first+1):
			return 0, c.badAnswer(resp.StatusCode, fmt.Errorf("%s: upstream %s answered Content-Range %q and Content-Length %d to %q: %w",
				what, c.host, cr, resp.ContentLength, resp.Request.Header.Get("Range"), errdefs.ErrUnavailable))
		case total < 0:
			total = last + 1
		}
		return total, nil
	case http.StatusRequestedRangeNotSatisfiable:
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && total == offset && offset > 0 {
			// The whole blob is already there: nothing is left to read.
			drain(resp)
			b.rc = http.NoBody
			return total, nil
		}
		if err != nil {
			total = -1
		}
		return 0, beyond(what, offset, total)
	default:
		return 0, c.statusError(what, resp)
	}
}

func beyond(what string, offset, size int64) error {
	if size < 0 {
		return fmt.Errorf("%s: offset %d is beyond the blob's end: %w: %w", what, offset, errdefs.ErrInvalidArgument, errdefs.ErrOutOfRange)
	}
	return fmt.Errorf("%s: offset %d is beyond the blob's size %d: %w: %w", what, offset, size, errdefs.ErrInvalidArgument, errdefs.ErrOutOfRange)
}

// parseContentRange parses "bytes first-last/total" and "bytes */total". An unknown
// total ("*") is -1, as are first and last in the second form.
func parseContentRange(s string) (first, last, total int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("not a byte range")
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, fmt.Errorf("no total size")
	}
	total = -1
	if size != "*" {
		if total, err = strconv.ParseInt(size, 10, 64); err != nil || total < 0 {
			return 0, 0, 0, fmt.Errorf("bad total size %q", size)
		}
	}
	if span == "*" {
		if total < 0 {
			return 0, 0, 0, fmt.Errorf("neither a range nor a size")
		}
		return -1, -1, total, nil
	}
	a, z, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, 0, fmt.Errorf("bad range %q", span)
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(z, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, fmt.Errorf("bad range %q", span)
	}
	return first, last, total, nil
}

// StatBlob returns the size of the blob dgst in repo, with a HEAD request.
func (c *Client) StatBlob(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	what := fmt.Sprintf("checking blob %s@%s", repo, dgst)
	if err := checkBlob(repo, dgst); err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	resp, err := c.do(ctx, call{method: http.MethodHead, kind: kindBlob, repo: repo, path: "blobs/" + dgst.String(), what: what})
	if err != nil {
		return 0, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return 0, c.statusError(what, resp)
	}
	if resp.ContentLength < 0 {
		return 0, c.badAnswer(resp.StatusCode, fmt.Errorf("%s: upstream %s gave no Content-Length: %w", what, c.host, errdefs.ErrUnavailable))
	}
	return resp.ContentLength, nil
}

func checkBlob(repo string, dgst digest.Digest) error {
	if err := checkRepo(repo); err != nil {
		return err
	}
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Manifest fetches the manifest ref (a tag or a digest) of repo, reading at most
// maxBytes. The digest is computed from the payload: it must equal ref when ref is a
// digest, and the Docker-Content-Digest header when the upstream sends one; it uses the
// algorithm of ref, else of that header, else sha256. The media type is the
// Content-Type, unless that is missing or generic, then the payload's mediaType field.
func (c *Client) Manifest(ctx context.Context, repo, ref string, maxBytes int64) (Manifest, error) {
	what := fmt.Sprintf("fetching manifest %s:%s", repo, ref)
	t, err := parseTarget(repo, ref)
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", what, err)
	}
	what = "fetching manifest " + t.String()
	if maxBytes <= 0 {
		return Manifest{}, fmt.Errorf("%s: size limit %d: %w", what, maxBytes, errdefs.ErrInvalidArgument)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.do(rctx, c.manifestCall(http.MethodGet, t, what))
	if err != nil {
		return Manifest{}, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, c.statusError(what, resp)
	}
	payload, err := c.readAtMost(ctx, cancel, resp, what, maxBytes)
	if err != nil {
		return Manifest{}, err
	}
	d, err := c.manifestDigest(t, resp.Header, payload, what)
	if err != nil {
		return Manifest{}, err
	}
	return Manifest{Digest: d, MediaType: mediaType(resp.Header, payload), Payload: payload}, nil
}

// HeadManifest resolves ref (a tag or a digest) of repo to its descriptor with a HEAD
// request. When the upstream's answer lacks the digest, size or media type, it falls
// back to Manifest.
func (c *Client) HeadManifest(ctx context.Context, repo, ref string, maxBytes int64) (Descriptor, error) {
	what := fmt.Sprintf("resolving manifest %s:%s", repo, ref)
	t, err := parseTarget(repo, ref)
	if err != nil {
		return Descriptor{}, fmt.Errorf("%s: %w", what, err)
	}
	what = "resolving manifest " + t.String()
	if maxBytes <= 0 {
		return Descriptor{}, fmt.Errorf("%s: size limit %d: %w", what, maxBytes, errdefs.ErrInvalidArgument)
	}
	resp, err := c.do(ctx, c.manifestCall(http.MethodHead, t, what))
	if err != nil {
		return Descriptor{}, err
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		return c.headByGet(ctx, t, maxBytes)
	default:
		return Descriptor{}, c.statusError(what, resp)
	}
	if resp.ContentLength > maxBytes {
		return Descriptor{}, tooLarge(what, resp.ContentLength, maxBytes)
	}
	d, _ := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if t.dgst != "" {
		if d != "" && d.Algorithm() == t.dgst.Algorithm() && d != t.dgst {
			return Descriptor{}, fmt.Errorf("%s: digest mismatch: upstream %s says %s: %w", what, c.host, d, errdefs.ErrInvalidArgument)
		}
		d = t.dgst
	}
	mt := contentType(resp.Header)
	if d == "" || resp.ContentLength < 0 || mt == "" {
		c.log.Debug("upstream HEAD lacks the digest, size or media type; fetching the manifest", "manifest", t.String())
		return c.headByGet(ctx, t, maxBytes)
	}
	return Descriptor{Digest: d, MediaType: mt, Size: resp.ContentLength}, nil
}

func (c *Client) headByGet(ctx context.Context, t target, maxBytes int64) (Descriptor, error) {
	m, err := c.Manifest(ctx, t.repo, t.ref, maxBytes)
	if err != nil {
		return Descriptor{}, err
	}
	return Descriptor{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(m.Payload))}, nil
}

func (c *Client) manifestCall(method string, t target, what string) call {
	return call{
		method: method, kind: t.kind(), repo: t.repo, path: "manifests/" + t.ref,
		header: http.Header{"Accept": {manifestAccept}}, what: what,
	}
}

// readAtMost reads resp's body, refusing one of more than maxBytes (as the
// upstream announces it, or as it turns out) with tooLarge. cancel ends the
// request, as newBody's stall timer needs.
func (c *Client) readAtMost(ctx context.Context, cancel context.CancelFunc, resp *http.Response, what string, maxBytes int64) ([]byte, error) {
	if resp.ContentLength > maxBytes {
		return nil, tooLarge(what, resp.ContentLength, maxBytes)
	}
	b, err := io.ReadAll(io.LimitReader(c.newBody(ctx, cancel, resp.Body, what), maxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > maxBytes {
		return nil, tooLarge(what, -1, maxBytes)
	}
	return b, nil
}

func tooLarge(what string, size, limit int64) error {
	return fmt.Errorf("%s: %w: %w", what, &TooLargeError{Size: size, Limit: limit}, errdefs.ErrInvalidArgument)
}

// TooLargeError is a manifest over the size limit. Its message names no repository,
// so that it may be passed on to clients.
type TooLargeError struct {
	Size  int64 // -1 when the upstream did not say
	Limit int64
}

func (e *TooLargeError) Error() string {
	if e.Size >= 0 {
		return fmt.Sprintf("manifest of %d bytes exceeds %d bytes", e.Size, e.Limit)
	}
	return fmt.Sprintf("manifest exceeds %d bytes", e.Limit)
}

func (c *Client) manifestDigest(t target, h http.Header, payload []byte, what string) (digest.Digest, error) {
	var claimed digest.Digest
	if s := h.Get("Docker-Content-Digest"); s != "" {
		d, err := digest.Parse(s)
		if err != nil {
			c.log.Warn("ignoring an invalid Docker-Content-Digest", "manifest", t.String(), "header", s, "error", err)
		} else {
			claimed = d
		}
	}
	alg := digest.Canonical
	switch {
	case t.dgst != "":
		alg = t.dgst.Algorithm()
	case claimed != "":
		alg = claimed.Algorithm()
	}
	got := alg.FromBytes(payload)
	if t.dgst != "" && got != t.dgst {
		return "", fmt.Errorf("%s: digest mismatch: the payload's digest is %s: %w", what, got, errdefs.ErrInvalidArgument)
	}
	if claimed != "" {
		if d := claimed.Algorithm().FromBytes(payload); d != claimed {
			return "", fmt.Errorf("%s: digest mismatch: the payload's digest is %s, Docker-Content-Digest says %s: %w",
				what, d, claimed, errdefs.ErrInvalidArgument)
		}
	}
	return got, nil
}

// contentType is the media type of the Content-Type header, or "" when it is missing,
// unparsable or generic.
func contentType(h http.Header) string {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		return ""
	}
	switch mt {
	case "application/octet-stream", "application/json", "text/plain":
		return ""
	}
	return mt
}

func mediaType(h http.Header, payload []byte) string {
	if mt := contentType(h); mt != "" {
		return mt
	}
	var v struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(payload, &v) == nil && v.MediaType != "" {
		return v.MediaType
	}
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return mt
}

// body is a response body that counts the bytes read, fails a read that stalls, and
// ends the request when closed.
type body struct {
	c      *Client
	rc     io.ReadCloser
	ctx    context.Context    // the caller's
	cancel context.CancelFunc // the request's
	what   string
	bytes  prometheus.Counter // nil without metrics
	// timer runs only while a Read waits for the upstream.
	timer   *time.Timer
	stalled atomic.Bool
}

func (c *Client) newBody(ctx context.Context, cancel context.CancelFunc, rc io.ReadCloser, what string) *body {
	b := &body{c: c, rc: rc, ctx: ctx, cancel: cancel, what: what}
	if c.metrics != nil {
		b.bytes = c.metrics.UpstreamBytes.WithLabelValues(c.host)
	}
	if c.stall > 0 {
		// Armed by Read.
		b.timer = time.AfterFunc(time.Duration(math.MaxInt64), func() {
			b.stalled.Store(true)
			cancel()
		})
	}
	return b
}

func (b *body) Read(p []byte) (int, error) {
	if b.timer != nil {
		b.timer.Reset(b.c.stall)
	}
	n, err := b.rc.Read(p)
	if b.timer != nil {
		b.timer.Stop()
	}
	if n > 0 && b.bytes != nil {
		b.bytes.Add(float64(n))
	}
	if err != nil && err != io.EOF {
		if b.stalled.Load() {
			err = &Error{Host: b.c.host, Reason: upstreamerr.ReasonTimeout,
				Err: fmt.Errorf("%s: upstream %s sent nothing for %s: %w", b.what, b.c.host, b.c.stall, errdefs.ErrUnavailable)}
		} else {
			err = b.c.transportError(b.ctx, b.what, err)
			// The answer had begun: a body cut short is a bad answer, not no answer.
			if e, ok := err.(*Error); ok && e.Reason == upstreamerr.ReasonUnreachable {
				e.Reason = upstreamerr.ReasonBadAnswer
			}
		}
	}
	return n, err
}

func (b *body) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	err := b.rc.Close()
	b.cancel()
	return err
}
