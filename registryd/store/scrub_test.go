package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/hopless/hopless/conf"
)

// fakeLimiter records what the scrub asks for and never waits; failAfter > 0 makes
// the call after that many fail, as a cancelled context would.
type fakeLimiter struct {
	mu        sync.Mutex
	asks      []int
	failAfter int
}

var errLimiter = errors.New("limiter: stop")

func (l *fakeLimiter) WaitN(_ context.Context, n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failAfter > 0 && len(l.asks) >= l.failAfter {
		return errLimiter
	}
	l.asks = append(l.asks, n)
	return nil
}

func (l *fakeLimiter) total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, a := range l.asks {
		n += int64(a)
	}
	return n
}

// flipInPlace flips one byte of d's stored file and restores its mtime, so that the
// file looks unchanged (same size, mtime and inode).
func flipInPlace(t *testing.T, s *Store, d digest.Digest, off int64) {
	t.Helper()
	p := s.fsPath(blobPath(d))
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if osFileID(after) != osFileID(fi) {
		t.Fatal("the flipped file does not look unchanged")
	}
}

// TestScrubRemovesRottenBlob: a byte flipped behind a verified blob's back, its
// metadata restored, is served whole by OpenBlob but found by one scrub pass,
// removed and counted; the good blob beside it is hashed, counted and kept.
func TestScrubRemovesRottenBlob(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "filesystem")
	m := newMetrics()
	clk := newClock()
	s := b.open(t, WithMetrics(m), WithClock(clk.Now))
	lim := &fakeLimiter{}
	s.scrubLim = lim

	good := randomBytes(21, 300<<10)
	rotten := randomBytes(22, 200<<10+17)
	gd, rd := commit(t, s, good), commit(t, s, rotten)
	flipInPlace(t, s, rd, 1234)
	bad := bytes.Clone(rotten)
	bad[1234] ^= 0x40
	readAll(t, s, rd, bad) // verified at commit and unchanged-looking: served as is
	s.mu.Lock()
	access := s.entries[gd].access
	s.mu.Unlock()
	clk.Advance(time.Hour)

	st := s.ScrubPass(t.Context())
	total := int64(len(good) + len(rotten))
	if want := (ScrubStats{Blobs: 2, Bytes: total, Bad: 1}); st != want {
		t.Fatalf("ScrubPass = %+v, want %+v", st, want)
	}
	if has(t, s, rd) {
		t.Fatal("the rotten blob was kept")
	}
	if _, _, err := s.OpenBlob(t.Context(), rd); !errdefs.IsNotFound(err) {
		t.Fatalf("OpenBlob of the rotten blob after the scrub: %v, want not found", err)
	}
	if _, err := s.StatBlob(t.Context(), rd); !errdefs.IsNotFound(err) {
		t.Fatalf("StatBlob of the rotten blob after the scrub: %v, want not found", err)
	}
	if !has(t, s, gd) {
		t.Fatal("the good blob was removed")
	}
	if v := counter(t, m.ScrubbedBytes); v != float64(total) {
		t.Errorf("scrubbed bytes = %v, want %d", v, total)
	}
	if v := counter(t, m.ScrubBadBlobs); v != 1 {
		t.Errorf("scrub bad blobs = %v, want 1", v)
	}
	if v := counter(t, m.VerifyFailures.WithLabelValues("store")); v != 1 {
		t.Errorf("store verify failures = %v, want 1", v)
	}
	if got := lim.total(); got != total {
		t.Errorf("the limiter was asked for %d bytes, want %d", got, total)
	}

	s.mu.Lock()
	gotAccess, checked := s.entries[gd].access, s.checkedAt[gd]
	s.mu.Unlock()
	if !gotAccess.Equal(access) {
		t.Errorf("the scrub moved the good blob's access time from %v to %v", access, gotAccess)
	}
	if !checked.Equal(clk.Now()) {
		t.Errorf("good blob checked at %v, want the scrub's time %v", checked, clk.Now())
	}
	n := s.verifications.Load()
	readAll(t, s, gd, good)
	if got := s.verifications.Load(); got != n {
		t.Errorf("verifications went from %d to %d: the scrubbed blob should be served as verified", n, got)
	}

	// The refill of the removed digest is stored and scrubbed clean.
	if d := commit(t, s, rotten); d != rd {
		t.Fatal("digest changed")
	}
	clk.Advance(time.Hour)
	if st := s.ScrubPass(t.Context()); st.Bad != 0 || st.Blobs != 2 {
		t.Errorf("second ScrubPass = %+v, want 2 good blobs", st)
	}
}

// TestScrubRateInBytes: a pass over N bytes asks the limiter for exactly N tokens,
// in reads no larger than the bucket's least burst; a limiter that gives up (context
// done) stops the pass and removes nothing.
func TestScrubRateInBytes(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "filesystem")
	s := b.open(t)
	content := randomBytes(23, 1<<20+123)
	d := commit(t, s, content)
	empty := commit(t, s, nil)

	lim := &fakeLimiter{}
	s.scrubLim = lim
	st := s.ScrubPass(t.Context())
	if want := (ScrubStats{Blobs: 2, Bytes: int64(len(content))}); st != want {
		t.Fatalf("ScrubPass = %+v, want %+v", st, want)
	}
	if got := lim.total(); got != int64(len(content)) {
		t.Fatalf("the limiter was asked for %d tokens, want %d", got, len(content))
	}
	for _, n := range lim.asks {
		if n <= 0 || n > holdback {
			t.Fatalf("the limiter was asked for %d tokens at once, want 1..%d", n, holdback)
		}
	}

	stop := &fakeLimiter{failAfter: 3}
	s.scrubLim = stop
	st = s.ScrubPass(t.Context())
	if st.Bad != 0 || st.Bytes != 4*holdback {
		t.Fatalf("ScrubPass with a failing limiter = %+v, want no bad blobs and %d bytes", st, 4*holdback)
	}
	if !has(t, s, d) || !has(t, s, empty) {
		t.Fatal("a pass stopped by its limiter removed a blob")
	}
}

// TestScrubOrder: the blob hashed longest ago goes first, a blob just read goes last.
func TestScrubOrder(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "filesystem")
	clk := newClock()
	s := b.open(t, WithClock(clk.Now))
	a := commit(t, s, randomBytes(24, 1000))
	clk.Advance(time.Minute)
	bb := commit(t, s, randomBytes(25, 1000))
	clk.Advance(time.Minute)
	c := commit(t, s, randomBytes(26, 1000))
	clk.Advance(time.Minute)
	if err := s.VerifyBlob(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	delete(s.checkedAt, c) // never hashed here: e.g. another master's commit
	s.mu.Unlock()
	if got, want := s.scrubOrder(), []digest.Digest{c, bb, a}; !slices.Equal(got, want) {
		t.Fatalf("scrubOrder = %v, want %v", got, want)
	}
}

func TestNewScrubLimiter(t *testing.T) {
	t.Parallel()
	if l := newScrubLimiter(0); l != nil {
		t.Errorf("newScrubLimiter(0) = %v, want nil (disabled)", l)
	}
	for _, tc := range []struct {
		rate  conf.Size
		burst int
	}{
		{conf.DefaultScrubRate, 16 << 20},
		{1 << 10, holdback},
	} {
		l, ok := newScrubLimiter(tc.rate).(*rate.Limiter)
		if !ok {
			t.Fatalf("newScrubLimiter(%d) is not a token bucket", tc.rate)
		}
		if l.Limit() != rate.Limit(tc.rate) || l.Burst() != tc.burst {
			t.Errorf("newScrubLimiter(%d): limit %v, burst %d; want %d, %d", tc.rate, l.Limit(), l.Burst(), tc.rate, tc.burst)
		}
	}
}

// TestRunScrubDisabled: with storage.scrub_rate 0 RunScrub returns at once.
func TestRunScrubDisabled(t *testing.T) {
	t.Parallel()
	s, err := New(t.Context(), conf.Storage{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if s.scrubLim != nil {
		t.Fatal("a scrub limiter with scrub_rate 0")
	}
	s.RunScrub(t.Context()) // returns
}

// TestScrubInterval: storage.scrub_interval is the least time between two passes'
// starts; left at zero it is the default.
func TestScrubInterval(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  time.Duration
		want time.Duration
	}{
		{0, defaultScrubInterval},
		{-time.Second, defaultScrubInterval},
		{2 * time.Second, 2 * time.Second},
		{time.Hour, time.Hour},
	} {
		s := &Store{cfg: conf.Storage{ScrubInterval: conf.Duration{Duration: tc.cfg}}}
		if got := s.scrubInterval(); got != tc.want {
			t.Errorf("scrub_interval %s: interval %s, want %s", tc.cfg, got, tc.want)
		}
	}
	if defaultScrubInterval != time.Minute {
		t.Errorf("default scrub interval %s, want 1m", defaultScrubInterval)
	}
}

// TestRunScrubPassesEveryInterval: with a short storage.scrub_interval RunScrub hashes
// the store pass after pass (each pass the whole blob), and returns when its context
// ends.
func TestRunScrubPassesEveryInterval(t *testing.T) {
	t.Parallel()
	s, err := New(t.Context(), conf.Storage{Root: t.TempDir(), ScrubRate: 1 << 20,
		ScrubInterval: conf.Duration{Duration: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	lim := &fakeLimiter{}
	s.scrubLim = lim
	content := randomBytes(31, 100<<10+3)
	commit(t, s, content)

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunScrub(ctx)
	}()
	const passes = 3
	deadline := time.Now().Add(30 * time.Second)
	for lim.total() < passes*int64(len(content)) {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("the scrub hashed %d bytes in 30s, want %d passes of %d", lim.total(), passes, len(content))
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done // RunScrub returns with its context
}
