package balance

import "testing"

// FuzzParseContentRange checks that a master's Content-Range never panics
// parseContentRange and that an accepted one has 0 <= first <= last < total
// (total -1 when unknown).
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-9/10", "bytes 5-9/*", "bytes */10", "bytes 5-4/10", "bytes 0-10/10", "bytes 0-9",
		"items 0-9/10", "bytes a-9/10", "bytes -1-9/10", "",
		"bytes 0-9223372036854775806/9223372036854775807", "bytes 0-9223372036854775807/9223372036854775807",
		"bytes 0-9223372036854775808/*", "bytes 0-0/-1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || last < first || total < -1 || (total >= 0 && last >= total) {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d", s, first, last, total)
		}
	})
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in                 string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 0-9/10", 0, 9, 10, true},
		{"bytes 5-9/*", 5, 9, -1, true},
		{"bytes 0-9223372036854775806/9223372036854775807", 0, 9223372036854775806, 9223372036854775807, true},
		{"bytes 0-9223372036854775807/9223372036854775807", 0, 0, 0, false},
		{"bytes 0-9223372036854775808/*", 0, 0, 0, false},
		{"bytes 0-10/10", 0, 0, 0, false},
		{"bytes 5-4/10", 0, 0, 0, false},
		{"bytes -1-9/10", 0, 0, 0, false},
		{"bytes 0-9/-1", 0, 0, 0, false},
		{"bytes */10", 0, 0, 0, false},
		{"bytes 0-9", 0, 0, 0, false},
	} {
		first, last, total, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (first != tc.first || last != tc.last || total != tc.total)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, ok %v", tc.in, first, last, total, err, tc.first, tc.last, tc.total, tc.ok)
		}
	}
}
