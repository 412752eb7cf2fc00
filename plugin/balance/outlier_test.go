package balance

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopless/hopless/internal/upstreamerr"
)

// upstreamFailing answers as registryd does when its upstream failed: the wire
// status with the upstream-error header.
func upstreamFailing(status, upstreamStatus int, retryAfter string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f := upstreamerr.Failure{Upstream: "registry.example", Status: upstreamStatus, Reason: "status"}
		w.Header().Set(upstreamerr.Header, f.String())
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, `{"errors":[{"code":"UNAVAILABLE"}]}`, status)
	}
}

// TestConsecutiveFailures checks that an endpoint goes out only after N local-origin
// failures in a row, and that an answer in between resets the count.
func TestConsecutiveFailures(t *testing.T) {
	t.Parallel()
	gone := refused(t)
	good := newBackend(t, false, ok("good"))
	reg := prometheus.NewRegistry()
	// 100:1 sends every request to the refusing endpoint first while it is up.
	b := newBalancer(t, Config{
		Endpoints:           []Endpoint{{URL: gone, Weight: 100}, {URL: good.url(t), Weight: 1}},
		ConsecutiveFailures: 3,
		Metrics:             NewMetrics(reg),
	})
	for i := range 2 {
		mustGet(t, b, "/v2/x/manifests/v1")
		if st := statusOf(b, gone); st.State != StateUp {
			t.Fatalf("after %d failures: %s, want up (threshold 3)", i+1, st.State)
		}
	}
	mustGet(t, b, "/v2/x/manifests/v1")
	if st := statusOf(b, gone); st.State != StateEjected || !strings.Contains(st.Reason, "consecutive failures") {
		t.Fatalf("after 3 failures: %s (%s), want ejected for consecutive failures", st.State, st.Reason)
	}
	if n := metric(t, reg, "hopless_plugin_ejections_total", map[string]string{"endpoint": gone.String(), "reason": "local"}); n != 1 {
		t.Errorf("ejections{reason=local} = %v, want 1", n)
	}
}

// TestFourxxAndUpstreamNeverEject checks the failure classes: a 4xx and a 5xx that
// the master marks as the upstream's are answers. The upstream's failure is tried
// on one more endpoint and then returned as *UpstreamError, not as all-down; a
// throttling 429 is not tried elsewhere.
func TestFourxxAndUpstreamNeverEject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		wantHits  int64 // over both endpoints
		wantInErr []string
		notFound  bool
	}{
		{name: "404", handler: status(http.StatusNotFound), wantHits: 1, notFound: true},
		{name: "upstream 503", handler: upstreamFailing(http.StatusBadGateway, 503, "7"), wantHits: 2,
			wantInErr: []string{"upstream registry.example answered 503", "answered 502", "Retry-After 7"}},
		{name: "upstream 429", handler: upstreamFailing(http.StatusTooManyRequests, 429, "3"), wantHits: 1,
			wantInErr: []string{"upstream registry.example answered 429"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, c := newBackend(t, false, tt.handler), newBackend(t, false, tt.handler)
			reg := prometheus.NewRegistry()
			// A burst of 10: the retry of an upstream failure is paid from the budget.
			b := newBalancer(t, Config{Endpoints: endpoints(a.url(t), c.url(t)), HedgeBurst: 10, Metrics: NewMetrics(reg)})
			for range 3 {
				resp, _, err := get(t, b, "/v2/x/manifests/v1")
				switch {
				case tt.notFound:
					if err != nil || resp.StatusCode != http.StatusNotFound {
						t.Fatalf("got %v %v, want the 404", resp, err)
					}
				default:
					var ue *UpstreamError
					if !errors.As(err, &ue) {
						t.Fatalf("error %v, want *UpstreamError", err)
					}
					if errdefs.IsUnavailable(err) {
						t.Errorf("an upstream failure is errdefs.ErrUnavailable, which would trigger the fallback")
					}
					contains(t, "error", err.Error(), tt.wantInErr...)
				}
			}
			if got := a.hits.Load() + c.hits.Load(); got != 3*tt.wantHits {
				t.Errorf("the endpoints got %d requests for 3 GETs, want %d", got, 3*tt.wantHits)
			}
			for _, s := range b.Status() {
				if s.State != StateUp {
					t.Errorf("%s is %s (%s): an answer must not eject", s.URL, s.State, s.Reason)
				}
			}
		})
	}
}

// TestConsecutive5xx checks that a master's own 5xx ejects after Consecutive5xx in
// a row.
func TestConsecutive5xx(t *testing.T) {
	t.Parallel()
	bad := newBackend(t, false, status(http.StatusInternalServerError))
	good := newBackend(t, false, ok("good"))
	b := newBalancer(t, Config{Endpoints: []Endpoint{{URL: bad.url(t), Weight: 100}, {URL: good.url(t), Weight: 1}}, Consecutive5xx: 2})
	mustGet(t, b, "/v2/")
	if st := statusOf(b, bad.url(t)); st.State != StateUp {
		t.Fatalf("after one 500: %s, want up", st.State)
	}
	mustGet(t, b, "/v2/")
	if st := statusOf(b, bad.url(t)); st.State != StateEjected || !strings.Contains(st.Reason, "consecutive 5xx") {
		t.Fatalf("after two 500s: %s (%s), want ejected", st.State, st.Reason)
	}
}

// TestMaxEjectionPercent checks the cap: of three endpoints failing alike, at most
// half (so one) is ejected for failures; the others stay in rotation.
func TestMaxEjectionPercent(t *testing.T) {
	t.Parallel()
	a, c := refused(t), refused(t)
	good := newBackend(t, false, ok("good"))
	b := newBalancer(t, Config{Endpoints: endpoints(a, c, good.url(t)), MaxEjectionPercent: 50})
	for range 6 {
		mustGet(t, b, "/v2/")
	}
	ejected := 0
	for _, s := range b.Status() {
		if s.State == StateEjected {
			ejected++
		}
	}
	if ejected != 1 {
		t.Errorf("%d endpoints ejected, want 1 under max_ejection_percent 50 of 3: %+v", ejected, b.Status())
	}
}

// TestPanicRouting checks that when every endpoint is out of rotation a request
// still goes to them, and succeeds where one has recovered, without waiting for
// its backoff.
func TestPanicRouting(t *testing.T) {
	t.Parallel()
	be := newBackend(t, false, status(http.StatusInternalServerError))
	clock := newFakeClock()
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), Now: clock.Now, Metrics: NewMetrics(reg)})
	if _, _, err := get(t, b, "/v2/"); err == nil {
		t.Fatal("a 500 succeeded")
	}
	if st := b.Status()[0]; st.State != StateEjected {
		t.Fatalf("state %s, want ejected", st.State)
	}
	be.set(ok("back"))
	if got := mustGet(t, b, "/v2/"); got != "back" {
		t.Fatalf("body %q", got)
	}
	if n := metric(t, reg, "hopless_plugin_panic_picks_total", nil); n < 1 {
		t.Errorf("panic picks %v, want >= 1", n)
	}
}

// TestRevivalOnlyByCheck checks that, with active checks running, an ejected
// endpoint gets no real request as a trial after its backoff: a passing check
// brings it back.
func TestRevivalOnlyByCheck(t *testing.T) {
	t.Parallel()
	flaky := newBackend(t, false, status(http.StatusBadGateway))
	good := newBackend(t, false, ok("good"))
	clock := newFakeClock()
	b := newBalancer(t, Config{Endpoints: []Endpoint{{URL: flaky.url(t), Weight: 100}, {URL: good.url(t), Weight: 1}}, Now: clock.Now})
	b.checking.Store(true) // as Run does
	mustGet(t, b, "/v2/x/manifests/v1")
	flaky.set(ok("flaky"))
	clock.Advance(backoffMax)
	hits := flaky.hits.Load()
	for range 5 {
		if got := mustGet(t, b, "/v2/x/manifests/v1"); got != "good" {
			t.Fatalf("got %q: a real request was the ejected endpoint's trial", got)
		}
	}
	if flaky.hits.Load() != hits {
		t.Fatalf("the ejected endpoint got %d real requests", flaky.hits.Load()-hits)
	}
	b.checkAll(t.Context())
	if st := statusOf(b, flaky.url(t)); st.State != StateUp {
		t.Fatalf("after a passing check: %s, want up", st.State)
	}
	if got := mustGet(t, b, "/v2/x/manifests/v1"); got != "flaky" {
		t.Errorf("got %q after the check, want the recovered endpoint (weight 100)", got)
	}
}

// TestHedgeBudget checks that with every endpoint slower than the hedge delay,
// hedges stay within the budget: burst plus budget_percent of the requests.
func TestHedgeBudget(t *testing.T) {
	t.Parallel()
	slow := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return // alive, only slow to serve: the on-demand checks pass
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, "slow")
	}
	a, c := newBackend(t, false, slow), newBackend(t, false, slow)
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints: endpoints(a.url(t), c.url(t)),
		HedgeMin:  time.Millisecond, HedgeMax: time.Millisecond,
		HedgeBudgetPercent: 10, HedgeBurst: 1,
		Metrics: NewMetrics(reg),
	})
	const n = 30
	for range n {
		mustGet(t, b, "/v2/x/blobs/sha256:aa")
	}
	hedges := metric(t, reg, "hopless_plugin_hedges_total", nil)
	if max := 1 + 0.1*n; hedges > max {
		t.Errorf("%v hedges for %d requests, want <= %v (burst 1 + 10 %%)", hedges, n, max)
	}
	if hedges < 1 {
		t.Error("no hedge at all: the burst allows one")
	}
	if n := metric(t, reg, "hopless_plugin_hedge_budget_exhausted_total", nil); n < 1 {
		t.Error("the budget was never reported exhausted")
	}
	probes := metric(t, reg, "hopless_plugin_probes_total", nil)
	if got := float64(a.hits.Load() + c.hits.Load()); got != n+hedges+probes {
		t.Errorf("%v backend requests, want %v requests + %v hedges + %v probes", got, n, hedges, probes)
	}
}

// trickle writes content a little at a time, honouring Range.
func trickle(content []byte, chunk int, every time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Hopless-Cache", "miss")
		tw := &trickleWriter{ResponseWriter: w, chunk: chunk, every: every, ctx: r.Context()}
		http.ServeContent(tw, r, "", time.Time{}, bytes.NewReader(content))
	}
}

type trickleWriter struct {
	http.ResponseWriter
	chunk int
	every time.Duration
	ctx   context.Context
}

func (w *trickleWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(w.chunk, len(p))
		m, err := w.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		http.NewResponseController(w.ResponseWriter).Flush()
		p = p[k:]
		select {
		case <-time.After(w.every):
		case <-w.ctx.Done():
			return n, w.ctx.Err()
		}
	}
	return n, nil
}

// TestThroughputWatchdog checks that a body below the floor is resumed on another
// endpoint: the caller gets the whole body, the second endpoint a Range request.
func TestThroughputWatchdog(t *testing.T) {
	t.Parallel()
	content := blob()
	slow := newBackend(t, false, trickle(content, 512, 20*time.Millisecond))
	rr := new(rangeRecorder)
	fast := newBackend(t, false, rr.serve(content, blobETag))
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints: []Endpoint{{URL: slow.url(t), Weight: 100}, {URL: fast.url(t), Weight: 1}},
		Warmup:    50 * time.Millisecond, Window: 50 * time.Millisecond, MinRate: 256 << 10,
		Metrics: NewMetrics(reg),
	})
	if got := mustGet(t, b, "/v2/x/blobs/"+testBlobDigest); got != string(content) {
		t.Fatalf("body of %d bytes differs from the content", len(got))
	}
	got := rr.got()
	if len(got) != 1 || !strings.HasPrefix(got[0], "bytes=") || got[0] == "bytes=0-" {
		t.Errorf("the fast endpoint saw Range %q, want one resume from past byte 0", got)
	}
	if n := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": slow.URL, "kind": "slow"}); n != 1 {
		t.Errorf("errors{kind=slow} of the slow endpoint = %v, want 1", n)
	}
}

// TestResumeSameEndpoint checks the resume budget: with one endpoint, a cut body is
// resumed on that endpoint.
func TestResumeSameEndpoint(t *testing.T) {
	t.Parallel()
	content := blob()
	var calls atomic.Int64
	rr := new(rangeRecorder)
	be := newBackend(t, false, nil)
	be.set(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			breakAfter(be, content, 20000, true)(w, r)
			return
		}
		rr.serve(content, blobETag)(w, r)
	})
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), ConsecutiveFailures: 3})
	if got := mustGet(t, b, "/v2/x/blobs/"+testBlobDigest); got != string(content) {
		t.Fatalf("body of %d bytes differs from the content", len(got))
	}
	if got := rr.got(); len(got) != 1 || got[0] != "bytes=20000-65535" {
		t.Errorf("resume Ranges %q, want [bytes=20000-65535] on the same endpoint", got)
	}
}

// TestGiveUpIsUnexpectedEOF checks that a body the balancer cannot finish ends in
// io.ErrUnexpectedEOF itself, which makes containerd reopen it.
func TestGiveUpIsUnexpectedEOF(t *testing.T) {
	t.Parallel()
	content := blob()
	be := newBackend(t, false, nil)
	be.set(breakAfter(be, content, 5000, true))
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), ResumeAttempts: 2})
	resp, err := b.RoundTrip(request(t, http.MethodGet, "/v2/x/blobs/"+testBlobDigest, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("error %v, want exactly io.ErrUnexpectedEOF", err)
	}
	if len(got) != 15000 || !bytes.Equal(got, content[:len(got)]) {
		t.Errorf("delivered %d bytes, want the first 15000 (5000 from the first answer and each of 2 resumes)", len(got))
	}
}

// TestResumeAccepts200 checks that a 200 to a resume (the master ignored Range) is
// accepted by skipping what was delivered.
func TestResumeAccepts200(t *testing.T) {
	t.Parallel()
	content := blob()
	first := newBackend(t, false, nil)
	first.set(breakAfter(first, content, 10000, true))
	second := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) { w.Write(content) })
	b := newBalancer(t, Config{Endpoints: endpoints(first.url(t), second.url(t))})
	if got := mustGet(t, b, "/v2/x/blobs/"+testBlobDigest); got != string(content) {
		t.Fatalf("body of %d bytes differs from the content", len(got))
	}
}

// TestResumeReauthorizes checks that a 401 to a resume calls Reauthorize and sends
// the resume again with the new credentials.
func TestResumeReauthorizes(t *testing.T) {
	t.Parallel()
	content := blob()
	first := newBackend(t, false, nil)
	first.set(breakAfter(first, content, 10000, true))
	rr := new(rangeRecorder)
	second := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer fresh" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="https://auth.test/token"`)
			http.Error(w, "expired", http.StatusUnauthorized)
			return
		}
		rr.serve(content, blobETag)(w, r)
	})
	var challenges []string
	b := newBalancer(t, Config{
		Endpoints: endpoints(first.url(t), second.url(t)),
		Reauthorize: func(_ context.Context, req *http.Request, resp *http.Response) error {
			challenges = append(challenges, resp.Header.Get("WWW-Authenticate"))
			req.Header.Set("Authorization", "Bearer fresh")
			return nil
		},
	})
	req := request(t, http.MethodGet, "/v2/x/blobs/"+testBlobDigest, nil)
	req.Header.Set("Authorization", "Bearer old")
	resp, err := b.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read %d bytes, err %v; want the whole content", len(got), err)
	}
	if len(challenges) != 1 || !strings.Contains(challenges[0], "auth.test") {
		t.Errorf("Reauthorize saw challenges %q, want the one 401's", challenges)
	}
}

// TestDigestVerified checks that a blob body whose bytes do not hash to its digest
// ends in *DigestError, counted against the endpoint, and that WithReverify makes
// the next request ask for re-verification.
func TestDigestVerified(t *testing.T) {
	t.Parallel()
	good := []byte("the real blob")
	want := digest.FromBytes(good)
	var noCache atomic.Int64
	be := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Cache-Control") == "no-cache" {
			noCache.Add(1)
			w.Write(good)
			return
		}
		w.Write([]byte("rotten bytes!"))
	})
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), Metrics: NewMetrics(reg)})
	_, _, err := get(t, b, "/v2/x/blobs/"+want.String())
	var de *DigestError
	if !errors.As(err, &de) || de.Want != want || !errdefs.IsDataLoss(err) {
		t.Fatalf("error %v, want *DigestError for %s", err, want)
	}
	contains(t, "error", err.Error(), be.URL, want.String())
	if n := metric(t, reg, "hopless_plugin_digest_mismatches_total", map[string]string{"endpoint": be.URL}); n != 1 {
		t.Errorf("digest mismatches %v, want 1", n)
	}

	req := request(t, http.MethodGet, "/v2/x/blobs/"+want.String(), nil)
	req = req.WithContext(WithReverify(req.Context(), want))
	resp, err := b.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got, err := io.ReadAll(resp.Body); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("re-verified GET: %q, %v", got, err)
	}
	if noCache.Load() != 1 {
		t.Errorf("%d requests carried Cache-Control: no-cache, want 1", noCache.Load())
	}
	// A Range request cannot be verified, and is not.
	req = request(t, http.MethodGet, "/v2/x/blobs/"+want.String(), nil)
	req.Header.Set("Range", "bytes=0-")
	if resp, err := b.RoundTrip(req); err != nil {
		t.Fatal(err)
	} else if _, err := io.ReadAll(resp.Body); err != nil {
		t.Errorf("a Range GET was verified: %v", err)
	}
}

// TestCheckAbortsWaiting checks that a request waiting on an endpoint that then
// fails an active check moves on at once, without a hedge (the budget is off) and
// long before its own response-header deadline.
func TestCheckAbortsWaiting(t *testing.T) {
	t.Parallel()
	stuck := frozen(t, "http")
	good := newBackend(t, false, ok("good"))
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints:          []Endpoint{{URL: stuck, Weight: 100}, {URL: good.url(t), Weight: 1}},
		ResponseHeader:     time.Hour, // far beyond the test's own bound
		HealthTimeout:      50 * time.Millisecond,
		HedgeBudgetPercent: -1,
		Metrics:            NewMetrics(reg),
	})
	done := make(chan string, 1)
	go func() {
		_, body, _ := get(t, b, "/v2/x/manifests/v1")
		done <- body
	}()
	eventually(t, "the request to wait on the frozen endpoint", func() bool {
		return statusOf(b, stuck).Outstanding == 1
	})
	b.checkAll(t.Context())
	select {
	case body := <-done:
		if body != "good" {
			t.Fatalf("body %q, want the good endpoint's", body)
		}
	case <-time.After(testTimeout):
		t.Fatal("the request still waits on the endpoint that failed its check")
	}
	if n := metric(t, reg, "hopless_plugin_hedges_total", nil); n != 0 {
		t.Errorf("%v hedges with the budget off", n)
	}
	if n := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": stuck.String(), "kind": "timeout"}); n != 1 {
		t.Errorf("errors{kind=timeout} of the frozen endpoint = %v, want 1", n)
	}
}

// TestCheckKeepsLastEndpoint checks that a failed active check does not abort a
// request's attempt on its last endpoint: with both endpoints frozen, the first is
// left when its check fails, and the second is waited on to the response-header
// deadline, as a stream proxy would wait, instead of failing the request as soon as
// its check fails too (a node too busy to get checks answered fails them all).
func TestCheckKeepsLastEndpoint(t *testing.T) {
	t.Parallel()
	first, last := frozen(t, "http"), frozen(t, "http")
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints:          []Endpoint{{URL: first, Weight: 100}, {URL: last, Weight: 1}},
		ResponseHeader:     2 * time.Second,
		HealthTimeout:      50 * time.Millisecond,
		HedgeBudgetPercent: -1,
		Metrics:            NewMetrics(reg),
	})
	_, _, err := get(t, b, "/v2/x/manifests/v1")
	var down *AllDownError
	if !errors.As(err, &down) {
		t.Fatalf("err = %v, want *AllDownError", err)
	}
	contains(t, "the error", err.Error(),
		first.String()+": GET "+first.String()+"/v2/x/manifests/v1: no response headers before the endpoint failed its active check",
		last.String()+": GET "+last.String()+"/v2/x/manifests/v1: no response headers within 2s")
	for _, u := range []*url.URL{first, last} {
		if n := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": u.String(), "kind": "health"}); n != 1 {
			t.Errorf("errors{kind=health} of %s = %v, want 1: one on-demand check failed", u, n)
		}
	}
}

// TestStuckEndpointDoesNotWaitOnBudget checks that requests waiting on a frozen
// endpoint move off it although the budget has a single token: by the free hedge
// off an endpoint already known stuck, or by the on-demand check that finds it
// frozen, whichever comes first. Each request reaches the frozen endpoint once and
// the good one once, long before the attempts' own deadline.
func TestStuckEndpointDoesNotWaitOnBudget(t *testing.T) {
	t.Parallel()
	stuck := frozen(t, "http")
	good := newBackend(t, false, ok("good"))
	b := newBalancer(t, Config{
		Endpoints:      []Endpoint{{URL: stuck, Weight: 100}, {URL: good.url(t), Weight: 1}},
		ResponseHeader: time.Hour, // far beyond the test's own bound
		HedgeMin:       500 * time.Millisecond, HedgeMax: 500 * time.Millisecond,
		HedgeBudgetPercent: 1, HedgeBurst: 1,
	})
	done := make(chan string, 2)
	for range 2 {
		go func() {
			_, body, _ := get(t, b, "/v2/x/blobs/sha256:aa")
			done <- body
		}()
	}
	for range 2 {
		select {
		case body := <-done:
			if body != "good" {
				t.Fatalf("body %q, want the good endpoint's", body)
			}
		case <-time.After(testTimeout):
			t.Fatal("a request still waits on the stuck endpoint")
		}
	}
	if n := good.hits.Load(); n != 2 {
		t.Errorf("the good endpoint got %d requests, want 2: one per request", n)
	}
}
