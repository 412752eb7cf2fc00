package conf

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Space is an amount of disk space: a size ("1GiB", 1073741824, as Size) or a share of
// the filesystem it applies to ("5%", "0.5%").
type Space struct {
	Bytes Size
	// Percent, when > 0, is the share of the filesystem; Bytes is then 0.
	Percent float64
}

// ParseSpace parses a size as ParseSize does, or a percentage such as "5%".
func ParseSpace(s string) (Space, error) {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return Space{}, fmt.Errorf("bad share %q: want a percentage such as 5%% or 0.5%%", s)
		}
		return Space{Percent: v}, nil
	}
	z, err := ParseSize(t)
	if err != nil {
		return Space{}, fmt.Errorf("bad space %q: want a size such as 1GiB or a percentage such as 5%%", s)
	}
	return Space{Bytes: z}, nil
}

// Of is the number of bytes this amount is of a filesystem of total bytes.
func (v Space) Of(total int64) int64 {
	if v.Percent > 0 {
		return int64(float64(total) * v.Percent / 100)
	}
	return int64(v.Bytes)
}

// IsZero reports whether the amount is nothing at all.
func (v Space) IsZero() bool { return v.Bytes == 0 && v.Percent == 0 }

func (v Space) String() string {
	if v.Percent > 0 {
		return strconv.FormatFloat(v.Percent, 'f', -1, 64) + "%"
	}
	return strconv.FormatInt(int64(v.Bytes), 10)
}

// UnmarshalTOML takes an integer number of bytes or a string for ParseSpace.
func (v *Space) UnmarshalTOML(data any) error {
	switch d := data.(type) {
	case int64:
		if d < 0 {
			return fmt.Errorf("must be >= 0, got %d", d)
		}
		*v = Space{Bytes: Size(d)}
		return nil
	case string:
		p, err := ParseSpace(d)
		if err != nil {
			return err
		}
		*v = p
		return nil
	}
	return fmt.Errorf(`must be a number of bytes, a size string such as "1GiB" or a percentage such as "5%%", got %s`, tomlType(data))
}

// MarshalText writes the amount as ParseSpace reads it.
func (v Space) MarshalText() ([]byte, error) { return []byte(v.String()), nil }
