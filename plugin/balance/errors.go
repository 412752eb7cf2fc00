package balance

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/internal/upstreamerr"
)

// AllDownError is returned when no endpoint could answer a request: every endpoint
// was tried and failed. Errors holds each endpoint URL with what it did (this
// request's attempt, or the reason it is out of rotation). It matches
// errdefs.ErrUnavailable, and it is the only error of the balancer that does.
type AllDownError struct {
	Errors map[string]error
	// tried counts the attempts the request made; 0 means none could be made.
	tried int
}

func (e *AllDownError) Error() string {
	urls := make([]string, 0, len(e.Errors))
	for u := range e.Errors {
		urls = append(urls, u)
	}
	slices.Sort(urls)
	var sb strings.Builder
	fmt.Fprintf(&sb, "all %d registry endpoints are down", len(urls))
	for i, u := range urls {
		sep := "; "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(&sb, "%s%s: %v", sep, u, e.Errors[u])
	}
	return sb.String()
}

// Is makes errors.Is(err, errdefs.ErrUnavailable) and errdefs.IsUnavailable true.
// The endpoint errors are deliberately not unwrapped: a context.DeadlineExceeded of
// one attempt must not look like the caller's own deadline.
func (e *AllDownError) Is(target error) bool {
	return target == errdefs.ErrUnavailable
}

// UpstreamError is a master's answer that the upstream registry behind it failed
// (registryd marks such answers with the upstream-error header). It is an answer,
// not a failure of the master: the master stays in rotation, and the error reaches
// containerd as it is. It is deliberately not errdefs.ErrUnavailable, so it never
// triggers the fallback to the image host.
type UpstreamError struct {
	// Request is "METHOD URL" of the attempt, with the master's URL.
	Request string
	// Endpoint is the master that answered.
	Endpoint string
	// Status is the master's own status (502, 504 or 429).
	Status int
	// Failure is what the master said of the upstream.
	Failure upstreamerr.Failure
	// RetryAfter is the Retry-After the master passed on, if any.
	RetryAfter string
}

func (e *UpstreamError) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s: upstream %s ", e.Request, e.Failure.Upstream)
	if e.Failure.Status != 0 {
		fmt.Fprintf(&sb, "answered %d", e.Failure.Status)
	} else {
		fmt.Fprintf(&sb, "did not answer (%s)", e.Failure.Reason)
	}
	fmt.Fprintf(&sb, " (master %s answered %d", e.Endpoint, e.Status)
	if e.RetryAfter != "" {
		fmt.Fprintf(&sb, ", Retry-After %s", e.RetryAfter)
	}
	sb.WriteString(")")
	return sb.String()
}

// Is classes a throttled upstream as errdefs.ErrResourceExhausted; other upstream
// failures carry no errdefs class.
func (e *UpstreamError) Is(target error) bool {
	return target == errdefs.ErrResourceExhausted && e.Failure.Status == 429
}

// DigestError is a blob body whose bytes, as handed to the caller, do not hash to
// the digest it was asked for. It matches errdefs.ErrDataLoss.
type DigestError struct {
	// Endpoint names the endpoints that served the body, comma-separated.
	Endpoint string
	Want     digest.Digest
	Got      digest.Digest
}

func (e *DigestError) Error() string {
	return fmt.Sprintf("blob %s from %s hashed to %s: the body was corrupt", e.Want, e.Endpoint, e.Got)
}

// Is makes errdefs.IsDataLoss true.
func (e *DigestError) Is(target error) bool {
	return target == errdefs.ErrDataLoss
}

// ResumeError is an answer to a resume request that does not continue the body: a
// status other than 206 (or 200, which is skipped up to the offset), a
// Content-Range or validator that differs. It says what mismatched.
type ResumeError struct {
	Status int
	Msg    string
	// challenge is the WWW-Authenticate of a 401, for re-authorizing.
	challenge []string
}

func (e *ResumeError) Error() string { return e.Msg }

// timeoutError is the cause of an attempt aborted by one of our own deadlines. It
// satisfies errdefs.IsDeadlineExceeded without being context.DeadlineExceeded.
type timeoutError struct {
	what string
	d    time.Duration
}

func (e *timeoutError) Error() string     { return fmt.Sprintf("%s within %s", e.what, e.d) }
func (e *timeoutError) DeadlineExceeded() {}

// slowError is the cause of a body aborted by the throughput watchdog.
type slowError struct {
	rate, floor float64
	window      time.Duration
}

func (e *slowError) Error() string {
	return fmt.Sprintf("body too slow: %s/s over %s, floor %s/s", bytesString(e.rate), e.window, bytesString(e.floor))
}

func bytesString(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

// statusError is a 5xx answer of the master's own, with the start of its body for
// the error message.
type statusError struct {
	status  string
	snippet string
}

func (e *statusError) Error() string {
	if e.snippet == "" {
		return "status " + e.status
	}
	return fmt.Sprintf("status %s: %s", e.status, e.snippet)
}

// canceledError is the cause of an attempt that the balancer cancelled because it
// was no longer needed (a hedge loser, or a finished body).
type canceledError struct{ why string }

func (e *canceledError) Error() string { return e.why }

var (
	errLost     = &canceledError{"lost the race to another endpoint"}
	errFinished = &canceledError{"finished"}
)
