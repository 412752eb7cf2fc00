package balance

import (
	"testing"
	"time"
)

// TestOvertakenEndpointIsAvoided: once a hedge overtakes a request to a frozen
// master, the next requests go elsewhere at once instead of each paying another hedge
// delay until the response-header deadline or a health check ejects it.
func TestOvertakenEndpointIsAvoided(t *testing.T) {
	t.Parallel()
	healthy := newBackend(t, false, ok("fine"))
	b := newBalancer(t, Config{
		Endpoints:      endpoints(frozen(t, "http"), healthy.url(t)),
		ResponseHeader: 5 * time.Second,
		HedgeMin:       200 * time.Millisecond,
		HedgeMax:       200 * time.Millisecond,
	})
	start := time.Now()
	for i := range 6 {
		if _, body, err := get(t, b, "/v2/x/blobs/sha256:1"); err != nil || body != "fine" {
			t.Fatalf("request %d: %q, %v", i, body, err)
		}
	}
	// The first request to the frozen master costs one hedge delay; with equal weights
	// plain round robin would send every other request there and pay it three times.
	if took := time.Since(start); took > 550*time.Millisecond {
		t.Fatalf("6 requests took %s: the frozen endpoint kept being picked", took)
	}
	if n := healthy.hits.Load(); n != 6 {
		t.Fatalf("healthy endpoint served %d of 6 requests", n)
	}
}
