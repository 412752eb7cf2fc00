package upstream

import "testing"

// FuzzParseContentRange checks that an upstream's Content-Range never panics
// parseContentRange and that an accepted one is either "*/total" or a range with
// 0 <= first <= last < total (total -1 when unknown).
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-9/10", "bytes 5-9/*", "bytes */10", "bytes */*", "bytes 5-4/10", "bytes 0-10/10",
		"bytes 0-9", "items 0-9/10", "bytes a-9/10", "bytes -1-9/10", "",
		"bytes 0-9223372036854775806/9223372036854775807", "bytes 0-9223372036854775807/9223372036854775807",
		"bytes 0-9223372036854775808/*", "bytes 9223372036854775807-9223372036854775807/*",
		"bytes */-1", "bytes 0-0/-1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first == -1 && last == -1 {
			if total < 0 {
				t.Fatalf("parseContentRange(%q) = */%d", s, total)
			}
			return
		}
		if first < 0 || last < first || total < -1 || (total >= 0 && last >= total) {
			t.Fatalf("parseContentRange(%q) = %d-%d/%d", s, first, last, total)
		}
	})
}
