package fill

import (
	"io"
	"sync"
)

// readAheadBytes is the ring between a Source's body and the spool. One spool write
// takes at most half of it, so that the ring keeps filling meanwhile.
const readAheadBytes = 256 << 10

// readAhead reads a body in a goroutine of its own into a ring, so that the spool
// is written in large pieces without holding bytes back. Over TLS a body's Read
// returns at most one record (16 KiB), and on ext4 a 16 KiB write costs about twice
// as much per byte as a 128 KiB one: a fill that wrote each Read in turn spent 40%
// of its CPU in pwrite. It also decrypts on one core while the fill hashes and
// writes on the other. Bytes the body has delivered are available to next at once,
// however few: a slow or paused source delays nothing.
type readAhead struct {
	body io.Reader
	want int64 // bytes to read in all; the body is not read past them
	done chan struct{}

	mu      sync.Mutex
	cond    sync.Cond
	ring    []byte
	head    int64 // bytes [head, tail) are in the ring, at offsets modulo its length
	tail    int64
	err     error // the body's, after the bytes before it
	stopped bool
}

// startReadAhead reads want bytes of body, through a ring of ringSize bytes, until
// stop.
func startReadAhead(body io.Reader, want int64, ringSize int) *readAhead {
	ra := &readAhead{body: body, want: want, done: make(chan struct{}), ring: make([]byte, min(want, int64(ringSize)))}
	ra.cond.L = &ra.mu
	go ra.run()
	return ra
}

func (ra *readAhead) run() {
	defer close(ra.done)
	size := int64(len(ra.ring))
	for {
		ra.mu.Lock()
		for ra.tail-ra.head == size && !ra.stopped {
			ra.cond.Wait()
		}
		if ra.stopped || ra.tail == ra.want {
			ra.mu.Unlock()
			return
		}
		start := ra.tail % size
		end := min(size, start+size-(ra.tail-ra.head), start+ra.want-ra.tail)
		ra.mu.Unlock()

		k, err := ra.body.Read(ra.ring[start:end])

		ra.mu.Lock()
		ra.tail += int64(k)
		if err != nil {
			ra.err = err
		}
		ra.cond.Broadcast()
		ra.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// next waits for bytes and returns those at the head of the ring, at most half
// the ring; with none left it returns the body's error. The bytes stay valid until
// release.
func (ra *readAhead) next() ([]byte, error) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for ra.tail == ra.head && ra.err == nil && ra.tail < ra.want {
		ra.cond.Wait()
	}
	if ra.tail == ra.head {
		if ra.err == nil {
			return nil, io.EOF // all wanted bytes were delivered
		}
		return nil, ra.err
	}
	size := int64(len(ra.ring))
	start := ra.head % size
	end := min(size, start+ra.tail-ra.head, start+max(size/2, 1))
	return ra.ring[start:end], nil
}

// release frees the n bytes that next returned.
func (ra *readAhead) release(n int) {
	ra.mu.Lock()
	ra.head += int64(n)
	ra.cond.Broadcast()
	ra.mu.Unlock()
}

// stop ends the goroutine and waits for it: unblock makes a Read in progress
// return (for an HTTP body, cancelling its request's context).
func (ra *readAhead) stop(unblock func()) {
	ra.mu.Lock()
	ra.stopped = true
	ra.cond.Broadcast()
	ra.mu.Unlock()
	select {
	case <-ra.done:
		return
	default:
	}
	unblock()
	<-ra.done
}
