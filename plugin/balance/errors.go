package balance

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// AllDownError is returned when no endpoint could answer a request: every endpoint
// was tried and failed, or is ejected. Errors holds each endpoint URL with its last
// error. It matches errdefs.ErrUnavailable.
type AllDownError struct {
	Errors map[string]error
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

// timeoutError is the cause of an attempt aborted by one of our own deadlines. It
// satisfies errdefs.IsDeadlineExceeded without being context.DeadlineExceeded.
type timeoutError struct {
	what string
	d    time.Duration
}

func (e *timeoutError) Error() string     { return fmt.Sprintf("%s within %s", e.what, e.d) }
func (e *timeoutError) DeadlineExceeded() {}

// statusError is a 5xx answer, with the start of its body for the error message.
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
