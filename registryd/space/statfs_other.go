//go:build !linux

package space

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Stat is not implemented here: registryd measures filesystems on Linux only.
func Stat(dir string) (Usage, error) {
	return Usage{}, fmt.Errorf("statfs %s: %w", dir, errdefs.ErrNotImplemented)
}
