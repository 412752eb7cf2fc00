package peers

import "testing"

// FuzzParseContentRange checks that a peer's Content-Range never panics
// parseContentRange and that an accepted one starts within the blob.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-9/100", "bytes 10-99/100", "bytes 10-99/*", "bytes 0-100/100", "bytes 9-0/100",
		"bytes */100", "bytes 0-9", "items 0-9/100", "", "bytes -1-9/100",
		"bytes 0-9223372036854775806/9223372036854775807", "bytes 0-9223372036854775807/9223372036854775807",
		"bytes 0-9223372036854775808/*", "bytes 0-0/-1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, size, err := parseContentRange(s)
		if err != nil {
			return
		}
		if start < 0 || size < -1 || (size >= 0 && start >= size) {
			t.Fatalf("parseContentRange(%q) = start %d, size %d", s, start, size)
		}
	})
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in          string
		start, size int64
		ok          bool
	}{
		{"bytes 10-99/100", 10, 100, true},
		{"bytes 10-99/*", 10, -1, true},
		{"bytes 0-9223372036854775806/9223372036854775807", 0, 9223372036854775807, true},
		{"bytes 0-9223372036854775807/9223372036854775807", 0, 0, false},
		{"bytes 0-9223372036854775808/*", 0, 0, false},
		{"bytes 9223372036854775808-1/*", 0, 0, false},
		{"bytes 0-100/100", 0, 0, false},
		{"bytes 9-0/100", 0, 0, false},
		{"bytes -1-9/100", 0, 0, false},
		{"bytes 0-9/-1", 0, 0, false},
		{"bytes */100", 0, 0, false},
		{"bytes 0-9", 0, 0, false},
	} {
		start, size, err := parseContentRange(tc.in)
		if (err == nil) != tc.ok || (tc.ok && (start != tc.start || size != tc.size)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, start, size, err, tc.start, tc.size, tc.ok)
		}
	}
}
