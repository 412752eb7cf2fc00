package balance

import (
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// ttfbWindow is how many recent times to response headers, per request class,
	// the hedge delay is computed from.
	ttfbWindow = 256
	// ttfbMinSamples is how many it takes before a class's percentile is trusted.
	ttfbMinSamples = 20
	// ttfbPercentile is the share of attempts expected to answer before a hedge.
	ttfbPercentile = 95
	// coldFactor multiplies the median recent active-check round trip into the
	// hedge delay of a class without enough samples.
	coldFactor = 4
	// rttWindow is how many active-check round trips are kept.
	rttWindow = 32
)

// Request classes: each has its own latency window, since a manifest HEAD, a blob
// GET that may be a cold miss, and a token or 401 exchange answer on different
// scales.
const (
	classManifest = "manifest"
	classBlob     = "blob"
	classToken    = "token"
)

var classes = []string{classManifest, classBlob, classToken}

// classOf is the class of a request: blob GETs are "blob", manifest requests and
// blob HEADs "manifest", everything else (the API base, token realms) "token".
func classOf(req *http.Request) string {
	p := req.URL.Path
	switch {
	case strings.Contains(p, "/blobs/") && req.Method == http.MethodGet:
		return classBlob
	case strings.Contains(p, "/manifests/") || strings.Contains(p, "/blobs/"):
		return classManifest
	}
	return classToken
}

// window is a ring of durations.
type window struct {
	samples []time.Duration
	next    int
}

func newWindow(n int) *window { return &window{samples: make([]time.Duration, 0, n)} }

func (w *window) add(d time.Duration) {
	if len(w.samples) < cap(w.samples) {
		w.samples = append(w.samples, d)
		return
	}
	w.samples[w.next] = d
	w.next = (w.next + 1) % len(w.samples)
}

func (w *window) len() int { return len(w.samples) }

// percentile returns the nearest-rank percentile p (0..100), or 0 when empty.
func (w *window) percentile(p int) time.Duration {
	n := len(w.samples)
	if n == 0 {
		return 0
	}
	s := slices.Clone(w.samples)
	slices.Sort(s)
	return s[max((n*p+99)/100-1, 0)]
}

// hedger keeps the latency windows per class and derives each class's hedge delay.
type hedger struct {
	lo, hi time.Duration

	mu     sync.Mutex
	byKind map[string]*window
	rtt    *window // active-check round trips
}

func newHedger(lo, hi time.Duration) *hedger {
	h := &hedger{lo: lo, hi: hi, byKind: map[string]*window{}, rtt: newWindow(rttWindow)}
	for _, c := range classes {
		h.byKind[c] = newWindow(ttfbWindow)
	}
	return h
}

// observe adds one time to response headers of class.
func (h *hedger) observe(class string, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byKind[class].add(d)
}

// observeCheck adds one active-check round trip.
func (h *hedger) observeCheck(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rtt.add(d)
}

// delay is the hedge delay of class: the p95 of its window clamped to [lo, hi].
// Until the class has enough samples, it is coldFactor times the median recent
// active-check round trip, clamped the same way: what the node knows of the
// masters' latency, rather than hi, so that a master frozen before any history
// exists costs little. The median, since a check that set up a TLS connection is
// an outlier. With neither it is hi.
func (h *hedger) delay(class string) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.byKind[class]
	var d time.Duration
	switch {
	case w.len() >= ttfbMinSamples:
		d = w.percentile(ttfbPercentile)
	case h.rtt.len() > 0:
		d = coldFactor * h.rtt.percentile(50)
	default:
		return h.hi
	}
	return min(max(d, h.lo), h.hi)
}

// budget is a token bucket for hedges and retries, as gRPC's retry throttling and
// Envoy's retry budgets bound them: every request earns ratio tokens, up to burst;
// a hedge is sent only when a whole token is there to spend. So hedges add at most
// ratio of the requests, plus burst, however slow the masters get.
type budget struct {
	ratio, burst float64

	mu     sync.Mutex
	tokens float64
}

func newBudget(percent, burst int) *budget {
	return &budget{ratio: float64(percent) / 100, burst: float64(burst), tokens: float64(burst)}
}

// earn adds one request's share.
func (b *budget) earn() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.tokens+b.ratio, max(b.burst, 1))
}

// take spends a token for a hedge, or reports that none is left.
func (b *budget) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ratio == 0 && b.burst == 0 || b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back a token that take handed out for a hedge that was not sent.
func (b *budget) refund() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = min(b.tokens+1, max(b.burst, 1))
}

// spend charges a retry after a failure. A retry is never refused, since the
// request has nowhere else to go, and failures are bounded by ejection; but it
// leaves fewer tokens for hedges.
func (b *budget) spend() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens = max(b.tokens-1, 0)
}
