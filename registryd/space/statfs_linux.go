package space

import (
	"fmt"
	"syscall"
)

// Stat measures the filesystem that holds dir.
func Stat(dir string) (Usage, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return Usage{}, fmt.Errorf("stat %s: %w", dir, err)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := int64(fs.Bsize)
	return Usage{Dev: uint64(st.Dev), Total: int64(fs.Blocks) * bs, Avail: int64(fs.Bavail) * bs}, nil
}
