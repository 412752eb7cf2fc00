package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/upstream"
)

// registryError turns an internal error into the registry error that distribution's
// handlers write. Unknown content is handled by the callers, since distribution
// matches those sentinels by identity.
//
// An upstream's own failure (an *upstream.Error, from this master's upstream client or
// passed on by the blob's owner) becomes UNAVAILABLE, or TOOMANYREQUESTS for a 429,
// with a message that names only the upstream host and what it did, and is noted in
// ctx for the response writer of UpstreamFailures. Every other failure is
// registryd's own and keeps its 500 or 503.
//
// The message names the repository as the client did and the content (see about),
// and says what kind of failure it was; it never quotes the internal error, which
// holds local paths and the upstream's repository path. That goes to the log.
func (c *Cache) registryError(ctx context.Context, err error) error {
	var ue *upstream.Error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return errcode.ErrorCodeUnavailable.WithMessage("request cancelled")
	case errors.As(err, &ue) && errdefs.IsUnavailable(ue):
		return c.upstreamError(ctx, ue, err)
	}
	var code errcode.ErrorCode
	switch {
	case errdefs.IsPermissionDenied(err):
		code = errcode.ErrorCodeDenied
	case errdefs.IsInvalidArgument(err):
		code = errcode.ErrorCodeManifestInvalid
	case errdefs.IsDataLoss(err), upstreamUnavailable(err):
		code = errcode.ErrorCodeUnavailable
	default:
		code = errcode.ErrorCodeUnknown
	}
	msg := clientMessage(ctx, err)
	c.log.Warn("request failed", "message", msg, "error", err)
	return code.WithMessage(msg)
}

// blobError is registryError for blob d, with unknown content as distribution's
// ErrBlobUnknown.
func (c *Cache) blobError(ctx context.Context, d digest.Digest, err error) error {
	if errdefs.IsNotFound(err) {
		return distribution.ErrBlobUnknown
	}
	return c.registryError(ctx, about("blob", d.String(), err))
}

// subjectError names the content a failed request was for, for clients.
type subjectError struct {
	what string // "blob sha256:...", "manifest sha256:..."
	err  error
}

func (e *subjectError) Error() string { return e.err.Error() }
func (e *subjectError) Unwrap() error { return e.err }

// about marks err as a failure about kind ref (a digest or tag), which clients are
// told. A nil err stays nil.
func about(kind, ref string, err error) error {
	if err == nil {
		return nil
	}
	return &subjectError{what: kind + " " + ref, err: err}
}

// clientMessage is what a client is told of err: the repository as the client named
// it and the content (from the request in ctx, and about), and the kind of failure.
func clientMessage(ctx context.Context, err error) string {
	var parts []string
	var se *subjectError
	if errors.As(err, &se) {
		parts = append(parts, se.what)
	}
	if req, ok := requestFrom(ctx); ok && req.Name != "" {
		parts = append(parts, "in "+req.Name)
	}
	if len(parts) == 0 {
		return failurePhrase(err)
	}
	return strings.Join(parts, " ") + ": " + failurePhrase(err)
}

// failurePhrase says what kind of failure err is, quoting nothing of it.
func failurePhrase(err error) string {
	var ue *upstream.Error
	var tl *upstream.TooLargeError
	switch {
	case errors.Is(err, context.Canceled):
		return "request cancelled"
	case errors.As(err, &ue) && errdefs.IsUnavailable(ue):
		return failureMessage(ue.Failure())
	case errdefs.IsNotFound(err):
		return "not found"
	case errdefs.IsPermissionDenied(err), errdefs.IsUnauthorized(err):
		return "the upstream denied access"
	case errors.As(err, &tl):
		return "invalid: the " + tl.Error() + ", the most registryd accepts"
	case errdefs.IsInvalidArgument(err):
		return "invalid: the content or the answer for it cannot be used (wrong digest, too large or malformed)"
	case errdefs.IsDataLoss(err):
		return "content failed digest verification; it was discarded"
	case upstreamUnavailable(err):
		return "temporarily unavailable"
	default:
		return "registryd failed internally; see its log"
	}
}

func (c *Cache) upstreamError(ctx context.Context, ue *upstream.Error, err error) error {
	f := ue.Failure()
	code := errcode.ErrorCodeUnavailable
	if upstreamerr.WireStatus(f) == http.StatusTooManyRequests {
		code = errcode.ErrorCodeTooManyRequests
	}
	if n, ok := ctx.Value(failureKey{}).(*failureNote); ok {
		n.set(ue, code.Descriptor().HTTPStatusCode)
	}
	c.log.Info("request failed because the upstream did", "upstream", f.Upstream, "status", f.Status, "reason", f.Reason, "error", err)
	return code.WithMessage(failureMessage(f))
}

// failureMessage says what the upstream did, naming nothing but its host: no
// repository, path or credentials.
func failureMessage(f upstreamerr.Failure) string {
	switch f.Reason {
	case upstreamerr.ReasonTimeout:
		return fmt.Sprintf("upstream %s did not answer in time", f.Upstream)
	case upstreamerr.ReasonUnreachable:
		return fmt.Sprintf("upstream %s could not be reached", f.Upstream)
	case upstreamerr.ReasonBadAnswer:
		if f.Status != 0 {
			return fmt.Sprintf("upstream %s answered %d with something unusable", f.Upstream, f.Status)
		}
		return fmt.Sprintf("upstream %s sent an answer that cannot be used", f.Upstream)
	default:
		return fmt.Sprintf("upstream %s answered %d %s", f.Upstream, f.Status, http.StatusText(f.Status))
	}
}

// UpstreamFailures prepares one request whose errors come from the cache: it returns
// ctx with a note that the cache fills when the request fails because of the
// upstream, and w wrapped so that the error response for that failure goes out with
// the failure's wire status (502, 504 or 429), the Hopless-Upstream-Error header and
// the upstream's Retry-After. Every other response passes through unchanged: a
// failure of registryd's own keeps its status and gets no header. Headers are set in
// WriteHeader, so HEAD responses, which have no body, carry them too.
func UpstreamFailures(ctx context.Context, w http.ResponseWriter) (context.Context, http.ResponseWriter) {
	n := &failureNote{}
	return context.WithValue(ctx, failureKey{}, n), &failureWriter{ResponseWriter: w, note: n}
}

type failureKey struct{}

// failureNote is the upstream failure of one request, and the status of the registry
// error it became; or, for a request answered from a tag's last known answer, that
// the answer is stale.
type failureNote struct {
	mu     sync.Mutex
	err    *upstream.Error
	status int
	stale  bool
}

// markStale notes in ctx that the request is answered from a tag's last known
// answer: its successful response says Hopless-Cache: stale.
func markStale(ctx context.Context) {
	if n, ok := ctx.Value(failureKey{}).(*failureNote); ok {
		n.mu.Lock()
		n.stale = true
		n.mu.Unlock()
	}
}

func (n *failureNote) isStale() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stale
}

func (n *failureNote) set(e *upstream.Error, status int) {
	n.mu.Lock()
	n.err, n.status = e, status
	n.mu.Unlock()
}

func (n *failureNote) get() (*upstream.Error, int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err, n.status
}

// failureWriter rewrites the error response of a noted upstream failure.
type failureWriter struct {
	http.ResponseWriter
	note  *failureNote
	wrote bool
}

func (w *failureWriter) WriteHeader(code int) {
	if !w.wrote && code >= http.StatusOK {
		w.wrote = true
		// Only the response made of the noted failure: distribution writes it with
		// the status of its registry error.
		if e, status := w.note.get(); e != nil && code == status {
			f := e.Failure()
			h := w.Header()
			h.Set(upstreamerr.Header, f.String())
			if e.RetryAfter != "" {
				h.Set("Retry-After", e.RetryAfter)
			}
			code = upstreamerr.WireStatus(f)
		} else if code < 300 && w.note.isStale() {
			w.Header().Set(CacheHeader, cacheStale)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *failureWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *failureWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *failureWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
