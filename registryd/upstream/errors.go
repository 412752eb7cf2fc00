package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/hopless/hopless/internal/upstreamerr"
)

// maxErrorBody bounds what is read of an error response.
const maxErrorBody = 4 << 10

// Error is a failure of the upstream itself: it answered 5xx or 429, could not be
// reached, timed out, or sent an answer that cannot be used. Err wraps
// errdefs.ErrUnavailable, so errdefs checks see an *Error as unavailable, as they see
// every other upstream failure. Failure says what the upstream did; it is what
// registryd passes on to its clients (internal/upstreamerr), and what the fill engine
// recognises an upstream failure by. The message is Err's: it names the request and
// the repository and is for logs, not for clients.
type Error struct {
	// Host is the upstream's host[:port], as in its URL.
	Host string
	// Status is the upstream's HTTP status, 0 when it gave no answer.
	Status int
	// Reason is an upstreamerr reason: status, timeout, unreachable or bad-answer.
	Reason string
	// RetryAfter is the upstream's Retry-After header, unchanged, when it answered
	// 429 or 503 with a valid one; empty otherwise.
	RetryAfter string
	// Err is what went wrong; it wraps errdefs.ErrUnavailable.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "upstream failure: " + e.Failure().String()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Failure is what the upstream did, as the Hopless-Upstream-Error header says it.
func (e *Error) Failure() upstreamerr.Failure {
	return upstreamerr.Failure{Upstream: e.Host, Status: e.Status, Reason: e.Reason}
}

// answerError is a transport-level refusal of what the upstream answered (a redirect
// to plain http, too many redirects): a bad answer rather than no answer.
type answerError string

func (e answerError) Error() string { return string(e) }

// transportError classifies an error that left no usable response. The caller's
// cancellation stays a cancellation; anything else, its deadline included, means the
// upstream is unavailable and is an *Error.
func (c *Client) transportError(ctx context.Context, what string, err error) error {
	redactError(err)
	if errors.Is(ctx.Err(), context.Canceled) {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: %v: %w", what, err, ctx.Err())
	}
	status, reason := transportReason(err)
	return &Error{Host: c.host, Status: status, Reason: reason,
		Err: fmt.Errorf("%s: upstream %s: %w (%w)", what, c.host, err, errdefs.ErrUnavailable)}
}

// transportReason says what an upstream that left no usable response did: a token
// service answering 5xx or 429 is a status, a deadline or network timeout a timeout,
// a refused redirect or an unusable token answer a bad answer, and anything else
// (refused or reset connections, DNS, TLS) unreachable.
func transportReason(err error) (int, string) {
	var te *transport.Error
	var ae answerError
	var ne net.Error
	switch {
	case errors.As(err, &te) && (te.StatusCode >= 500 || te.StatusCode == http.StatusTooManyRequests):
		return te.StatusCode, upstreamerr.ReasonStatus
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return 0, upstreamerr.ReasonTimeout
	case errors.As(err, &ae):
		return 0, upstreamerr.ReasonBadAnswer
	case errors.As(err, &te):
		return te.StatusCode, upstreamerr.ReasonBadAnswer
	default:
		return 0, upstreamerr.ReasonUnreachable
	}
}

// badAnswer marks err, which wraps errdefs.ErrUnavailable, as an unusable answer of
// status.
func (c *Client) badAnswer(status int, err error) error {
	return &Error{Host: c.host, Status: status, Reason: upstreamerr.ReasonBadAnswer, Err: err}
}

// statusError classifies an unexpected response by its status, with the registry's
// error codes from the body when it sent them. The caller closes the body.
func (c *Client) statusError(what string, resp *http.Response) error {
	return c.statusErrorAs(what, resp, statusClass(resp.StatusCode))
}

// statusErrorAs wraps class; an unavailable class is an *Error: a status for 5xx
// and 429, a bad answer for anything else (a ping answering 404).
func (c *Client) statusErrorAs(what string, resp *http.Response, class error) error {
	err := fmt.Errorf("%s: upstream %s answered %s%s: %w", what, c.host, resp.Status, registryErrors(resp.Body), class)
	if !errors.Is(class, errdefs.ErrUnavailable) {
		return err
	}
	code := resp.StatusCode
	e := &Error{Host: c.host, Status: code, Reason: upstreamerr.ReasonStatus, Err: err}
	if code < 500 && code != http.StatusTooManyRequests {
		e.Reason = upstreamerr.ReasonBadAnswer
	}
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		if ra := resp.Header.Get("Retry-After"); upstreamerr.ValidRetryAfter(ra) {
			e.RetryAfter = ra
			c.openHoldOff(e)
		}
	}
	return e
}

func statusClass(code int) error {
	switch {
	case code == http.StatusNotFound:
		return errdefs.ErrNotFound
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case code == http.StatusTooManyRequests || code >= 500:
		return errdefs.ErrUnavailable
	case code == http.StatusBadRequest:
		return errdefs.ErrInvalidArgument
	default:
		return errdefs.ErrUnknown
	}
}

// registryErrors formats the error codes of an OCI error body, or nothing when the body
// is not one.
func registryErrors(body io.Reader) string {
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	b, _ := io.ReadAll(io.LimitReader(body, maxErrorBody))
	if json.Unmarshal(b, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	var parts []string
	for _, d := range e.Errors {
		parts = append(parts, strings.TrimSpace(d.Code+" "+d.Message))
	}
	return " (" + strings.Join(parts, "; ") + ")"
}

// drain reads a little of what is left of a body, so that the connection can be reused,
// and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}
