package store

import (
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// TestLeases drives one store's leases through a sequence of reports and clock
// moves and checks, after each step, which sources hold pins and what an eviction
// keeps.
func TestLeases(t *testing.T) {
	t.Parallel()
	type step struct {
		name    string
		advance time.Duration
		// lease to set: source, manifests (by image number), reported and expires
		// relative to the clock.
		source   string
		images   []int
		reported time.Duration
		ttl      time.Duration
		wantErr  func(error) bool
		applied  bool
		// after the step
		sources []string
		kept    []int // images that survive an eviction of everything unpinned
		lapsed  float64
	}
	tests := []struct {
		name       string
		maxSources int
		steps      []step
	}{
		{name: "a lease holds until it lapses", steps: []step{
			{name: "pin", source: "node-1", images: []int{1}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{1}},
			{name: "just before expiry", advance: 59 * time.Second, sources: []string{"node-1"}, kept: []int{1}},
			{name: "lapsed", advance: time.Second, sources: nil, kept: nil, lapsed: 1},
		}},
		{name: "a renewal extends the lease", steps: []step{
			{name: "pin", source: "node-1", images: []int{1}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{1}},
			{name: "renew", advance: 50 * time.Second, source: "node-1", images: []int{1, 2}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{1, 2}},
			{name: "past the first expiry", advance: 20 * time.Second, sources: []string{"node-1"}, kept: []int{1, 2}},
			{name: "past the renewal's", advance: 40 * time.Second, sources: nil, lapsed: 1},
		}},
		{name: "an older report does not replace a newer one", steps: []step{
			{name: "newer", source: "node-1", images: []int{2}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{2}},
			{name: "older, from a peer", source: "node-1", images: []int{1}, reported: -time.Second, ttl: time.Hour, applied: false, sources: []string{"node-1"}, kept: []int{2}},
		}},
		{name: "an empty report removes the pins", steps: []step{
			{name: "pin", source: "node-1", images: []int{1}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{1}},
			{name: "empty", source: "node-1", ttl: time.Minute, applied: true, sources: nil},
		}},
		{name: "sources are bounded; a lapsed one frees its place", maxSources: 2, steps: []step{
			{name: "first", source: "node-1", images: []int{1}, ttl: time.Minute, applied: true, sources: []string{"node-1"}, kept: []int{1}},
			{name: "second", source: "node-2", images: []int{2}, ttl: 2 * time.Minute, applied: true, sources: []string{"node-1", "node-2"}, kept: []int{1, 2}},
			{name: "third refused", source: "node-3", images: []int{3}, ttl: time.Minute, wantErr: errdefs.IsResourceExhausted, sources: []string{"node-1", "node-2"}, kept: []int{1, 2}},
			{name: "a known source may still report", source: "node-1", images: []int{1, 3}, ttl: time.Minute, applied: true, sources: []string{"node-1", "node-2"}, kept: []int{1, 2, 3}},
			{name: "third after the first lapsed", advance: 90 * time.Second, source: "node-3", images: []int{3}, ttl: time.Minute, applied: true, sources: []string{"node-2", "node-3"}, kept: []int{2, 3}, lapsed: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			m := newMetrics()
			opts := []Option{WithClock(clk.Now), WithMetrics(m)}
			if tt.maxSources > 0 {
				opts = append(opts, WithMaxPinSources(tt.maxSources))
			}
			b := newBackend(t, "inmemory")
			for _, st := range tt.steps {
				clk.Advance(st.advance)
				// A fresh store each step, on the same storage: content is put
				// again, and leases must come back from pins.json.
				s := b.open(t, opts...)
				images := map[int]digest.Digest{}
				for i := 1; i <= 3; i++ {
					images[i], _ = putImage(t, s, uint64(i), randomBytes(uint64(10+i), 100))
				}
				if st.source != "" {
					var ds []digest.Digest
					for _, i := range st.images {
						ds = append(ds, images[i])
					}
					now := clk.Now()
					applied, err := s.SetLease(t.Context(), Lease{Source: st.source, Manifests: ds,
						Reported: now.Add(st.reported), Expires: now.Add(st.ttl)})
					switch {
					case st.wantErr != nil && !st.wantErr(err):
						t.Fatalf("%s: SetLease = %v, want a matching error", st.name, err)
					case st.wantErr == nil && err != nil:
						t.Fatalf("%s: SetLease: %v", st.name, err)
					case applied != st.applied:
						t.Fatalf("%s: SetLease applied = %v, want %v", st.name, applied, st.applied)
					}
				}
				var sources []string
				for _, l := range s.Leases() {
					sources = append(sources, l.Source)
				}
				if !equalStrings(sources, st.sources) {
					t.Errorf("%s: sources %v, want %v", st.name, sources, st.sources)
				}
				if got := gauge(t, m.PinSources); got != float64(len(st.sources)) {
					t.Errorf("%s: pin_sources gauge %g, want %d", st.name, got, len(st.sources))
				}
				if got := counter(t, m.PinLeasesLapsed); got != st.lapsed {
					t.Errorf("%s: lapsed leases %g, want %g", st.name, got, st.lapsed)
				}
				// A bound of one byte: only pins keep anything.
				if _, err := s.Evict(t.Context(), 1, 0); err != nil {
					t.Fatal(err)
				}
				keep := map[int]bool{}
				for _, i := range st.kept {
					keep[i] = true
				}
				for i := 1; i <= 3; i++ {
					if got := has(t, s, images[i]); got != keep[i] {
						t.Errorf("%s: image %d kept = %v, want %v", st.name, i, got, keep[i])
					}
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				// Each step's metrics start from a fresh registry.
				m = newMetrics()
				opts[1] = WithMetrics(m)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
