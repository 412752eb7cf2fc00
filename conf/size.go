package conf

import (
	"fmt"
	"strconv"
	"strings"
)

// Size is a byte count written as an integer or a string with a binary unit
// ("512MiB", "50GiB").
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1},
}

// ParseSize parses "512", "512B", "64KiB", "256MiB", "50GiB" or "1TiB".
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q: want a whole number of bytes or one with a unit such as 64KiB, 256MiB, 50GiB", s)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("bad size %q: too large", s)
	}
	return Size(n * mult), nil
}

// UnmarshalText parses a size string.
func (z *Size) UnmarshalText(text []byte) error {
	v, err := ParseSize(string(text))
	if err != nil {
		return err
	}
	*z = v
	return nil
}

// MarshalText writes the size in bytes.
func (z Size) MarshalText() ([]byte, error) {
	return []byte(strconv.FormatInt(int64(z), 10)), nil
}
