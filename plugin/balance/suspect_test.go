package balance

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestOvertakenEndpointIsAvoided: once a hedge overtakes a request to a frozen
// master, the next requests go elsewhere at once instead of each paying another hedge
// delay until the response-header deadline or a health check ejects it.
func TestOvertakenEndpointIsAvoided(t *testing.T) {
	t.Parallel()
	healthy := newBackend(t, false, ok("fine"))
	stuck := frozen(t, "http")
	reg := prometheus.NewRegistry()
	b := newBalancer(t, Config{
		Endpoints:      endpoints(stuck, healthy.url(t)),
		ResponseHeader: 5 * time.Second,
		HedgeMin:       200 * time.Millisecond,
		HedgeMax:       200 * time.Millisecond,
		Metrics:        NewMetrics(reg),
	})
	for i := range 6 {
		if _, body, err := get(t, b, "/v2/x/blobs/sha256:1"); err != nil || body != "fine" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	// Only the first request went to the frozen master, and so needed a hedge; with
	// equal weights plain round robin would send every other request there, each
	// paying a hedge delay. (The hedge loser's own attempt is counted once it is
	// cancelled, after its request returned, so it is not counted here.)
	if n := metric(t, reg, "hopless_plugin_hedges_total", nil); n != 1 {
		t.Errorf("%v hedges for 6 requests, want 1: the frozen endpoint kept being picked", n)
	}
	if n := healthy.hits.Load(); n != 6 {
		t.Fatalf("healthy endpoint served %d of 6 requests", n)
	}
}
