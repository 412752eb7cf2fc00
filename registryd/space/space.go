// Package space tells a write that failed for lack of disk space from every other
// failure, and measures the filesystems that registryd writes to. A lack of space is
// never a reason to think the bytes already written are bad: the store and the fill
// engine keep what they have and stop writing.
package space

import (
	"errors"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// ErrNoSpace is a write that registryd refused or that failed because the disk has
// no room for it: below the free-space floor, or ENOSPC or EDQUOT.
var ErrNoSpace = errors.New("no space for the cache")

// Is reports whether err is a failure for lack of space: ErrNoSpace, ENOSPC or EDQUOT,
// also inside a storage driver's error, which does not unwrap.
func Is(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var de storagedriver.Error
	if errors.As(err, &de) && de.Detail != nil && de.Detail != err {
		return Is(de.Detail)
	}
	var des storagedriver.Errors
	if errors.As(err, &des) {
		for _, e := range des.Errs {
			if Is(e) {
				return true
			}
		}
	}
	return false
}

// Usage is what a filesystem holds.
type Usage struct {
	// Dev identifies the filesystem (st_dev of the directory asked about).
	Dev uint64
	// Total is its size and Avail what an unprivileged writer may still use, in bytes.
	Total, Avail int64
}
