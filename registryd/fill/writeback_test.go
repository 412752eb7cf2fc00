package fill

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWritebackSteps: the writer asks for a writeback once per writebackStep bytes,
// and never waits for the goroutine.
func TestWritebackSteps(t *testing.T) {
	w := &writeback{next: writebackStep, grew: make(chan int64, 1)}
	asked := func() int64 {
		select {
		case n := <-w.grew:
			return n
		default:
			return -1
		}
	}
	for _, c := range []struct{ size, want int64 }{
		{1 << 20, -1},
		{writebackStep, writebackStep},
		{writebackStep + 1<<20, -1},
		{2*writebackStep + 5, 2*writebackStep + 5},
	} {
		w.wrote(c.size)
		if got := asked(); got != c.want {
			t.Errorf("after %d bytes: asked for %d, want %d", c.size, got, c.want)
		}
	}
	// A writer ahead of a busy goroutine does not block.
	w.wrote(4 * writebackStep)
	w.wrote(6 * writebackStep)
	if got := asked(); got != 4*writebackStep {
		t.Errorf("queued %d, want the first unserved size %d", got, 4*writebackStep)
	}
}

func TestWritebackRuns(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "spool"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := startWriteback(f)
	if _, err := f.Write(make([]byte, writebackStep+1)); err != nil {
		t.Fatal(err)
	}
	w.wrote(writebackStep + 1)
	if err := startWritingBack(f, 0, writebackStep+1); err != nil {
		t.Errorf("starting the writeback: %v", err)
	}
	w.stop()
}
