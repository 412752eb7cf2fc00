package fill

import "os"

// WithSync replaces the fsync of a verified spool file, for tests that watch what
// happens before it ends.
func WithSync(sync func(*os.File) error) Option {
	return func(f *Filler) { f.sync = sync }
}

// WithReadAhead sets the read-ahead ring's size.
func WithReadAhead(n int) Option {
	return func(f *Filler) { f.ringSize = n }
}
