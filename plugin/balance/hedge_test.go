package balance

import (
	"net/http"
	"testing"
	"time"
)

func TestHedgeDelay(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	series := func(n int, f func(i int) time.Duration) []time.Duration {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = f(i)
		}
		return s
	}
	tests := []struct {
		name    string
		samples []time.Duration
		checks  []time.Duration // active-check round trips
		other   []time.Duration // samples of another class
		want    time.Duration
	}{
		{name: "no samples, checks known: 4x the median check, clamped", checks: []time.Duration{ms, 2 * ms, 300 * ms}, want: 100 * ms},
		{name: "no samples, slow checks: 4x the median", checks: []time.Duration{50 * ms, 60 * ms, 70 * ms}, want: 240 * ms},
		{name: "another class's samples do not count", other: series(50, func(int) time.Duration { return 500 * ms }), want: time.Second},
		{name: "no samples: HedgeMax", want: time.Second},
		{name: "too few samples: HedgeMax", samples: series(ttfbMinSamples-1, func(int) time.Duration { return ms }), want: time.Second},
		{name: "fast answers: clamped to HedgeMin", samples: series(ttfbMinSamples, func(int) time.Duration { return ms }), want: 100 * ms},
		{name: "p95 of 1..200ms", samples: series(200, func(i int) time.Duration { return time.Duration(i+1) * ms }), want: 190 * ms},
		{name: "slow answers: clamped to HedgeMax", samples: series(50, func(int) time.Duration { return 5 * time.Second }), want: time.Second},
		{name: "window slides past old slow answers", samples: append(
			series(ttfbWindow, func(int) time.Duration { return 5 * time.Second }),
			series(ttfbWindow, func(int) time.Duration { return 300 * ms })...), want: 300 * ms},
		{name: "a few slow outliers do not move p95", samples: series(100, func(i int) time.Duration {
			if i%25 == 0 {
				return 5 * time.Second
			}
			return 200 * ms
		}), want: 200 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHedger(100*ms, time.Second)
			for _, d := range tt.samples {
				h.observe(classBlob, d)
			}
			for _, d := range tt.other {
				h.observe(classManifest, d)
			}
			for _, d := range tt.checks {
				h.observeCheck(d)
			}
			if got := h.delay(classBlob); got != tt.want {
				t.Errorf("hedge delay %v, want %v", got, tt.want)
			}
		})
	}
}

// TestHeadRetried checks that HEAD, like GET, moves on to another endpoint.
func TestHeadRetried(t *testing.T) {
	t.Parallel()
	bad := newBackend(t, false, status(http.StatusBadGateway))
	good := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Content-Digest", "sha256:ab")
	})
	b := newBalancer(t, Config{Endpoints: endpoints(bad.url(t), good.url(t))})
	resp, err := b.RoundTrip(request(t, http.MethodHead, "/v2/x/manifests/v1", nil))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != "sha256:ab" {
		t.Errorf("got %s with digest %q", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
	if bad.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Errorf("hits: bad %d, good %d; want 1 and 1", bad.hits.Load(), good.hits.Load())
	}
	for _, s := range b.Status() {
		if s.Outstanding != 0 {
			t.Errorf("%s: %d outstanding after a HEAD", s.URL, s.Outstanding)
		}
	}
}
