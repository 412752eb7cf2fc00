package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Flap freezes and thaws the named process over and over: SIGSTOP, stopFor,
// SIGCONT, runFor, and again, each signal sent to the PID recorded when Flap is
// called (never looked up by name). stop ends the loop, leaves the process
// running (it sends SIGCONT if the process still lives), waits for the loop to
// return, and returns the first signal error, for example because the process
// died. stop may be called more than once; later calls return the same.
func (l *Lab) Flap(name string, stopFor, runFor time.Duration) (stop func() error) {
	p := l.proc(name)
	switch {
	case p == nil:
		err := fmt.Errorf("flap: lab has no process %q", name)
		return func() error { return err }
	case stopFor <= 0 || runFor <= 0:
		err := fmt.Errorf("flap %s: stop and run times must be positive, got %s and %s", name, stopFor, runFor)
		return func() error { return err }
	}
	// A copy: Start may record a new PID for the name meanwhile, and this loop
	// must neither race with that nor signal the new process.
	proc := *p
	quit := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- flap(&proc, stopFor, runFor, quit) }()
	return sync.OnceValue(func() error {
		close(quit)
		err := <-done
		if proc.Alive() {
			if cerr := proc.Signal(syscall.SIGCONT); cerr != nil && proc.Alive() {
				err = errors.Join(err, cerr)
			}
		}
		if err != nil {
			return fmt.Errorf("flap %s: %w", name, err)
		}
		return nil
	})
}

func flap(p *Proc, stopFor, runFor time.Duration, quit <-chan struct{}) error {
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-quit:
			return false
		}
	}
	for {
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		if !wait(stopFor) {
			return nil
		}
		if err := p.Signal(syscall.SIGCONT); err != nil {
			return err
		}
		if !wait(runFor) {
			return nil
		}
	}
}

// RotateCA replaces the masters' certificates with ones from a new CA, as a
// cluster whose CA is rotated would:
//   - it makes a new CA (its certificate in DIR/ca/rotated-N/ca.pem);
//   - it replaces the lab CA file (l.CA, the nodes' tls.ca) atomically with a
//     bundle of the new CA followed by the lab's original CA, which still signs
//     the upstream (and the baseline proxies); the original is kept in
//     DIR/ca/original.pem. After a second rotation the bundle is the newest CA
//     and the original: masters are trusted only through the newest CA;
//   - it issues each master a certificate from the new CA and restarts it, one at
//     a time (by PID, with Stop and Start), so that the others serve meanwhile.
//
// A node that does not read its CA file again fails the TLS handshake with every
// restarted master.
func (l *Lab) RotateCA(ctx context.Context) error {
	dir := filepath.Dir(l.CA)
	orig := filepath.Join(dir, "original.pem")
	origPEM, err := os.ReadFile(orig)
	if errors.Is(err, fs.ErrNotExist) {
		if origPEM, err = os.ReadFile(l.CA); err == nil {
			err = writeFile(orig, origPEM, 0o644)
		}
	}
	if err != nil {
		return fmt.Errorf("rotate CA: keeping the original CA: %w", err)
	}
	n := 1
	for ; ; n++ {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("rotated-%d", n))); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	ca, err := NewCA(filepath.Join(dir, fmt.Sprintf("rotated-%d", n)))
	if err != nil {
		return fmt.Errorf("rotate CA: %w", err)
	}
	bundle := append(append([]byte{}, ca.CertPEM...), origPEM...)
	if err := writeFile(l.CA, bundle, 0o644); err != nil {
		return fmt.Errorf("rotate CA: %w", err)
	}
	var extra []net.IP
	if !l.NginxToProxies {
		extra = nginxIPs(l.Slot, l.nodeModes())
	}
	for i, m := range l.Masters {
		if err := l.Stop(m.Name); err != nil {
			return fmt.Errorf("rotate CA: %w", err)
		}
		ip := net.ParseIP(strings.Split(MasterAddr(l.Slot, i+1), ":")[0])
		if err := ca.IssueService(l.MasterDir(m.Name), append([]net.IP{ip}, extra...)...); err != nil {
			return fmt.Errorf("rotate CA: %s: %w", m.Name, err)
		}
		if err := l.Start(ctx, m.Name); err != nil {
			return fmt.Errorf("rotate CA: restarting %s: %w", m.Name, err)
		}
	}
	return nil
}

// StoredBlobPath is where master (1-based) keeps blob digest with the filesystem
// driver: <storage root>/hopless/blobs/sha256/<hex[:2]>/<hex> (registryd/store).
func (l *Lab) StoredBlobPath(master int, digest string) (string, error) {
	if master < 1 || master > len(l.Masters) {
		return "", fmt.Errorf("lab has no master %d", master)
	}
	if !digestRE.MatchString(digest) {
		return "", fmt.Errorf("%q is not a sha256 digest", digest)
	}
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(l.MasterData(l.Masters[master-1].Name), "hopless", "blobs", "sha256", hex[:2], hex), nil
}

// CorruptStoredBlob flips one byte in the middle of master's (1-based) stored copy
// of blob digest, in place: the file keeps its inode and size, and its access and
// modification times are set back, so that nothing in its metadata shows the
// change and the master, which remembers verified files by those, serves it as
// verified.
func (l *Lab) CorruptStoredBlob(master int, digest string) error {
	path, err := l.StoredBlobPath(master, digest)
	if err != nil {
		return fmt.Errorf("corrupt stored blob: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("corrupt stored blob: master-%d does not hold %s: %w", master, digest, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return fmt.Errorf("corrupt stored blob: %s is not a non-empty file", path)
	}
	atime := fi.ModTime()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("corrupt stored blob: %w", err)
	}
	at := fi.Size() / 2
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		f.Close()
		return fmt.Errorf("corrupt stored blob: %w", err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, at); err != nil {
		f.Close()
		return fmt.Errorf("corrupt stored blob: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("corrupt stored blob: %w", err)
	}
	if err := os.Chtimes(path, atime, fi.ModTime()); err != nil {
		return fmt.Errorf("corrupt stored blob: restoring the times of %s: %w", path, err)
	}
	return nil
}

// TruncateStoredBlob cuts master's (1-based) stored copy of digest to half its size,
// as a crash or a full disk under another writer would leave it.
func (l *Lab) TruncateStoredBlob(master int, digest string) error {
	path, err := l.StoredBlobPath(master, digest)
	if err != nil {
		return fmt.Errorf("truncate stored blob: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("truncate stored blob: master-%d does not hold %s: %w", master, digest, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() < 2 {
		return fmt.Errorf("truncate stored blob: %s is not a file of 2 bytes or more", path)
	}
	if err := os.Truncate(path, fi.Size()/2); err != nil {
		return fmt.Errorf("truncate stored blob: %w", err)
	}
	return nil
}
