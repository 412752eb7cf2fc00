package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
)

// maxErrorBody bounds what is read of an error response.
const maxErrorBody = 4 << 10

// transportError classifies an error that left no usable response. The caller's
// cancellation stays a cancellation; anything else, its deadline included, means the
// upstream is unavailable.
func (c *Client) transportError(ctx context.Context, what string, err error) error {
	redactError(err)
	if errors.Is(ctx.Err(), context.Canceled) {
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("%s: %w", what, err)
		}
		return fmt.Errorf("%s: %v: %w", what, err, ctx.Err())
	}
	return fmt.Errorf("%s: upstream %s: %w (%w)", what, c.host, err, errdefs.ErrUnavailable)
}

// statusError classifies an unexpected response by its status, with the registry's
// error codes from the body when it sent them. The caller closes the body.
func (c *Client) statusError(what string, resp *http.Response) error {
	return c.statusErrorAs(what, resp, statusClass(resp.StatusCode))
}

func (c *Client) statusErrorAs(what string, resp *http.Response, class error) error {
	return fmt.Errorf("%s: upstream %s answered %s%s: %w", what, c.host, resp.Status, registryErrors(resp.Body), class)
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
