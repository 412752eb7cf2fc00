package balance

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// fakeEndpoints are endpoints nobody listens on: pick never touches the network.
func fakeEndpoints(t *testing.T, weights []int, local int) []Endpoint {
	t.Helper()
	eps := make([]Endpoint, len(weights))
	for i, w := range weights {
		eps[i] = Endpoint{URL: mustURL(t, fmt.Sprintf("https://10.0.0.%d:5001", i+1)), Weight: w, Local: i == local}
	}
	return eps
}

func TestPickShares(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		weights []int
		local   int // index of the local endpoint, -1 for none
		prefer  bool
		down    []int // endpoints ejected before picking
		want    []float64
	}{
		{name: "3:1:1", weights: []int{3, 1, 1}, local: -1, want: []float64{0.6, 0.2, 0.2}},
		{name: "equal", weights: []int{1, 1, 1}, local: -1, want: []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}},
		{name: "5:1", weights: []int{5, 1}, local: -1, want: []float64{5.0 / 6, 1.0 / 6}},
		{name: "3:1:1 one down", weights: []int{3, 1, 1}, local: -1, down: []int{0}, want: []float64{0, 0.5, 0.5}},
		{name: "prefer local", weights: []int{3, 1, 1}, local: 2, prefer: true, want: []float64{0, 0, 1}},
		{name: "prefer local that is down", weights: []int{3, 1, 1}, local: 2, prefer: true, down: []int{2}, want: []float64{0.75, 0.25, 0}},
		{name: "local ignored without prefer", weights: []int{3, 1, 1}, local: 2, want: []float64{0.6, 0.2, 0.2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBalancer(t, Config{Endpoints: fakeEndpoints(t, tt.weights, tt.local), PreferLocal: tt.prefer, Now: newFakeClock().Now})
			for _, i := range tt.down {
				b.failed(ticket{ep: b.eps[i]}, errors.New("injected"), kindTransport)
			}
			const picks = 10000
			counts := make(map[*endpoint]int)
			for range picks {
				tk := b.pick(nil, false)
				if tk.ep == nil {
					t.Fatal("no endpoint picked")
				}
				counts[tk.ep]++
			}
			for i, e := range b.eps {
				share := float64(counts[e]) / picks
				if math.Abs(share-tt.want[i]) > 0.03 {
					t.Errorf("endpoint %d (weight %d): share %.3f, want %.3f ± 0.03", i, e.weight, share, tt.want[i])
				}
			}
		})
	}
}

// TestPickSmooth checks nginx's published sequence for weights 5:1:1: the heavy
// endpoint's turns are spread out rather than bunched.
func TestPickSmooth(t *testing.T) {
	t.Parallel()
	b := newBalancer(t, Config{Endpoints: fakeEndpoints(t, []int{5, 1, 1}, -1)})
	names := map[*endpoint]string{b.eps[0]: "a", b.eps[1]: "b", b.eps[2]: "c"}
	var got strings.Builder
	for range 14 {
		got.WriteString(names[b.pick(nil, false).ep])
	}
	if want := "aabacaaaabacaa"; got.String() != want {
		t.Errorf("sequence %s, want %s", got.String(), want)
	}
}

// TestPickSkipsTried checks that the attempts of one request go to distinct
// endpoints and stop when every endpoint was tried.
func TestPickSkipsTried(t *testing.T) {
	t.Parallel()
	b := newBalancer(t, Config{Endpoints: fakeEndpoints(t, []int{3, 1, 1}, -1)})
	tried := make(map[*endpoint]bool)
	for i := range 3 {
		tk := b.pick(tried, false)
		if tk.ep == nil || tried[tk.ep] {
			t.Fatalf("pick %d: got %v, want an untried endpoint", i, tk.ep)
		}
		tried[tk.ep] = true
	}
	if tk := b.pick(tried, false); tk.ep != nil {
		t.Errorf("pick after all were tried: got %s, want none", tk.ep.name)
	}
}

// TestSharesThroughRoundTrip sends requests through real servers and counts where
// they land.
func TestSharesThroughRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prefer bool
		want   []float64
	}{
		{name: "weights 3:1:1", want: []float64{0.6, 0.2, 0.2}},
		{name: "prefer local", prefer: true, want: []float64{0, 1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bes := []*backend{newBackend(t, false, ok("a")), newBackend(t, false, ok("b")), newBackend(t, false, ok("c"))}
			eps := []Endpoint{
				{URL: bes[0].url(t), Weight: 3},
				{URL: bes[1].url(t), Weight: 1, Local: true},
				{URL: bes[2].url(t), Weight: 1},
			}
			b := newBalancer(t, Config{Endpoints: eps, PreferLocal: tt.prefer})
			const n = 200
			for range n {
				mustGet(t, b, "/v2/")
			}
			for i, be := range bes {
				share := float64(be.hits.Load()) / n
				if math.Abs(share-tt.want[i]) > 0.03 {
					t.Errorf("endpoint %d: share %.3f, want %.3f ± 0.03", i, share, tt.want[i])
				}
			}
			for _, s := range b.Status() {
				if s.Outstanding != 0 {
					t.Errorf("%s: %d outstanding after every body was closed", s.URL, s.Outstanding)
				}
			}
		})
	}
}

func TestNewInvalid(t *testing.T) {
	t.Parallel()
	u := func(s string) Endpoint { return Endpoint{URL: mustURL(t, s)} }
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "no endpoints", cfg: Config{}, want: "no endpoints"},
		{name: "nil URL", cfg: Config{Endpoints: []Endpoint{{}}}, want: "no URL"},
		{name: "bad scheme", cfg: Config{Endpoints: []Endpoint{u("ftp://a:1")}}, want: "scheme"},
		{name: "path", cfg: Config{Endpoints: []Endpoint{u("https://a:1/v2")}}, want: "host[:port] only"},
		{name: "user", cfg: Config{Endpoints: []Endpoint{u("https://u:p@a:1")}}, want: "host[:port] only"},
		{name: "duplicate", cfg: Config{Endpoints: []Endpoint{u("https://a:1"), u("https://a:1/")}}, want: "listed twice"},
		{name: "negative weight", cfg: Config{Endpoints: []Endpoint{{URL: mustURL(t, "https://a:1"), Weight: -1}}}, want: "weight"},
		{name: "negative stall", cfg: Config{Endpoints: []Endpoint{u("https://a:1")}, Stall: -1}, want: "stall"},
		{name: "hedge bounds", cfg: Config{Endpoints: []Endpoint{u("https://a:1")}, HedgeMin: 2e9, HedgeMax: 1e9}, want: "hedge_min"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.cfg)
			if err == nil {
				t.Fatal("New succeeded")
			}
			contains(t, "error", err.Error(), tt.want)
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not errdefs.ErrInvalidArgument", err)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	b := newBalancer(t, Config{Endpoints: []Endpoint{{URL: mustURL(t, "https://a:5001/")}}})
	c := b.cfg
	got := []any{c.Dial, c.ResponseHeader, c.Stall, c.HealthInterval, c.HealthTimeout, c.HedgeMin, c.HedgeMax, b.eps[0].weight, b.eps[0].name}
	want := []any{DefaultDial, DefaultResponseHeader, DefaultStall, DefaultHealthInterval, DefaultHealthTimeout, DefaultHedgeMin, DefaultHedgeMax, 1, "https://a:5001"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if _, ok := b.transport.(*http.Transport); !ok {
		t.Errorf("default transport is %T", b.transport)
	}
}
