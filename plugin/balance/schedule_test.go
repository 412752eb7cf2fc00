package balance

import (
	"errors"
	"math"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// step is one moment of a schedule test: the clock moves by advance, then what the
// step says happens, then the checks due are run.
type step struct {
	advance time.Duration
	// failChecks makes the endpoint's checks answer 503 from now on; probeFail
	// records a failed on-demand check; use marks a request's start without
	// sending one; inflight then holds an attempt open on the endpoint; get sends
	// one GET.
	failChecks, probeFail, use, inflight, get bool
	// want is the reason of the check due now, "" for none.
	want string
}

// TestCheckSchedule runs one endpoint's check schedule on a fake clock, step by
// step: which check is due when, and why, and which are skipped because a real
// request was answered.
func TestCheckSchedule(t *testing.T) {
	t.Parallel()
	// Without jitter an active balancer checks every 0.95 s (the middle of 0.9 to
	// 1 health_interval), an idle one every 20 s; news of 0.9 s ago spare a check
	// when the balancer turns active.
	const (
		interval = time.Second
		idle     = 20 * time.Second
		ms       = time.Millisecond
	)
	// Two answers, at 0.5 s and 1 s. The first one's wake-up plans the check for
	// 1.45 s; the second answer, after that, stands for it: it is moved to 1.95 s,
	// when the balancer is still active (its last use was at 1 s); the one at 2.9 s
	// is the last at that pace, as the balancer has been idle since 2 s.
	answered := []step{
		{want: checkStart},
		{advance: 500 * ms, get: true},
		{advance: 500 * ms, get: true},
		{advance: 500 * ms},
		{advance: 450 * ms, want: checkActive},
		{advance: 950 * ms, want: checkIdle},
		{advance: idle - ms},
		{advance: ms, want: checkIdle},
	}
	tests := []struct {
		name  string
		code  int  // the answer to requests other than checks
		fixed bool // Config.FixedChecks
		steps []step
		// wantChecks and wantSkipped count the checks the endpoint received and
		// those skipped for a real answer.
		wantChecks, wantSkipped int
	}{
		{
			name: "idle: one check per health_idle_interval",
			steps: []step{
				{want: checkStart},
				{advance: idle - ms},
				{advance: ms, want: checkIdle},
				{advance: idle - ms},
				{advance: ms, want: checkIdle},
			},
			wantChecks: 3,
		},
		{name: "a 200 stands for a check", code: http.StatusOK, steps: answered, wantChecks: 4, wantSkipped: 1},
		{name: "a 404 is an answer too", code: http.StatusNotFound, steps: answered, wantChecks: 4, wantSkipped: 1},
		{name: "a 5xx of the master's own is an answer too", code: http.StatusInternalServerError, steps: answered, wantChecks: 4, wantSkipped: 1},
		{
			// As the fleet benchmark's baseline: health_idle_interval =
			// health_interval, and neither answers nor wake-ups change the 1 s pace.
			name: "with FixedChecks an answer stands for nothing, and the period is 1 s",
			code: http.StatusOK, fixed: true,
			steps: []step{
				{want: checkStart},
				{advance: 500 * ms, get: true},
				{advance: 500 * ms, get: true, want: checkActive},
				{advance: interval - ms},
				{advance: ms, want: checkIdle},
			},
			wantChecks: 3,
		},
		{
			name: "active without answers: every 0.95 s",
			steps: []step{
				{want: checkStart},
				{advance: 700 * ms, use: true}, // checked 0.7 s ago: no wake check
				{advance: 250 * ms, want: checkActive},
				{advance: 500 * ms, use: true},
				{advance: 450 * ms, want: checkActive},
				{advance: 950 * ms, want: checkIdle}, // the last use was 1.4 s ago
				{advance: idle - ms},
				{advance: ms, want: checkIdle},
			},
			wantChecks: 5,
		},
		{
			name: "turning active checks at once",
			steps: []step{
				{want: checkStart},
				{advance: 5 * time.Second},
				{use: true, want: checkWake},
				{advance: 500 * ms, use: true},
				{advance: 450 * ms, want: checkActive},
			},
			wantChecks: 3,
		},
		{
			name: "turning active leaves an endpoint with a request in flight to that request",
			steps: []step{
				{want: checkStart},
				{advance: 5 * time.Second},
				{use: true, inflight: true},
				{advance: 950*ms - ms},
				{advance: ms, want: checkActive}, // in flight: active
			},
			wantChecks: 2,
		},
		{
			name: "out of rotation: every 0.95 s while idle",
			steps: []step{
				{failChecks: true, want: checkStart},
				{advance: 950*ms - ms},
				{advance: ms, want: checkOut},
				{advance: 950 * ms, want: checkOut},
			},
			wantChecks: 3,
		},
		{
			name: "a failed probe brings the next check within 0.95 s",
			steps: []step{
				{want: checkStart},
				{advance: 3 * time.Second, probeFail: true},
				{advance: 950*ms - ms},
				{advance: ms, want: checkOut},
			},
			wantChecks: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var checks atomic.Int64
			var failChecks atomic.Bool
			be := newBackend(t, false, func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.URL.Path != "/v2/":
					w.WriteHeader(tt.code)
				case failChecks.Load():
					checks.Add(1)
					w.WriteHeader(http.StatusServiceUnavailable)
				default:
					checks.Add(1)
				}
			})
			clock := newFakeClock()
			start := clock.Now()
			reg := prometheus.NewRegistry()
			idleInterval := idle
			if tt.fixed {
				idleInterval = interval
			}
			b := newBalancer(t, Config{
				Endpoints: endpoints(be.url(t)), Now: clock.Now, Metrics: NewMetrics(reg),
				HealthInterval: interval, HealthIdleInterval: idleInterval, HealthTimeout: time.Second,
				ConsecutiveFailures: 5, Consecutive5xx: 5, FixedChecks: tt.fixed,
			})
			e := b.eps[0]
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				if s.failChecks {
					failChecks.Store(true)
				}
				if s.probeFail {
					b.checked(e, errors.New("injected probe failure"))
				}
				if s.use {
					b.use()
				}
				if s.inflight {
					e.outstanding.Add(1)
					defer e.outstanding.Add(-1)
				}
				if s.get {
					resp, _, err := get(t, b, "/v2/x/manifests/v1")
					if err == nil && resp.StatusCode != tt.code {
						t.Fatalf("step %d: status %d, want %d", i, resp.StatusCode, tt.code)
					}
				}
				due, _ := b.schedule(clock.Now(), b.woke.Swap(false))
				got := ""
				for _, d := range due {
					got = d.reason
					b.runCheck(t.Context(), d)
				}
				if len(due) > 1 || got != s.want {
					t.Fatalf("step %d (at %s): %d checks due, reason %q; want %q", i, clock.Now().Sub(start), len(due), got, s.want)
				}
			}
			if n := checks.Load(); n != int64(tt.wantChecks) {
				t.Errorf("the endpoint got %d checks, want %d", n, tt.wantChecks)
			}
			if got := metric(t, reg, "hopless_plugin_health_checks_skipped_total", map[string]string{"endpoint": e.name}); got != float64(tt.wantSkipped) {
				t.Errorf("health_checks_skipped_total = %v, want %d", got, tt.wantSkipped)
			}
			total := 0.0
			for _, r := range []string{checkStart, checkWake, checkActive, checkOut, checkIdle} {
				total += metric(t, reg, "hopless_plugin_health_checks_total", map[string]string{"endpoint": e.name, "reason": r})
			}
			if total != float64(tt.wantChecks) {
				t.Errorf("health_checks_total = %v, want %d", total, tt.wantChecks)
			}
		})
	}
}

// TestWakeChecksTheOthers: a balancer that turns active checks at once every
// endpoint it has not heard from lately, but not the one that just answered its
// request.
func TestWakeChecksTheOthers(t *testing.T) {
	t.Parallel()
	bes := []*backend{newBackend(t, false, ok("a")), newBackend(t, false, ok("b")), newBackend(t, false, ok("c"))}
	clock := newFakeClock()
	b := newBalancer(t, Config{Endpoints: endpoints(bes[0].url(t), bes[1].url(t), bes[2].url(t)), Now: clock.Now})
	due, _ := b.schedule(clock.Now(), false)
	for _, d := range due {
		b.runCheck(t.Context(), d)
	}
	clock.Advance(5 * time.Second)
	body := mustGet(t, b, "/v2/x/manifests/v1")
	due, _ = b.schedule(clock.Now(), b.woke.Swap(false))
	woken := map[string]bool{}
	for _, d := range due {
		if d.reason != checkWake {
			t.Errorf("%s: check for %q, want %q", d.e.name, d.reason, checkWake)
		}
		woken[d.e.name] = true
	}
	for i, be := range bes {
		answered := string("abc"[i]) == body
		if woken[be.URL] == answered {
			t.Errorf("%s (answered the request: %v): wake check %v", be.URL, answered, woken[be.URL])
		}
	}
	if len(due) != 2 {
		t.Errorf("%d wake checks, want 2", len(due))
	}
}

// TestSlowStart checks an endpoint's weight after it comes back: a tenth of it at
// once, rising linearly to all of it over SlowStart, and the picks that follow.
func TestSlowStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		slowStart time.Duration
		after     time.Duration // from the endpoint's return
		want      float64       // the effective weight of weight 10
	}{
		{name: "at once", slowStart: 10 * time.Second, want: 1},
		{name: "halfway", slowStart: 10 * time.Second, after: 5 * time.Second, want: 5.5},
		{name: "nearly there", slowStart: 10 * time.Second, after: 9 * time.Second, want: 9.1},
		{name: "done", slowStart: 10 * time.Second, after: 10 * time.Second, want: 10},
		{name: "long after", slowStart: 10 * time.Second, after: time.Minute, want: 10},
		{name: "off", slowStart: -1, want: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			b := newBalancer(t, Config{Endpoints: fakeEndpoints(t, []int{10, 10}, -1), Now: clock.Now, SlowStart: tt.slowStart})
			e := b.eps[0]
			if got := b.Status()[0].EffectiveWeight; got != 10 {
				t.Fatalf("a new endpoint's weight is %v, want its full 10", got)
			}
			b.checked(e, errors.New("injected failure"))
			clock.Advance(3 * time.Second) // time out of rotation is no part of the ramp
			b.checked(e, nil)
			clock.Advance(tt.after)
			st := b.Status()[0]
			if !st.Healthy || st.EffectiveWeight != tt.want {
				t.Fatalf("healthy %v, effective weight %v; want %v", st.Healthy, st.EffectiveWeight, tt.want)
			}
			// SWRR gives each endpoint exactly its weight's share of every round
			// of (sum of weights / their gcd) picks.
			w, other := int(math.Round(tt.want*weightScale)), 10*weightScale
			g := gcd(w, other)
			rounds, want := (w+other)/g, w/g
			picks := 0
			for range rounds {
				if b.pick(nil, false).ep == e {
					picks++
				}
			}
			if picks != want {
				t.Errorf("%d of %d picks, want %d", picks, rounds, want)
			}
		})
	}
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
