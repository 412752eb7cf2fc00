package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/hopless/hopless/internal/upstreamerr"
)

// snippetBytes is how much of a 5xx body goes into the error message.
const snippetBytes = 256

// attempt is one request sent to one endpoint. Its context does not inherit the
// caller's cancellation directly: the caller's cancel is forwarded unless the
// attempt has been detached, so that a detached loser can still be judged.
type attempt struct {
	b      *Balancer
	t      ticket
	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   func() bool   // stops forwarding the caller's cancel
	out    *http.Request // the request as sent to the endpoint
	desc   string        // "GET https://master/v2/...", for messages
	class  string        // the request class, for latency windows
	start  time.Time
	once   sync.Once

	mu        sync.Mutex
	timer     *time.Timer // the ResponseHeader deadline
	answered  bool        // the transport returned
	overtaken bool        // a hedge was sent while this attempt waited
	hedged    bool        // it was sent as a hedge
	suspects  bool        // holds one count of the endpoint's suspect
	detached  bool        // left to run after the race ended

	// stalled, set for an attempt of a race, tells the race that the endpoint
	// failed an active check while this attempt waited for headers; it is sent
	// at most once (stallSent), into a buffer of one per endpoint.
	stalled   chan<- *attempt
	stallSent bool
}

// newAttempt prepares req for t's endpoint, with only the scheme and host changed.
// The caller's request is not touched after this returns.
func (b *Balancer) newAttempt(req *http.Request, t ticket) *attempt {
	parent := req.Context()
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	a := &attempt{b: b, t: t, ctx: ctx, cancel: cancel, class: classOf(req)}
	a.stop = context.AfterFunc(parent, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !a.detached {
			cancel(context.Cause(parent))
		}
	})
	d := b.cfg.ResponseHeader
	if req.Body != nil && req.Body != http.NoBody {
		// The deadline is for the answer, so it starts again once an upload is sent.
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) {
				a.mu.Lock()
				defer a.mu.Unlock()
				if !a.answered {
					a.timer.Reset(d)
				}
			},
		})
	}
	e := t.ep
	a.out = req.Clone(ctx)
	a.out.URL.Scheme, a.out.URL.Host = e.url.Scheme, e.url.Host
	a.out.Host = e.url.Host
	a.out.RequestURI = ""
	a.desc = a.out.Method + " " + a.out.URL.Redacted()
	if d, ok := blobDigest(req); ok && reverifying(parent, d) {
		// The master is to hash its stored copy again before serving it: a copy of
		// this blob already failed verification here.
		a.out.Header.Set("Cache-Control", "no-cache")
	}
	e.outstanding.Add(1)
	return a
}

// roundTrip sends the request, bounded by ResponseHeader.
func (a *attempt) roundTrip() (*http.Response, error) {
	d := a.b.cfg.ResponseHeader
	a.start = time.Now()
	a.mu.Lock()
	a.timer = time.AfterFunc(d, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if !a.answered {
			a.cancel(&timeoutError{what: "no response headers", d: d})
		}
	})
	a.mu.Unlock()
	a.b.waiting(a, true)

	resp, err := a.b.transport.RoundTrip(a.out)

	a.b.waiting(a, false)
	a.mu.Lock()
	a.answered = true
	a.timer.Stop()
	a.clearSuspect()
	a.mu.Unlock()
	return resp, err
}

// endpointFailed tells the attempt's race, if it still waits for headers, that its
// endpoint just failed an active check. The race decides whether to abort it. An
// attempt left to run after its race (detached) is aborted at once: no request
// waits on it. One outside a race (a request that may not be repeated) has nowhere
// else to go and waits to its own deadline.
func (a *attempt) endpointFailed() {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.answered:
	case a.detached:
		a.abortLocked()
	case a.stalled != nil && !a.stallSent:
		a.stallSent = true
		a.stalled <- a
	}
}

// abortWaiting cancels the attempt if it still waits for headers: its endpoint
// failed an active check, so the answer is likely not coming, and the request moves
// on now rather than at its own deadline (or a hedge that the budget may not allow).
func (a *attempt) abortWaiting() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.abortLocked()
}

// abortLocked is abortWaiting with a.mu held.
func (a *attempt) abortLocked() {
	if !a.answered {
		a.cancel(&timeoutError{what: "no response headers before the endpoint failed its active check", d: time.Since(a.start).Round(time.Millisecond)})
	}
}

// verdict is what an attempt's answer means for the request.
type verdict int

const (
	// verdictOK: an answer to pass to the caller (or one that accept refused).
	verdictOK verdict = iota
	// verdictUpstream: the master passed on the upstream's failure; an answer,
	// not a failure of the master.
	verdictUpstream
	// verdictFail: a failure of the endpoint.
	verdictFail
	// verdictRefused: an answer that does not continue a resumed body.
	verdictRefused
)

// judge records the outcome of roundTrip in the endpoint's health and the metrics,
// by the failure classes of the package documentation. It returns verdictOK for an
// answer below 500, and also for a 5xx of the master's own if keep5xx is set (the
// caller passes it on); verdictUpstream with an *UpstreamError for a failure the
// master marks as the upstream's; verdictFail with the error otherwise, a 5xx body
// consumed for the message.
func (a *attempt) judge(resp *http.Response, err error, keep5xx bool) (verdict, error) {
	name := a.t.ep.name
	if err != nil {
		cause := context.Cause(a.ctx)
		var te *timeoutError
		switch {
		case errors.As(cause, &te):
			err = fmt.Errorf("%s: %w", a.desc, cause)
			a.b.metrics.requestOutcome(name, "error")
			a.b.failed(a.t, err, kindTimeout)
		case a.ctx.Err() != nil:
			err = fmt.Errorf("%s: %w", a.desc, cause)
			a.b.metrics.requestOutcome(name, "canceled")
			a.b.released(a.t)
		default:
			err = fmt.Errorf("%s: %w", a.desc, err)
			a.b.metrics.requestOutcome(name, "error")
			a.b.failed(a.t, err, kindTransport)
		}
		return verdictFail, err
	}
	a.b.metrics.request(name, resp.StatusCode)
	// Any answer shows the master serving: its next periodic check is not needed.
	a.t.ep.answeredAt.Store(a.b.now().UnixNano())
	took := time.Since(a.start)
	// A header that does not parse leaves the answer the master's own.
	if f, found, ferr := upstreamerr.FromResponse(resp); found && ferr == nil {
		ue := &UpstreamError{Request: a.desc, Endpoint: name, Status: resp.StatusCode, Failure: f, RetryAfter: resp.Header.Get("Retry-After")}
		drainClose(resp)
		a.b.metrics.upstreamError(name, f.Status)
		a.b.answered(a.t)
		return verdictUpstream, ue
	}
	if resp.StatusCode >= 500 {
		se := &statusError{status: resp.Status}
		if !keep5xx {
			se.snippet = a.snippet(resp)
		}
		err := fmt.Errorf("%s: %w", a.desc, se)
		a.b.failed(a.t, err, kindStatus)
		if keep5xx {
			return verdictOK, nil
		}
		return verdictFail, err
	}
	class := a.class
	if resp.StatusCode == http.StatusUnauthorized {
		class = classToken // a challenge is answered at once, whatever was asked
	}
	a.b.hedge.observe(class, took)
	a.b.observeHeaders(a.t.ep, class, took)
	a.b.answered(a.t)
	return verdictOK, nil
}

// drainClose reads a little of an answer's body, so that the connection can be
// reused, and closes it.
func drainClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
}

// snippet reads the start of an error body, within Stall, and closes it.
func (a *attempt) snippet(resp *http.Response) string {
	t := time.AfterFunc(a.b.cfg.Stall, func() {
		a.cancel(&timeoutError{what: "no error body", d: a.b.cfg.Stall})
	})
	defer t.Stop()
	defer resp.Body.Close()
	p, _ := io.ReadAll(io.LimitReader(resp.Body, snippetBytes))
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(p))
	return strings.Join(strings.Fields(s), " ")
}

// markOvertaken notes that a hedge was sent while the attempt waited for headers.
// Until it answers, its endpoint is suspect and new requests avoid it: a frozen
// master would otherwise take the next request too, and each one would cost another
// hedge delay before the response-header deadline or a health check ejects it.
func (a *attempt) markOvertaken() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.overtaken = true
	if !a.answered && !a.suspects {
		a.suspects = true
		a.t.ep.suspect.Add(1)
	}
}

// clearSuspect drops the attempt's count of its endpoint's suspicion; a.mu is held.
func (a *attempt) clearSuspect() {
	if a.suspects {
		a.suspects = false
		a.t.ep.suspect.Add(-1)
	}
}

// abandon ends a loser's part in the race: it is cancelled, unless it was overtaken
// and still waits for headers, in which case it runs on to its deadline so that a
// frozen endpoint is caught; or, if its endpoint has already failed a check (the
// race kept it as its last), it is aborted as failed.
func (a *attempt) abandon() {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.overtaken && !a.answered && a.stallSent:
		a.abortLocked()
	case a.overtaken && !a.answered:
		a.detached = true
	default:
		a.cancel(errLost)
	}
}

// finish releases the attempt once its response is done with. Idempotent.
func (a *attempt) finish() {
	a.once.Do(func() {
		a.mu.Lock()
		a.clearSuspect()
		a.mu.Unlock()
		a.t.ep.outstanding.Add(-1)
		a.b.lastUse.Store(a.b.now().UnixNano())
		a.stop()
		a.cancel(errFinished)
	})
}
