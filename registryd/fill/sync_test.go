package fill_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
)

// syncCommitter fails the test's check if a blob is committed before its spool's
// fsync has returned.
type syncCommitter struct {
	*committer
	synced *atomic.Bool
	early  atomic.Bool
}

func (c *syncCommitter) CommitBlob(ctx context.Context, d digest.Digest, spool string) error {
	if !c.synced.Load() {
		c.early.Store(true)
	}
	return c.committer.CommitBlob(ctx, d, spool)
}

// TestTailReleasedBeforeFsync: once the digest matches, readers get the tail and
// io.EOF while the spool's fsync is still running; the blob is committed only after
// the fsync has returned.
func TestTailReleasedBeforeFsync(t *testing.T) {
	t.Parallel()
	data := blob(3*mib+5*kib, 21)
	d := digest.FromBytes(data)
	var synced atomic.Bool
	c := &syncCommitter{committer: newCommitter(t), synced: &synced}
	entered, release := make(chan struct{}), make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	f, _ := newFiller(t, c, fill.WithSync(func(file *os.File) error {
		close(entered)
		<-release
		err := file.Sync()
		synced.Store(true)
		return err
	}))
	// Runs before the Filler's Close, so that a failing test does not hang there.
	t.Cleanup(releaseOnce)
	src := &memSource{data: data}
	fl := f.Fill(d, "upstream", src.source)

	got, err := readFrom(testCtx(t), fl, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d of %d bytes, err %v, while the fsync waits; want the whole blob", len(got), len(data), err)
	}
	<-entered
	if n := c.count(d); n != 0 {
		t.Fatalf("commits = %d before the fsync returned", n)
	}
	select {
	case <-fl.Done():
		t.Fatal("fill done before its fsync returned")
	default:
	}
	releaseOnce()
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
	if c.early.Load() {
		t.Error("the blob was committed before its fsync returned")
	}
	checkCommitted(t, c.committer, d, data)
}

// TestFailedFsyncCommitsNothing: a spool whose fsync fails is not committed and the
// fill fails; its verified bytes stay for the next fill, which needs no source.
func TestFailedFsyncCommitsNothing(t *testing.T) {
	t.Parallel()
	data := blob(200*kib+3, 22)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	var calls atomic.Int32
	errSync := errors.New("fsync failed")
	f, _ := newFiller(t, c, fill.WithSync(func(file *os.File) error {
		if calls.Add(1) == 1 {
			return errSync
		}
		return file.Sync()
	}))
	src := &memSource{data: data}
	fl := f.Fill(d, "upstream", src.source)
	waitDone(t, fl)
	if err := fl.Err(); !errors.Is(err, errSync) {
		t.Fatalf("fill error %v, want the fsync's", err)
	}
	if n := c.count(d); n != 0 {
		t.Fatalf("commits = %d after a failed fsync", n)
	}
	if _, err := os.Stat(c.SpoolPath(d)); err != nil {
		t.Fatalf("spool file after a failed fsync: %v", err)
	}

	again := f.Fill(d, "upstream", func(context.Context, int64) (io.ReadCloser, int64, error) {
		t.Error("the source was called for a spool that already verifies")
		return nil, 0, errors.New("not called")
	})
	waitDone(t, again)
	if err := again.Err(); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, c, d, data)
	if got := src.seen(); len(got) != 1 {
		t.Errorf("source calls = %v, want one", got)
	}
}
