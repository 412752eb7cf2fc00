package peers

import (
	"math"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

const nKeys = 10000

func keys() []string {
	ks := make([]string, nKeys)
	for i := range ks {
		ks[i] = digest.FromString(strconv.Itoa(i)).String()
	}
	return ks
}

// staticSet is the view of the master self among endpoints.
func staticSet(t *testing.T, endpoints []conf.Endpoint, self string) *Set {
	t.Helper()
	return mustNew(t, conf.Peers{
		Self:      self,
		Endpoints: endpoints,
		TokenFile: writeFile(t, t.TempDir(), "token", testToken, 0o600),
	})
}

// owner returns the URL of key's owner as s sees it, self included.
func owner(s *Set, key string) string {
	if p, ok := s.Owner(key); ok {
		return p.URL
	}
	return s.self.URL
}

func TestOwnerDistribution(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		endpoints []conf.Endpoint
	}{
		{
			name: "self heaviest 3:1:1",
			endpoints: []conf.Endpoint{
				{URL: "https://10.0.0.1:5001", Weight: 3},
				{URL: "https://10.0.0.2:5001", Weight: 1},
				{URL: "https://10.0.0.3:5001", Weight: 1},
			},
		},
		{
			name: "a peer heaviest 1:3:1",
			endpoints: []conf.Endpoint{
				{URL: "https://10.0.0.1:5001", Weight: 1},
				{URL: "https://10.0.0.2:5001", Weight: 3},
				{URL: "https://10.0.0.3:5001", Weight: 1},
			},
		},
		{
			name: "equal 1:1:1",
			endpoints: []conf.Endpoint{
				{URL: "https://m1.example:5001", Weight: 1},
				{URL: "https://m2.example:5001", Weight: 1},
				{URL: "https://m3.example:5001", Weight: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := staticSet(t, tt.endpoints, tt.endpoints[0].URL)
			total := 0
			for _, e := range tt.endpoints {
				total += e.Weight
			}
			count := map[string]int{}
			for _, k := range keys() {
				count[owner(s, k)]++
			}
			for _, e := range tt.endpoints {
				want := float64(e.Weight) / float64(total)
				got := float64(count[e.URL]) / nKeys
				if math.Abs(got-want) > 0.03 {
					t.Errorf("%s owns %.3f of the keys, want %.3f ± 0.03", e.URL, got, want)
				}
			}
		})
	}
}

// TestOwnerStable takes each non-self peer down in turn and checks that only its keys
// move.
func TestOwnerStable(t *testing.T) {
	t.Parallel()
	endpoints := []conf.Endpoint{
		{URL: "https://10.0.0.1:5001", Weight: 1},
		{URL: "https://10.0.0.2:5001", Weight: 2},
		{URL: "https://10.0.0.3:5001", Weight: 1},
		{URL: "https://10.0.0.4:5001", Weight: 1},
	}
	const totalWeight = 5
	for _, down := range endpoints[1:] {
		t.Run(down.URL, func(t *testing.T) {
			t.Parallel()
			s := staticSet(t, endpoints, endpoints[0].URL)
			ks := keys()
			before := make([]string, len(ks))
			for i, k := range ks {
				before[i] = owner(s, k)
			}
			s.eject(Peer{URL: down.URL, Weight: down.Weight}, nil)
			moved := 0
			for i, k := range ks {
				after := owner(s, k)
				if after == down.URL {
					t.Fatalf("key %s is still owned by the down peer", k)
				}
				if after != before[i] {
					moved++
					if before[i] != down.URL {
						t.Fatalf("key %s moved from %s to %s, though only %s went down", k, before[i], after, down.URL)
					}
				}
			}
			share := float64(down.Weight) / totalWeight
			if frac := float64(moved) / nKeys; frac >= share+0.02 {
				t.Errorf("%.3f of the keys moved, want < %.3f", frac, share+0.02)
			}
		})
	}
}

func TestOwnerSelf(t *testing.T) {
	t.Parallel()
	endpoints := []conf.Endpoint{
		{URL: "https://10.0.0.1:5001", Weight: 1},
		{URL: "https://10.0.0.2:5001", Weight: 1},
	}
	tests := []struct {
		name      string
		set       func(t *testing.T) *Set
		wantFalse float64 // the expected share of keys for which Owner returns false
	}{
		{name: "no peers", set: func(t *testing.T) *Set { return mustNew(t, conf.Peers{}) }, wantFalse: 1},
		{name: "only self listed", set: func(t *testing.T) *Set { return staticSet(t, endpoints[:1], endpoints[0].URL) }, wantFalse: 1},
		{name: "all peers down", set: func(t *testing.T) *Set {
			s := staticSet(t, endpoints, endpoints[0].URL)
			s.eject(Peer{URL: endpoints[1].URL}, nil)
			return s
		}, wantFalse: 1},
		{name: "one healthy peer of equal weight", set: func(t *testing.T) *Set { return staticSet(t, endpoints, endpoints[0].URL) }, wantFalse: 0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.set(t)
			selfOwned := 0
			for _, k := range keys() {
				p, ok := s.Owner(k)
				if !ok {
					if p != (Peer{}) {
						t.Fatalf("Owner(%s) = %+v, false; want the zero Peer", k, p)
					}
					selfOwned++
					continue
				}
				if p.URL == s.self.URL {
					t.Fatalf("Owner(%s) returned self", k)
				}
			}
			if got := float64(selfOwned) / nKeys; math.Abs(got-tt.wantFalse) > 0.03 {
				t.Errorf("self owns %.3f of the keys, want %.3f", got, tt.wantFalse)
			}
		})
	}
}

// TestOwnerAgreement checks that masters that list one another in different forms
// agree on every owner.
func TestOwnerAgreement(t *testing.T) {
	t.Parallel()
	views := []*Set{
		staticSet(t, []conf.Endpoint{{URL: "https://m1:443", Weight: 2}, {URL: "https://m2"}, {URL: "https://m3"}}, "https://m1"),
		staticSet(t, []conf.Endpoint{{URL: "https://M1", Weight: 2}, {URL: "https://m3/"}}, "https://m2:443"),
		staticSet(t, []conf.Endpoint{{URL: "HTTPS://m2:443"}, {URL: "https://m1", Weight: 2}}, "https://m3"),
	}
	for _, k := range keys() {
		want := owner(views[0], k)
		for _, v := range views[1:] {
			if got := owner(v, k); got != want {
				t.Fatalf("key %s: %s says %s owns it, %s says %s", k, views[0].self.URL, want, v.self.URL, got)
			}
		}
	}
}

func BenchmarkOwner(b *testing.B) {
	s, err := New(conf.Peers{
		Self:      "https://10.0.0.1:5001",
		Endpoints: []conf.Endpoint{{URL: "https://10.0.0.2:5001"}, {URL: "https://10.0.0.3:5001"}},
		TokenFile: writeFile(b, b.TempDir(), "token", testToken, 0o600),
	})
	if err != nil {
		b.Fatal(err)
	}
	key := digest.FromString("bench").String()
	for b.Loop() {
		s.Owner(key)
	}
}
