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

	"github.com/opencontainers/go-digest"
)

const (
	// resumeBackoffMin and resumeBackoffMax bound the wait before a resume that
	// may go to an endpoint that already failed this body.
	resumeBackoffMin = 100 * time.Millisecond
	resumeBackoffMax = 2 * time.Second
	// minRateSample is the least time blocked in reads that a throughput figure
	// taken at the end of a body is based on.
	minRateSample = 100 * time.Millisecond
	// cacheHeader is registryd's answer header saying whether a blob came from its
	// store ("hit") or is streamed from a fill ("miss").
	cacheHeader = "Hopless-Cache"
)

// errDelivered says that a broken stream had delivered every byte of the body.
var errDelivered = errors.New("every byte was delivered")

// body is the response body handed to the caller. It aborts a Read that gets no byte
// for Stall, judges the body's throughput against a floor, hashes a whole blob to
// verify its digest, and, for a GET 200 or 206, resumes a stalled, broken or too slow
// stream with a Range request, so that the caller sees one continuous body.
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
	// skip is how many bytes of the current stream to drop before delivering: a
	// 200 answer to a resume starts at byte 0.
	skip int64
	// hash and want verify a whole blob; nil when the body is not one.
	hash digest.Digester
	want digest.Digest
	// servedBy lists the endpoints that delivered bytes, in order.
	servedBy []*endpoint
	// attempts counts the resumes after failures.
	attempts int
	// leftSlow holds the endpoints this body was moved off for being too slow.
	leftSlow     map[*endpoint]bool
	reauthorized bool
	// The current stream: whether the master served it from its cache, when it
	// began, and the throughput window (bytes, time blocked in reads, start).
	hit         bool
	streamStart time.Time
	winStart    time.Time
	winBytes    int64
	winRead     time.Duration

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
		b:        b,
		req:      req,
		a:        a,
		rc:       resp.Body,
		end:      -1,
		total:    -1,
		leftSlow: map[*endpoint]bool{},
	}
	bd.ctx, bd.cancel = context.WithCancel(req.Context())
	if req.Method == http.MethodGet && (req.Body == nil || req.Body == http.NoBody) && !resp.Uncompressed {
		switch resp.StatusCode {
		case http.StatusOK:
			bd.resumable, bd.whole = true, true
			if resp.ContentLength >= 0 {
				bd.total, bd.end = resp.ContentLength, resp.ContentLength-1
			}
			if d, ok := blobDigest(req); ok && req.Header.Get("Range") == "" {
				bd.want, bd.hash = d, d.Algorithm().Digester()
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
	bd.newStream(resp, a)
	bd.stall = time.AfterFunc(b.cfg.Stall, bd.onStall)
	bd.stall.Stop()
	resp.Body = bd
}

// newStream starts the bookkeeping of a stream from a's endpoint.
func (bd *body) newStream(resp *http.Response, a *attempt) {
	now := time.Now()
	bd.hit = resp.Header.Get(cacheHeader) == "hit"
	bd.streamStart, bd.winStart, bd.winBytes, bd.winRead = now, now, 0, 0
	for _, e := range bd.servedBy {
		if e == a.t.ep {
			return
		}
	}
	bd.servedBy = append(bd.servedBy, a.t.ep)
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
		began := time.Now()
		n, err := rc.Read(p)
		bd.stall.Stop()
		blocked := time.Since(began)

		bd.mu.Lock()
		bd.reading = false
		closed := bd.closed
		bd.mu.Unlock()

		if bd.skip > 0 && n > 0 {
			drop := int(min(int64(n), bd.skip))
			copy(p, p[drop:n])
			n -= drop
			bd.skip -= int64(drop)
		}
		bd.n += int64(n)
		bd.winBytes += int64(n)
		bd.winRead += blocked
		if bd.hash != nil {
			bd.hash.Hash().Write(p[:n])
		}
		bd.b.metrics.addBytes(a.t.ep.name, n)
		switch {
		case err == nil:
			if slow := bd.tooSlow(a); slow != nil {
				err = fmt.Errorf("%s: at byte %d: %w", a.desc, bd.start+bd.n, slow)
				bd.b.failed(ticket{ep: a.t.ep}, err, kindSlow)
				bd.b.markSlow(a.t.ep)
				bd.leftSlow[a.t.ep] = true
				if err = bd.resume(err, false); err != nil {
					return bd.fail(n, err)
				}
			}
			if n == 0 {
				continue
			}
			return n, nil
		case err == io.EOF:
			bd.endThroughput(a)
			if err = bd.verify(); err == nil {
				err = io.EOF
			}
			bd.setErr(err)
			bd.cancel()
			a.finish()
			return n, err
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
			err = bd.resume(err, true)
		}
		if errors.Is(err, errDelivered) {
			// Only the end of the stream broke: the body is complete.
			if err = bd.verify(); err == nil {
				err = io.EOF
			}
			bd.cancel()
		}
		if err != nil {
			return bd.fail(n, err)
		}
		if n > 0 {
			return n, nil
		}
	}
}

// fail makes err the body's final error; n bytes of this Read are still delivered.
func (bd *body) fail(n int, err error) (int, error) {
	bd.setErr(err)
	if n > 0 {
		return n, nil
	}
	return 0, err
}

// giveUp logs why the body cannot go on and returns io.ErrUnexpectedEOF itself:
// containerd reopens a body (a new request, from its offset) only on exactly that
// error.
func (bd *body) giveUp(cause error) error {
	bd.b.log.Warn("giving up on a response body", "path", bd.req.URL.Path, "at", bd.start+bd.n, "err", cause)
	return io.ErrUnexpectedEOF
}

// tooSlow judges the current stream's throughput once per Window after Warmup: a
// stream below the floor is left for another endpoint, if one that this body has
// not left yet may take it. The rate is bytes over the time spent blocked in reads,
// so that a caller that reads slowly does not make the master look slow. The floor
// is MinRate; for a stream the master serves from its cache, at least RelativeRate
// times the fastest other endpoint's recent throughput: a stream from a fill moves
// at the upstream's speed, which is not the master's doing.
func (bd *body) tooSlow(a *attempt) error {
	cfg := bd.b.cfg
	now := time.Now()
	if now.Sub(bd.streamStart) < cfg.Warmup || now.Sub(bd.winStart) < cfg.Window {
		return nil
	}
	rate := float64(bd.winBytes) / max(bd.winRead.Seconds(), 1e-3)
	bd.winStart, bd.winBytes, bd.winRead = now, 0, 0
	if bd.hit {
		bd.b.observeThroughput(a.t.ep, rate)
	}
	floor := float64(max(cfg.MinRate, 0))
	if bd.hit && cfg.RelativeRate > 0 {
		floor = max(floor, cfg.RelativeRate*bd.b.bestOtherThroughput(a.t.ep))
	}
	if floor <= 0 || rate >= floor || !bd.resumable {
		return nil
	}
	skip := map[*endpoint]bool{a.t.ep: true}
	for e := range bd.leftSlow {
		skip[e] = true
	}
	if !bd.b.otherAvailable(skip) {
		return nil
	}
	return &slowError{rate: rate, floor: floor, window: cfg.Window}
}

// endThroughput records the throughput of a cache hit's last window, when it rests
// on enough time to mean something.
func (bd *body) endThroughput(a *attempt) {
	if bd.hit && bd.winRead >= minRateSample {
		bd.b.observeThroughput(a.t.ep, float64(bd.winBytes)/bd.winRead.Seconds())
	}
}

// verify checks a whole blob's digest at its end. A mismatch counts against every
// endpoint that served bytes of it.
func (bd *body) verify() error {
	if bd.hash == nil {
		return nil
	}
	got := bd.hash.Digest()
	if got == bd.want {
		return nil
	}
	names := make([]string, len(bd.servedBy))
	for i, e := range bd.servedBy {
		names[i] = e.name
	}
	de := &DigestError{Endpoint: strings.Join(names, ", "), Want: bd.want, Got: got}
	for _, e := range bd.servedBy {
		bd.b.metrics.digestMismatch(e.name)
		bd.b.failed(ticket{ep: e}, de, kindDigest)
	}
	bd.b.log.Warn("a blob failed digest verification", "path", bd.req.URL.Path, "err", de)
	return de
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

// resume replaces the current stream by the rest of the body from an endpoint. The
// first try avoids the endpoint that failed (and those this body left for being
// slow); if nothing takes it, later tries, up to ResumeAttempts with backoff, may go
// to any endpoint, the one that failed included. counted says whether this resume
// follows a failure (a slow stream's first move does not spend an attempt). It
// returns nil, or the error to give the caller.
func (bd *body) resume(cause error, counted bool) error {
	bd.mu.Lock()
	old, oldrc := bd.a, bd.rc
	bd.mu.Unlock()
	oldrc.Close()
	old.finish()

	pos := bd.start + bd.n
	if bd.end >= 0 && pos > bd.end {
		return errDelivered
	}
	rng := fmt.Sprintf("bytes=%d-", pos)
	if bd.end >= 0 {
		rng += strconv.FormatInt(bd.end, 10)
	}
	r := bd.req.Clone(bd.ctx)
	r.Header.Set("Range", rng)
	r.Header.Del("If-Range") // the validators are compared here instead

	exclude := map[*endpoint]bool{old.t.ep: true}
	for e := range bd.leftSlow {
		exclude[e] = true
	}
	if len(exclude) >= len(bd.b.eps) {
		delete(exclude, old.t.ep)
	}
	for try := 0; ; try++ {
		if counted {
			if bd.attempts >= bd.b.cfg.ResumeAttempts {
				return bd.giveUp(cause)
			}
			bd.attempts++
			if try > 0 {
				if err := bd.backoff(); err != nil {
					return fmt.Errorf("%w; resuming it: %w", cause, err)
				}
			}
		}
		bd.b.metrics.resume()
		bd.b.log.Info("resuming a response body", "path", bd.req.URL.Path, "range", rng, "attempt", bd.attempts, "err", cause)
		tried := make(map[*endpoint]bool, len(exclude))
		for e := range exclude {
			tried[e] = true
		}
		resp, a, err := bd.b.race(r, tried, bd.accept(pos))
		if err == nil {
			return bd.install(resp, a, pos)
		}
		if bd.ctx.Err() != nil {
			return fmt.Errorf("%w; resuming it: %w", cause, context.Cause(bd.ctx))
		}
		var re *ResumeError
		if errors.As(err, &re) {
			if re.Status == http.StatusUnauthorized && bd.b.reauth.Load() != nil && !bd.reauthorized {
				bd.reauthorized = true
				if aerr := bd.reauthorize(r, re); aerr == nil {
					continue
				} else {
					err = fmt.Errorf("%w; re-authorizing: %w", err, aerr)
				}
			}
			// An answer that does not continue the body is no outage: say what
			// did not match, and do not let it look like every master is down.
			return fmt.Errorf("%s; resuming it was refused: %w", cause.Error(), err)
		}
		cause = fmt.Errorf("%w; resuming it failed: %w", cause, err)
		counted = true
		exclude = map[*endpoint]bool{}
		for e := range bd.leftSlow {
			exclude[e] = true
		}
	}
}

// install makes the answer to a resume the body's current stream.
func (bd *body) install(resp *http.Response, a *attempt, pos int64) error {
	if resp.StatusCode == http.StatusOK {
		// A 200 to a Range request is the whole resource: drop what was delivered.
		bd.skip = pos
	}
	if bd.end < 0 || bd.total < 0 {
		if resp.StatusCode == http.StatusOK {
			if resp.ContentLength >= 0 {
				bd.total, bd.end = resp.ContentLength, resp.ContentLength-1
			}
		} else if _, e, t, err := parseContentRange(resp.Header.Get("Content-Range")); err == nil {
			bd.end, bd.total = e, t
		}
	}
	bd.newStream(resp, a)
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

// backoff waits before the next resume attempt, or until the body is done with.
func (bd *body) backoff() error {
	d := min(resumeBackoffMin<<(bd.attempts-1), resumeBackoffMax)
	t := time.NewTimer(jitter(d))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-bd.ctx.Done():
		return context.Cause(bd.ctx)
	}
}

// reauthorize asks Reauthorize for fresh credentials after a 401 to a resume.
func (bd *body) reauthorize(r *http.Request, re *ResumeError) error {
	resp := &http.Response{StatusCode: re.Status, Header: http.Header{"Www-Authenticate": re.challenge}, Request: bd.req}
	return (*bd.b.reauth.Load())(bd.ctx, r, resp)
}

// accept returns the check that an answer to the resume request continues this
// body at pos. It captures what it needs: late hedge losers may call it after the
// reader has moved on.
func (bd *body) accept(pos int64) func(*http.Response) error {
	end, total, whole, etag, dgst := bd.end, bd.total, bd.whole, bd.etag, bd.digest
	return func(resp *http.Response) error {
		refuse := func(format string, args ...any) error {
			return &ResumeError{Status: resp.StatusCode, Msg: fmt.Sprintf(format, args...)}
		}
		for _, h := range []struct{ name, want string }{{"ETag", etag}, {"Docker-Content-Digest", dgst}} {
			if got := resp.Header.Get(h.name); h.want != "" && got != "" && got != h.want {
				return refuse("resume: %s %s differs from the first answer's %s", h.name, got, h.want)
			}
		}
		switch {
		case resp.Uncompressed:
			return refuse("resume: the transport decompressed the answer; offsets do not apply")
		case resp.StatusCode == http.StatusPartialContent:
			cr := resp.Header.Get("Content-Range")
			s, e, t, err := parseContentRange(cr)
			switch {
			case err != nil:
				return refuse("resume from byte %d: %v", pos, err)
			case s != pos, end >= 0 && e != end, total >= 0 && t >= 0 && t != total:
				return refuse("resume from byte %d: Content-Range %q does not continue %s", pos, cr, describeRange(pos, end, total))
			}
			return nil
		case resp.StatusCode == http.StatusOK && whole:
			if total >= 0 && resp.ContentLength >= 0 && resp.ContentLength != total {
				return refuse("resume from byte %d: a 200 with Content-Length %d, want %d", pos, resp.ContentLength, total)
			}
			return nil
		case resp.StatusCode == http.StatusUnauthorized:
			re := refuse("resume from byte %d: status %s: the credentials were refused", pos, resp.Status).(*ResumeError)
			re.challenge = resp.Header.Values("Www-Authenticate")
			return re
		}
		return refuse("resume from byte %d: status %s, want 206 Partial Content", pos, resp.Status)
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
