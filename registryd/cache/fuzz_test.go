package cache

import "testing"

// FuzzParseRange checks that a Range header never panics parseRange, that an accepted
// range is a non-empty part of [0, size), and that huge numbers never wrap.
func FuzzParseRange(f *testing.F) {
	for _, h := range []string{
		"", "bytes=0-99", "bytes=100-", "bytes=990-5000", "bytes=-10", "bytes=-5000",
		"bytes=999-999", "bytes=1000-", "bytes=5-4", "bytes=-0", "bytes=x-1", "bytes=-1-2",
		"bytes=0-1,5-6", "items=0-1", "bytes=5",
		"bytes=0-9223372036854775807", "bytes=-9223372036854775807", "bytes=9223372036854775807-",
		"bytes=0-9223372036854775808", "bytes=+5-+9", "bytes= 1-2",
	} {
		f.Add(h, int64(1000))
		f.Add(h, int64(0))
	}
	f.Add("bytes=0-9223372036854775806", int64(9223372036854775807))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		start, end, partial, ok := parseRange(h, size)
		if !ok {
			return
		}
		if !partial {
			if start != 0 || end != size {
				t.Fatalf("parseRange(%q, %d) = [%d, %d), whole; want [0, %d)", h, size, start, end, size)
			}
			return
		}
		if start < 0 || start >= end || end > size {
			t.Fatalf("parseRange(%q, %d) = [%d, %d), not a non-empty part of [0, %d)", h, size, start, end, size)
		}
	})
}
