package bench

import (
	"strings"
	"testing"
)

func TestSoakGrown(t *testing.T) {
	t.Parallel()
	series := func(fds ...int) soakProc {
		p := soakProc{name: "master-1", warm: true}
		for _, n := range fds {
			p.judged = append(p.judged, soakSample{goroutines: n, fds: n, rss: 50 << 20})
		}
		p.first, p.last = p.judged[0], p.judged[len(p.judged)-1]
		return p
	}
	tests := []struct {
		name string
		p    soakProc
		want string // a part of the reason; empty: not grown
	}{
		{"flat", series(40, 41, 40, 42, 40, 41), ""},
		{"a plateau reached in the first half", series(20, 90, 150, 160, 155, 160, 158, 161), ""},
		{"a leak that goes on rising", series(20, 60, 100, 140, 180, 220, 260, 300), "open files 140 -> 300"},
		{"too few samples to judge", series(10, 500), ""},
		{"not warmed up", soakProc{name: "master-2", judged: []soakSample{{fds: 1}, {fds: 1}, {fds: 1}, {fds: 900}}, last: soakSample{fds: 900}}, ""},
	}
	for _, tt := range tests {
		got := tt.p.grown()
		if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("%s: grown() = %q, want %q", tt.name, got, tt.want)
		}
	}
}
