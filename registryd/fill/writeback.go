package fill

import "os"

// writebackStep is how much spool a fill writes between two requests to start
// writing it back to disk.
const writebackStep = 8 << 20

// writeback has the kernel start writing a spool file to disk as it grows, from a
// goroutine of its own, so that the fill neither waits for it nor leaves it all to
// the fsync before the commit. Without it the kernel starts only at its background
// threshold (10 % of memory), and the fsync of a 64 MiB spool then writes all of it
// at once, 190-330 ms here, in the way of every other process's fsync.
type writeback struct {
	file *os.File
	next int64 // the writer's: the size at which it asks again
	grew chan int64
	done chan struct{}
}

func startWriteback(file *os.File) *writeback {
	w := &writeback{file: file, next: writebackStep, grew: make(chan int64, 1), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *writeback) run() {
	defer close(w.done)
	var from int64
	for end := range w.grew {
		if end > from {
			// Best effort: the fsync before the commit is what makes the spool durable.
			_ = startWritingBack(w.file, from, end-from)
			from = end
		}
	}
}

// wrote tells that the spool holds size bytes; only the fill's goroutine calls it.
func (w *writeback) wrote(size int64) {
	if size < w.next {
		return
	}
	w.next = size + writebackStep
	select {
	case w.grew <- size:
	default: // still busy with an earlier range; the next call covers this one
	}
}

func (w *writeback) stop() {
	close(w.grew)
	<-w.done
}
