package conf

import (
	"fmt"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("500ms", "1m").
type Duration struct {
	time.Duration
}

// UnmarshalText parses a duration string; negative durations are rejected.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("bad duration %q: want a number with a unit such as 500ms, 3s or 1h", text)
	}
	if v < 0 {
		return fmt.Errorf("bad duration %q: must not be negative", text)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}
