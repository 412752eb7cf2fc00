package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// waitSpool polls until d's spool file holds n bytes.
func waitSpool(t *testing.T, c *committer, d digest.Digest, n int64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		if fi, err := os.Stat(c.SpoolPath(d)); err == nil && fi.Size() == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("spool of %s never held %d bytes", d, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPausedSourceDelaysNothing: the spool is written in large pieces, but every byte
// a source has delivered reaches readers while the source is paused, at any offset.
func TestPausedSourceDelaysNothing(t *testing.T) {
	t.Parallel()
	data := blob(3*mib, 31)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	const pause = mib + 12345
	src := &memSource{data: data, pauseAt: pause, release: make(chan struct{})}
	fl := f.Fill(d, "upstream", src.source)
	r, err := fl.Reader(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, pause)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatalf("reading the %d bytes delivered before the pause: %v", pause, err)
	}
	close(src.release)
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("streamed blob: %d bytes, %v; want the source's", len(head)+len(rest), err)
	}
	waitDone(t, fl)
	checkCommitted(t, c, d, data)
}

// TestTailHeldUntilVerified: with every byte but the last written to the spool,
// readers get only up to the last 64 KiB boundary before the end; the tail comes
// once the digest matches.
func TestTailHeldUntilVerified(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 100
	data := blob(size, 32)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	src := &memSource{data: data, pauseAt: size - 1, release: make(chan struct{})}
	fl := f.Fill(d, "upstream", src.source)
	waitSpool(t, c, d, size-1)

	// A reader whose context is done still gets what is released, then the
	// context's error: what it gets is exactly what is released.
	rctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	r, err := fl.Reader(rctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const released = (size - 1) / holdback * holdback
	got := make([]byte, released)
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, data[:released]) {
		t.Fatalf("reading the %d released bytes: %v", released, err)
	}
	if n, err := r.Read(make([]byte, 64*kib)); n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("read past the released bytes of an unverified blob: %d bytes, %v", n, err)
	}

	close(src.release)
	all, err := readFrom(testCtx(t), fl, 0)
	if err != nil || !bytes.Equal(all, data) {
		t.Fatalf("after verification: %d bytes, %v; want the whole blob", len(all), err)
	}
	waitDone(t, fl)
	checkCommitted(t, c, d, data)
}

// TestBadTailNeverReleased: a large blob whose last byte is wrong gives readers the
// bytes before its tail, then a data-loss error, never the tail.
func TestBadTailNeverReleased(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 100
	data := blob(size, 33)
	d := digest.FromBytes(data)
	bad := bytes.Clone(data)
	bad[size-1] ^= 1
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	fl := f.Fill(d, "upstream", (&memSource{data: bad}).source)
	got, err := readFrom(testCtx(t), fl, 0)
	const released = (size - 1) / holdback * holdback
	if !errdefs.IsDataLoss(err) || len(got) > released || !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("read %d bytes, %v; want at most %d good ones and data loss", len(got), err, released)
	}
	waitDone(t, fl)
	if n := c.count(d); n != 0 {
		t.Fatalf("commits = %d of a blob that does not verify", n)
	}
}
