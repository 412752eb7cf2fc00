package space

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

func TestIs(t *testing.T) {
	t.Parallel()
	enospc := &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"ENOSPC", enospc, true},
		{"EDQUOT wrapped", fmt.Errorf("write: %w", syscall.EDQUOT), true},
		{"refused", fmt.Errorf("blob needs room: %w", ErrNoSpace), true},
		{"in a driver error, which does not unwrap", fmt.Errorf("put: %w", storagedriver.Error{DriverName: "filesystem", Detail: enospc}), true},
		{"in a driver's error list", storagedriver.Errors{DriverName: "s3aws", Errs: []error{errors.New("x"), enospc}}, true},
		{"another errno", &fs.PathError{Op: "write", Path: "/x", Err: syscall.EIO}, false},
		{"another driver error", storagedriver.Error{DriverName: "filesystem", Detail: errors.New("permission denied")}, false},
	} {
		if got := Is(tt.err); got != tt.want {
			t.Errorf("%s: Is(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestStat(t *testing.T) {
	t.Parallel()
	u, err := Stat(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if u.Total <= 0 || u.Avail < 0 || u.Avail > u.Total {
		t.Errorf("Stat = %+v", u)
	}
	if _, err := Stat("/no/such/dir"); err == nil {
		t.Error("Stat of a missing directory succeeded")
	}
}
