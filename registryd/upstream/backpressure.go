package upstream

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// WithClock sets the clock the Client reads for token lifetimes and Retry-After
// windows. The default is time.Now; tests use a fake one.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// holdOff is the Retry-After window of an upstream: until it ends, the Client sends
// the upstream nothing and fails every request with the failure that opened it.
type holdOff struct {
	mu    sync.Mutex
	until time.Time
	err   *Error // the failure that opened the window
	date  bool   // its Retry-After is an HTTP date, passed on unchanged
}

// retryAfterDelay is how long a valid Retry-After value asks to wait from now.
func retryAfterDelay(v string, now time.Time) time.Duration {
	if strings.Trim(v, "0123456789") == "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > int64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64)
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	return t.Sub(now)
}

// openHoldOff starts (or extends) the window e's Retry-After asks for, bounded by
// the Client's cap.
func (c *Client) openHoldOff(e *Error) {
	if e.RetryAfter == "" || c.maxRetryAfter <= 0 {
		return
	}
	now := c.now()
	d := min(retryAfterDelay(e.RetryAfter, now), c.maxRetryAfter)
	if d <= 0 {
		return
	}
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if until := now.Add(d); until.After(h.until) {
		h.until, h.err = until, e
		h.date = strings.Trim(e.RetryAfter, "0123456789") != ""
	}
	c.log.Info("upstream asked to retry later; holding requests off", "status", e.Status,
		"retry_after", e.RetryAfter, "until", h.until)
}

// heldOff is the failure a request within a Retry-After window fails with: the
// upstream's, with the time that is left of the window as its Retry-After (in
// seconds, or the upstream's own date).
func (c *Client) heldOff(what string) error {
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		return nil
	}
	left := h.until.Sub(c.now())
	if left <= 0 {
		h.err = nil
		return nil
	}
	ra := h.err.RetryAfter
	if !h.date {
		ra = strconv.FormatInt(int64((left+time.Second-1)/time.Second), 10)
	}
	return &Error{Host: h.err.Host, Status: h.err.Status, Reason: h.err.Reason, RetryAfter: ra,
		Err: fmt.Errorf("%s: upstream %s answered %d with Retry-After %s; not asking it again for %s: %w",
			what, c.host, h.err.Status, h.err.RetryAfter, left.Round(time.Millisecond), errdefs.ErrUnavailable)}
}

// acquire takes a slot of the upstream's concurrency cap, waiting for one until ctx
// ends.
func (c *Client) acquire(ctx context.Context) error {
	if c.slots == nil {
		return nil
	}
	select {
	case c.slots <- struct{}{}:
		return nil
	default:
	}
	if c.waitHook != nil {
		c.waitHook()
	}
	select {
	case c.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) release() {
	if c.slots != nil {
		<-c.slots
	}
}

// slotBody holds a slot of the concurrency cap until it is closed.
type slotBody struct {
	io.ReadCloser
	release func()
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}
