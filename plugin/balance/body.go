package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// body is the response body handed to the caller. It aborts a Read that gets no byte
// for Stall and, for a GET 200 or 206, resumes a stalled or broken stream on another
// endpoint, so that the caller sees one continuous body.
type body struct {
	b      *Balancer
	req    *http.Request      // the caller's request
	ctx    context.Context    // the caller's, cancelled also by Close
	cancel context.CancelFunc // of ctx
	stall  *time.Timer

	// Touched only by the reading goroutine.
	resumable bool
	whole     bool  // the first answer was a 200: the whole resource from byte 0
	start     int64 // offset in the resource of the body's first byte
	end       int64 // offset of its last byte; -1 when unknown
	total     int64 // the resource's length; -1 when unknown
	n         int64 // bytes delivered to the caller
	etag      string
	digest    string
	tried     map[*endpoint]bool // endpoints that served this body

	mu       sync.Mutex
	a        *attempt // the attempt serving the body now
	rc       io.ReadCloser
	reading  bool
	deadline time.Time // of the Read in progress
	closed   bool
	err      error // sticky: io.EOF or the final failure
}

// wrapBody replaces resp.Body, which attempt a produced, by a watched body that
// finishes a when done.
func (b *Balancer) wrapBody(req *http.Request, resp *http.Response, a *attempt) {
	if req.Method == http.MethodHead || resp.Body == nil || resp.Body == http.NoBody {
		a.finish()
		return
	}
	bd := &body{
		b:     b,
		req:   req,
		a:     a,
		rc:    resp.Body,
		end:   -1,
		total: -1,
		tried: map[*endpoint]bool{a.t.ep: true},
	}
	bd.ctx, bd.cancel = context.WithCancel(req.Context())
	if req.Method == http.MethodGet && (req.Body == nil || req.Body == http.NoBody) && !resp.Uncompressed {
		switch resp.StatusCode {
		case http.StatusOK:
			bd.resumable, bd.whole = true, true
			if resp.ContentLength >= 0 {
				bd.total, bd.end = resp.ContentLength, resp.ContentLength-1
			}
		case http.StatusPartialContent:
			// Without a Content-Range (a multipart answer) there is nothing to resume from.
			if s, e, t, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil {
				bd.resumable = true
				bd.start, bd.end, bd.total = s, e, t
			}
		}
		bd.etag = resp.Header.Get("ETag")
		bd.digest = resp.Header.Get("Docker-Content-Digest")
	}
	bd.stall = time.AfterFunc(b.cfg.Stall, bd.onStall)
	bd.stall.Stop()
	resp.Body = bd
}

func (bd *body) Read(p []byte) (int, error) {
	stall := bd.b.cfg.Stall
	for {
		bd.mu.Lock()
		if bd.err != nil {
			err := bd.err
			bd.mu.Unlock()
			return 0, err
		}
		if bd.closed {
			bd.mu.Unlock()
			return 0, http.ErrBodyReadAfterClose
		}
		a, rc := bd.a, bd.rc
		bd.reading = true
		bd.deadline = time.Now().Add(stall)
		bd.mu.Unlock()

		bd.stall.Reset(stall)
		n, err := rc.Read(p)
		bd.stall.Stop()

		bd.mu.Lock()
		bd.reading = false
		closed := bd.closed
		bd.mu.Unlock()

		bd.n += int64(n)
		bd.b.metrics.addBytes(a.t.ep.name, n)
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF:
			bd.setErr(io.EOF)
			bd.cancel()
			a.finish()
			return n, io.EOF
		case closed:
			return n, http.ErrBodyReadAfterClose
		case bd.req.Context().Err() != nil:
			err = fmt.Errorf("%s: %w", a.desc, context.Cause(bd.req.Context()))
			bd.setErr(err)
			return n, err
		}
		kind := kindBody
		var te *timeoutError
		if errors.As(context.Cause(a.ctx), &te) {
			kind, err = kindStall, te
		}
		err = fmt.Errorf("%s: body broken at byte %d: %w", a.desc, bd.start+bd.n, err)
		bd.b.failed(ticket{ep: a.t.ep}, err, kind)
		if bd.resumable {
			err = bd.resume(err)
		}
		if err != nil {
			bd.setErr(err)
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// onStall aborts the Read in progress if it has waited Stall for a byte. The
// deadline check keeps a late timer of an earlier Read from aborting a new one.
func (bd *body) onStall() {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if bd.reading && !time.Now().Before(bd.deadline) {
		bd.a.cancel(&timeoutError{what: "no body bytes", d: bd.b.cfg.Stall})
	}
}

// resume replaces the broken stream by the rest of the body from another endpoint.
// It returns nil, or the error to give the caller (cause included).
func (bd *body) resume(cause error) error {
	bd.mu.Lock()
	old, oldrc := bd.a, bd.rc
	bd.mu.Unlock()
	oldrc.Close()
	old.finish()

	pos := bd.start + bd.n
	if bd.end >= 0 && pos > bd.end {
		return cause // every byte was delivered; only the end of the stream broke
	}
	rng := fmt.Sprintf("bytes=%d-", pos)
	if bd.end >= 0 {
		rng += strconv.FormatInt(bd.end, 10)
	}
	r := bd.req.Clone(bd.ctx)
	r.Header.Set("Range", rng)
	r.Header.Del("If-Range") // the validators are compared here instead
	bd.b.metrics.resume()
	bd.b.log.Info("resuming a response body on another endpoint", "path", bd.req.URL.Path, "range", rng, "err", cause)

	resp, a, err := bd.b.race(r, bd.tried, bd.accept(pos))
	if err != nil {
		return fmt.Errorf("%w; resuming it failed: %w", cause, err)
	}
	if bd.end < 0 || bd.total < 0 {
		if resp.StatusCode == http.StatusOK {
			bd.total, bd.end = resp.ContentLength, resp.ContentLength-1
		} else if _, e, t, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil {
			bd.end, bd.total = e, t
		}
	}

	bd.mu.Lock()
	defer bd.mu.Unlock()
	if bd.closed {
		resp.Body.Close()
		a.finish()
		return http.ErrBodyReadAfterClose
	}
	bd.a, bd.rc = a, resp.Body
	return nil
}

// accept returns the check that an answer to the resume request continues this
// body at pos. It captures what it needs: late hedge losers may call it after the
// reader has moved on.
func (bd *body) accept(pos int64) func(*http.Response) error {
	end, total, whole, etag, digest := bd.end, bd.total, bd.whole, bd.etag, bd.digest
	return func(resp *http.Response) error {
		for _, h := range []struct{ name, want string }{{"ETag", etag}, {"Docker-Content-Digest", digest}} {
			if got := resp.Header.Get(h.name); h.want != "" && got != "" && got != h.want {
				return fmt.Errorf("resume: %s %s differs from the first answer's %s", h.name, got, h.want)
			}
		}
		switch {
		case resp.Uncompressed:
			return errors.New("resume: the transport decompressed the answer; offsets do not apply")
		case resp.StatusCode == http.StatusPartialContent:
			cr := resp.Header.Get("Content-Range")
			s, e, t, err := parseContentRange(cr)
			switch {
			case err != nil:
				return fmt.Errorf("resume from byte %d: %w", pos, err)
			case s != pos, end >= 0 && e != end, total >= 0 && t >= 0 && t != total:
				return fmt.Errorf("resume from byte %d: Content-Range %q does not continue %s", pos, cr, describeRange(pos, end, total))
			}
			return nil
		case resp.StatusCode == http.StatusOK && pos == 0 && whole:
			if total >= 0 && resp.ContentLength >= 0 && resp.ContentLength != total {
				return fmt.Errorf("resume from byte 0: Content-Length %d, want %d", resp.ContentLength, total)
			}
			return nil
		}
		return fmt.Errorf("resume from byte %d: status %s, want 206 Partial Content", pos, resp.Status)
	}
}

func describeRange(pos, end, total int64) string {
	e, t := "", "*"
	if end >= 0 {
		e = strconv.FormatInt(end, 10)
	}
	if total >= 0 {
		t = strconv.FormatInt(total, 10)
	}
	return fmt.Sprintf("bytes %d-%s/%s", pos, e, t)
}

func (bd *body) setErr(err error) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	if bd.err == nil {
		bd.err = err
	}
}

func (bd *body) Close() error {
	bd.mu.Lock()
	if bd.closed {
		bd.mu.Unlock()
		return nil
	}
	bd.closed = true
	a, rc := bd.a, bd.rc
	bd.mu.Unlock()
	bd.stall.Stop()
	bd.cancel()
	err := rc.Close()
	a.finish()
	return err
}

// parseContentRange parses "bytes first-last/total"; total is -1 for "*".
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", s)
	}
	spec, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad()
	}
	rng, size, ok := strings.Cut(spec, "/")
	if !ok {
		return bad()
	}
	f, l, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	if first, err = strconv.ParseInt(f, 10, 64); err != nil || first < 0 {
		return bad()
	}
	if last, err = strconv.ParseInt(l, 10, 64); err != nil || last < first {
		return bad()
	}
	total = -1
	if size != "*" {
		if total, err = strconv.ParseInt(size, 10, 64); err != nil || total <= last {
			return bad()
		}
	}
	return first, last, total, nil
}
