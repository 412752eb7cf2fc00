package balance

import (
	"slices"
	"sync"
	"time"
)

const (
	// ttfbWindow is how many recent times to response headers the hedge delay is
	// computed from.
	ttfbWindow = 256
	// ttfbMinSamples is how many it takes before the percentile is trusted.
	ttfbMinSamples = 20
	// ttfbPercentile is the share of attempts expected to answer before a hedge.
	ttfbPercentile = 95
)

// hedger keeps the sliding window of times to response headers and the hedge delay
// derived from it.
type hedger struct {
	lo, hi time.Duration

	mu      sync.Mutex
	samples [ttfbWindow]time.Duration
	n, next int
	delay   time.Duration
}

func newHedger(lo, hi time.Duration) *hedger {
	return &hedger{lo: lo, hi: hi, delay: hi}
}

// observe adds one time to response headers.
func (h *hedger) observe(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.samples[h.next] = d
	h.next = (h.next + 1) % ttfbWindow
	h.n = min(h.n+1, ttfbWindow)
	if h.n < ttfbMinSamples {
		return
	}
	s := slices.Clone(h.samples[:h.n])
	slices.Sort(s)
	rank := (h.n*ttfbPercentile+99)/100 - 1 // nearest rank, rounded up
	h.delay = min(max(s[rank], h.lo), h.hi)
}

// get returns the current hedge delay.
func (h *hedger) get() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.delay
}
