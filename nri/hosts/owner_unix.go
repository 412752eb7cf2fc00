//go:build unix

package hosts

import (
	"io/fs"
	"os"
	"syscall"
)

// owner returns the uid and gid of the file fi describes.
func owner(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return os.Getuid(), os.Getgid()
}

// chown gives f the owner uid, gid unless it has it already, which needs no
// privilege.
func chown(f *os.File, uid, gid int) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if u, g := owner(fi); u == uid && g == gid {
		return nil
	}
	return f.Chown(uid, gid)
}
