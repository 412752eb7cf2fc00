// Package fill is registryd's single-flight blob fill engine: it fixes distribution's
// proxy, which fetches a missing blob once per concurrent request, ties the cache write
// to the client's stream and cannot resume.
//
// A Filler runs at most one fill per digest. The first Fill call starts a goroutine
// on the Filler's own context that writes the blob into the store's spool file, hashing
// it as it goes; later calls join that fill. Clients read through Fill.Reader, which
// streams the spool as it grows, so no client waits for the whole blob and none keeps
// the fill alive or stops it.
//
// A cut or stalled stream is resumed by calling the Source again at the byte reached,
// with exponential backoff and a retry budget that is refilled by every attempt that
// made progress. A spool file left by a crash, an outage or a full disk is hashed again
// and resumed from its length. It is dropped (truncated, and the fill starts over,
// once) only when its bytes are proven bad: it is longer than the blob, the Source
// says the offset is past the end (ErrOutOfRange), a later answer gives another size
// (ErrDataLoss), or the finished blob does not verify. A fill that makes no progress,
// because the Source fails or the disk is full, keeps it for the next fill.
//
// Disk space (when the Committer implements Space): a fill holds its spool file while
// it runs, and reserves the bytes it still has to write when the first answer gives
// the size, before anyone hears that size; a refusal (an error wrapping
// space.ErrNoSpace) fails the fill at once, so that whoever waits can stream the blob
// with Direct instead. A spool write that fails for lack of space (ENOSPC, EDQUOT)
// fails the fill without retries and is reported; the bytes written stay.
//
// The one failure that is not retried is the upstream's own before any response has
// given the blob's size: every request for the blob is then still waiting for the
// fill's first answer, and retrying with backoff would keep them waiting past their
// own deadlines (a node, or a master asking this one as the blob's owner, would give
// up on this master instead of hearing that the upstream failed). The fill fails at
// once with the upstream's error, and whoever asked decides whether to ask again.
//
// Nothing unverified is ever complete: readers get bytes only up to the last 64 KiB
// boundary before the end until the whole blob's digest matches, and a failed fill
// turns every Read into an error, never io.EOF. The tail is released as soon as the
// digest matches, before the spool is fsynced: the fsync of a large blob can take
// longer than its transfer, and a client needs verified bytes, not durable ones.
// Only a verified, fsynced spool is handed to the Committer, so the store never
// records a blob that a crash could lose.
//
// The spool's descriptor belongs to the Fill: the writer and all readers share it
// (ReadAt), so readers keep reading the same inode after CommitBlob renames it, and a
// Reader taken just after the commit still works. It is closed when a fill fails, and
// otherwise when the Fill becomes unreachable.
package fill

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/space"
)

const (
	// holdback is the granularity of the tail that readers get only after the
	// digest is verified.
	holdback   = 64 << 10
	bufSize    = 64 << 10
	maxBackoff = 5 * time.Second

	defaultRetries = 5
	defaultBackoff = 200 * time.Millisecond
	defaultStall   = 30 * time.Second
)

var errStalled = errors.New("source stalled")

// Source opens the blob's bytes from offset; it returns the body positioned at offset
// and the blob's total size. The caller's Source may switch origin between calls
// (peer, then upstream): content is addressed by digest.
//
// The body must stop (Read returns an error) once ctx is cancelled, as HTTP response
// bodies do: that is how stalls and Close end an attempt. Errors wrapping
// errdefs.ErrNotFound, ErrPermissionDenied, ErrUnauthenticated, ErrInvalidArgument,
// ErrOutOfRange or ErrDataLoss fail the fill at once, and so does an upstream failure
// (an error with a Failure() upstreamerr.Failure method, such as registryd/upstream's
// *Error) while no call has yet given the size; any other error is retried. A
// Source should return errdefs.ErrOutOfRange for an offset at or past the end (HTTP
// 416), so that a bad crash leftover of full length is dropped without retries.
type Source func(ctx context.Context, offset int64) (io.ReadCloser, int64, error)

// Committer is the content store (implemented by registryd/store).
type Committer interface {
	// SpoolPath is where the fill of d writes; its directory is created as needed.
	SpoolPath(d digest.Digest) string
	// CommitBlob moves the verified spool file into the store.
	CommitBlob(ctx context.Context, d digest.Digest, spoolPath string) error
}

// Adopter is implemented by a Committer on storage shared with the owner peer
// (registryd/store): a fill from the owner asks it first, as the owner commits the
// same bytes, and commits its own copy only when AdoptBlob reports false.
type Adopter interface {
	AdoptBlob(ctx context.Context, d digest.Digest, spoolPath string, size int64) (bool, error)
}

// Space is implemented by a Committer that keeps the spool's disk space
// (registryd/store); a Filler uses it when its Committer has it.
type Space interface {
	// HoldSpool marks d's spool file as used by a fill until release is called.
	HoldSpool(d digest.Digest) (release func())
	// ReserveSpool is called once per fill, when the first answer gives the size,
	// with the bytes the spool already holds. An error refuses the fill.
	ReserveSpool(ctx context.Context, d digest.Digest, size, have int64) error
	// SpoolFull reports that writing d's spool failed for lack of space, with need
	// bytes still to write (0 if unknown).
	SpoolFull(d digest.Digest, need int64, err error)
}

// Option changes a Filler's defaults.
type Option func(*Filler)

// WithLogger sets the logger. The default discards.
func WithLogger(l *slog.Logger) Option {
	return func(f *Filler) { f.log = l }
}

// WithMetrics sets the metrics to record into. The default is a private metrics.New().
func WithMetrics(m *metrics.Metrics) Option {
	return func(f *Filler) { f.metrics = m }
}

// WithRetries sets how many times in a row an attempt may fail without writing a byte
// before the fill gives up, and the first backoff, which doubles up to 5 s (or up to
// backoff, if that is longer). Progress resets both. The defaults are 5 and 200 ms.
func WithRetries(n int, backoff time.Duration) Option {
	return func(f *Filler) {
		f.retries = max(n, 0)
		f.backoff = max(backoff, 0)
	}
}

// WithStallTimeout sets how long a Source may go without delivering a byte (including
// the wait for its response) before the attempt is treated as a cut. The default is 30 s.
func WithStallTimeout(d time.Duration) Option {
	return func(f *Filler) {
		if d > 0 {
			f.stall = d
		}
	}
}

// Filler runs the blob fills of one store.
type Filler struct {
	c       Committer
	space   Space // c, if it keeps the spool's disk space
	log     *slog.Logger
	metrics *metrics.Metrics
	retries int
	backoff time.Duration
	stall   time.Duration
	// sync makes a verified spool file durable before its commit; tests replace it.
	sync func(*os.File) error
	// ringSize is the read-ahead ring of an attempt; tests change it.
	ringSize int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	fills  map[digest.Digest]*Fill
	closed bool
}

// New returns a Filler that commits into c.
func New(c Committer, opts ...Option) *Filler {
	f := &Filler{
		c:        c,
		log:      slog.New(slog.DiscardHandler),
		retries:  defaultRetries,
		backoff:  defaultBackoff,
		stall:    defaultStall,
		sync:     (*os.File).Sync,
		ringSize: readAheadBytes,
		fills:    make(map[digest.Digest]*Fill),
	}
	for _, o := range opts {
		o(f)
	}
	if f.metrics == nil {
		f.metrics = metrics.New()
	}
	f.space, _ = c.(Space)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// Fill joins the running fill of d or starts one with src; a joiner's src and label
// are not used. The fill runs on the Filler's own context, not the caller's: client
// disconnects never stop it. label is the metrics source label ("upstream" or "peer").
//
// The fill leaves the in-flight set once it has committed or failed, so a later call
// starts afresh: callers look in the store first.
func (f *Filler) Fill(d digest.Digest, label string, src Source) *Fill {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl, ok := f.fills[d]; ok {
		return fl
	}
	fl := newFill(d)
	if err := d.Validate(); err != nil {
		fl.finish(fmt.Errorf("fill of %q: %w: %w", d, errdefs.ErrInvalidArgument, err))
		return fl
	}
	if f.closed {
		fl.finish(fmt.Errorf("fill of %s: filler closed: %w", d, errdefs.ErrUnavailable))
		return fl
	}
	fl.path = f.c.SpoolPath(d)
	f.fills[d] = fl
	f.wg.Add(1)
	go f.run(fl, label, src)
	return fl
}

// Running returns the fill of d that is running now, or nil.
func (f *Filler) Running(d digest.Digest) *Fill {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fills[d]
}

// Close cancels the running fills and waits for them to end. Their spool files stay,
// so that the fills resume after a restart. Fill calls after Close fail with
// errdefs.ErrUnavailable.
func (f *Filler) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
}

func (f *Filler) run(fl *Fill, label string, src Source) {
	defer f.wg.Done()
	f.metrics.FillsInFlight.Inc()
	defer f.metrics.FillsInFlight.Dec()
	log := f.log.With("digest", fl.d, "source", label)
	start := time.Now()
	log.Debug("fill started")

	err := f.fill(log, fl, label, src)
	result := "ok"
	if err != nil {
		result = "error"
		log.Warn("fill failed", "error", err, "elapsed", time.Since(start))
	} else {
		log.Debug("fill committed", "size", fl.sizeNow(), "elapsed", time.Since(start), "fsync", fl.syncTime)
	}
	f.metrics.FillDuration.WithLabelValues(label, result).Observe(time.Since(start).Seconds())

	f.mu.Lock()
	delete(f.fills, fl.d)
	f.mu.Unlock()
	fl.finish(err)
}

// fill writes, verifies and commits the blob. On failure it removes the spool file
// when it is empty or known bad, and keeps it for a later resume otherwise.
func (f *Filler) fill(log *slog.Logger, fl *Fill, label string, src Source) (err error) {
	ctx, d := f.ctx, fl.d
	if f.space != nil {
		defer f.space.HoldSpool(d)()
		defer func() {
			// The store's own refusal is recorded already; a failed write is not.
			if space.Is(err) && !errors.Is(err, space.ErrNoSpace) {
				f.space.SpoolFull(d, fl.remaining(), err)
			}
		}()
	}
	if err := os.MkdirAll(filepath.Dir(fl.path), 0o755); err != nil {
		return fmt.Errorf("create spool directory for %s: %w", d, err)
	}
	file, err := os.OpenFile(fl.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open spool file of %s: %w", d, err)
	}
	fl.setFile(file)
	fl.wb = startWriteback(file)
	defer fl.wb.stop()
	defer func() {
		if err == nil {
			return
		}
		st, serr := file.Stat()
		if errdefs.IsDataLoss(err) || (serr == nil && st.Size() == 0) {
			if rerr := os.Remove(fl.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				log.Warn("removing spool file", "path", fl.path, "error", rerr)
			}
		}
	}()

	h := d.Algorithm().Hash()
	have, err := hashFile(ctx, file, h)
	if err != nil {
		return fmt.Errorf("hash leftover spool of %s: %w", d, err)
	}
	leftover := have > 0
	if leftover {
		log.Info("resuming fill from leftover spool file", "bytes", have)
	}
	for {
		if digest.NewDigest(d.Algorithm(), h) == d {
			// A leftover that already hashes right needs no Source at all.
			if err := fl.checkSize(have, have); err != nil {
				return err
			}
			break
		}
		reached, err := f.download(ctx, log, fl, file, h, have, src)
		if err == nil {
			got := digest.NewDigest(d.Algorithm(), h)
			if got == d {
				break
			}
			f.metrics.VerifyFailures.WithLabelValues("fill").Inc()
			err = fmt.Errorf("content of %s hashes to %s: %w", d, got, errdefs.ErrDataLoss)
		}
		// A leftover is dropped only when its bytes are proven bad: the blob does not
		// verify, the Source gave another size, or it says the leftover reaches past
		// the end. A Source that fails, or a disk that is full, proves nothing: the
		// leftover stays for the next fill.
		bad := errdefs.IsDataLoss(err) || errdefs.IsOutOfRange(err)
		if !leftover || ctx.Err() != nil || !bad {
			if leftover && reached > 0 {
				log.Info("fill failed; its spool file stays for the next fill", "bytes", reached)
			}
			return err
		}
		log.Warn("leftover spool file is bad, starting over", "error", err)
		leftover = false
		fl.restart()
		if err := file.Truncate(0); err != nil {
			return fmt.Errorf("truncate spool file of %s: %w", d, err)
		}
		h.Reset()
		have = 0
	}

	// The digest matched: readers get the tail now. They need not wait for the
	// fsync, which only makes the commit durable; the store records the blob only
	// once it is done.
	fl.verify()
	if a, ok := f.c.(Adopter); ok && label == "peer" {
		// The owner commits the same bytes to the shared storage: no fsync, no upload.
		adopted, err := a.AdoptBlob(ctx, d, fl.path, fl.sizeNow())
		if err != nil {
			log.Warn("looking for the owner's copy on shared storage failed; committing this one", "error", err)
		}
		if adopted {
			return nil
		}
	}
	syncStart := time.Now()
	if err := f.sync(file); err != nil {
		return fmt.Errorf("sync spool file of %s: %w", d, err)
	}
	fl.syncTime = time.Since(syncStart)
	if err := f.c.CommitBlob(ctx, d, fl.path); err != nil {
		return fmt.Errorf("commit %s: %w", d, err)
	}
	return nil
}

// download calls src until the spool holds the whole blob, resuming at the byte
// reached after each cut. It returns the byte reached.
func (f *Filler) download(ctx context.Context, log *slog.Logger, fl *Fill, file *os.File, h hash.Hash, off int64, src Source) (int64, error) {
	failures := 0
	backoff := f.backoff
	for {
		if off > 0 {
			f.metrics.FillResumes.Inc()
		}
		n, retry, err := f.attempt(ctx, fl, file, h, off, src)
		off += n
		if err == nil {
			return off, nil
		}
		if ctx.Err() != nil {
			return off, fmt.Errorf("fill of %s stopped at byte %d: %w", fl.d, off, ctx.Err())
		}
		if !retry || permanent(err) {
			return off, err
		}
		if fl.sizeNow() < 0 && upstreamFailed(err) {
			// Everyone who asked is waiting for the first answer: give them this one.
			return off, err
		}
		if n > 0 {
			failures, backoff = 0, f.backoff
		}
		failures++
		if failures > f.retries {
			return off, fmt.Errorf("fill of %s: %d attempts in a row made no progress past byte %d: %w: %w",
				fl.d, failures, off, errdefs.ErrUnavailable, err)
		}
		log.Warn("fill attempt failed, retrying", "offset", off, "backoff", backoff, "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return off, fmt.Errorf("fill of %s stopped at byte %d: %w", fl.d, off, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, max(maxBackoff, f.backoff))
	}
}

// attempt makes one Source call at off and copies its body into the spool. It returns
// the bytes written and whether a failure may be retried.
func (f *Filler) attempt(ctx context.Context, fl *Fill, file *os.File, h hash.Hash, off int64, src Source) (int64, bool, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(f.stall, func() { cancel(errStalled) })
	defer stall.Stop()
	cut := func(n int64, err error) (int64, bool, error) {
		if errors.Is(context.Cause(actx), errStalled) {
			err = fmt.Errorf("no bytes for %s: %w", f.stall, errStalled)
		}
		return n, true, fmt.Errorf("read %s at byte %d: %w", fl.d, off+n, err)
	}

	body, size, err := src(actx, off)
	if err != nil {
		return cut(0, err)
	}
	defer body.Close()
	if f.space != nil && fl.sizeNow() < 0 && size >= 0 && off <= size {
		// Room first: nobody hears the size of a fill that is refused.
		if err := f.space.ReserveSpool(ctx, fl.d, size, off); err != nil {
			return 0, false, fmt.Errorf("fill of %s: %w", fl.d, err)
		}
	}
	if err := fl.checkSize(size, off); err != nil {
		return 0, false, err
	}
	if off >= size {
		return 0, false, nil
	}
	ra := startReadAhead(body, size-off, f.ringSize)
	// Before body.Close: the goroutine must be done with the body.
	defer ra.stop(func() { cancel(nil) })
	var n int64
	for off+n < size {
		chunk, rerr := ra.next()
		if len(chunk) == 0 {
			if errors.Is(rerr, io.EOF) {
				rerr = io.ErrUnexpectedEOF
			}
			return cut(n, rerr)
		}
		stall.Reset(f.stall)
		if _, err := file.WriteAt(chunk, off+n); err != nil {
			return n, false, fmt.Errorf("write spool file of %s: %w", fl.d, err)
		}
		h.Write(chunk)
		n += int64(len(chunk))
		ra.release(len(chunk))
		fl.advance(off + n)
		fl.wb.wrote(off + n)
	}
	return n, false, nil
}

// upstreamFailed reports whether err is an upstream registry's own failure.
func upstreamFailed(err error) bool {
	var f interface{ Failure() upstreamerr.Failure }
	return errors.As(err, &f)
}

func permanent(err error) bool {
	return errdefs.IsNotFound(err) || errdefs.IsPermissionDenied(err) || errdefs.IsUnauthorized(err) ||
		errdefs.IsInvalidArgument(err) || errdefs.IsOutOfRange(err) || errdefs.IsDataLoss(err)
}

// hashFile feeds file's bytes into h and returns their count.
func hashFile(ctx context.Context, file *os.File, h hash.Hash) (int64, error) {
	buf := make([]byte, bufSize)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		k, err := file.ReadAt(buf, n)
		h.Write(buf[:k])
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Fill is one blob's fill, shared by everyone who asked for it.
type Fill struct {
	d     digest.Digest
	path  string
	sized chan struct{} // closed once the size is known or the fill has ended
	done  chan struct{}
	// syncTime is how long the spool's fsync took, and wb starts the spool's
	// writeback as it grows; only the fill's goroutine uses them.
	syncTime time.Duration
	wb       *writeback

	mu       sync.Mutex
	file     *os.File
	size     int64 // -1 until the first response
	written  int64 // spool bytes [0, written) are on disk
	gen      int   // counts restarts from zero, which invalidate bytes already read
	verified bool
	err      error
	wake     chan struct{} // closed on every change; nil while nobody waits
}

func newFill(d digest.Digest) *Fill {
	return &Fill{d: d, sized: make(chan struct{}), done: make(chan struct{}), size: -1}
}

// Size waits until the first response gives the blob's total size, or the fill fails.
func (fl *Fill) Size(ctx context.Context) (int64, error) {
	select {
	case <-fl.sized:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.size >= 0 {
		return fl.size, nil
	}
	return 0, fl.err
}

// Done is closed when the fill has committed or failed.
func (fl *Fill) Done() <-chan struct{} { return fl.done }

// Err is nil after a verified commit, and the reason otherwise; it is meaningful
// once Done is closed.
func (fl *Fill) Err() error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.err
}

// Reader streams bytes [offset, size) of the blob as the fill writes them, blocking
// for more; Read stops with ctx's error once ctx is done. The bytes after the last
// 64 KiB boundary before the end are released only once the whole blob's digest
// matches, and io.EOF only then: on a mismatch or any other failure Read returns an
// error, so a reader never receives a complete unverified blob. An offset past the
// size fails with errdefs.ErrOutOfRange (from Reader, or from Read if the size was not
// yet known).
func (fl *Fill) Reader(ctx context.Context, offset int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("read %s at offset %d: %w", fl.d, offset, errdefs.ErrInvalidArgument)
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.err != nil && !fl.verified {
		return nil, fl.err
	}
	if fl.size >= 0 && offset > fl.size {
		return nil, fl.outOfRange(offset)
	}
	return &reader{fl: fl, ctx: ctx, start: offset, pos: offset, gen: fl.gen, closing: make(chan struct{})}, nil
}

func (fl *Fill) outOfRange(offset int64) error {
	return fmt.Errorf("read %s at offset %d past its size %d: %w", fl.d, offset, fl.size, errdefs.ErrOutOfRange)
}

// released is how far readers may read; fl.mu is held.
func (fl *Fill) released() int64 {
	switch {
	case fl.size < 0:
		return 0
	case fl.verified:
		return fl.size
	case fl.size == 0:
		return 0
	}
	return min(fl.written, (fl.size-1)/holdback*holdback)
}

// changed wakes every waiting reader; fl.mu is held.
func (fl *Fill) changed() {
	if fl.wake != nil {
		close(fl.wake)
		fl.wake = nil
	}
}

// waitCh returns a channel closed on the next change; fl.mu is held.
func (fl *Fill) waitCh() <-chan struct{} {
	if fl.wake == nil {
		fl.wake = make(chan struct{})
	}
	return fl.wake
}

func (fl *Fill) setFile(file *os.File) {
	fl.mu.Lock()
	fl.file = file
	fl.mu.Unlock()
	// Readers may still use the spool after a commit, so it lives as long as the Fill.
	runtime.AddCleanup(fl, func(f *os.File) { _ = f.Close() }, file)
}

func (fl *Fill) sizeNow() int64 {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.size
}

// remaining is how many bytes the spool still lacks, or 0 before the size is known.
func (fl *Fill) remaining() int64 {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return max(fl.size-fl.written, 0)
}

// checkSize records the size of the first response, checks later ones against it,
// and checks that the spool does not already hold more than the blob.
func (fl *Fill) checkSize(size, off int64) error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	switch {
	case size < 0:
		return fmt.Errorf("source of %s gave no size: %w", fl.d, errdefs.ErrInvalidArgument)
	case fl.size < 0:
		fl.size = size
		close(fl.sized)
		fl.changed()
	case size != fl.size:
		return fmt.Errorf("source of %s gave size %d, earlier %d: %w", fl.d, size, fl.size, errdefs.ErrDataLoss)
	}
	if off > size {
		return fmt.Errorf("spool of %s holds %d bytes, more than its size %d: %w", fl.d, off, size, errdefs.ErrOutOfRange)
	}
	return nil
}

func (fl *Fill) advance(written int64) {
	fl.mu.Lock()
	fl.written = written
	fl.changed()
	fl.mu.Unlock()
}

// restart drops the spool's content; it must come before the truncation, so that a
// reader that sees the old generation after its ReadAt knows its bytes were old.
func (fl *Fill) restart() {
	fl.mu.Lock()
	fl.gen++
	fl.written = 0
	fl.changed()
	fl.mu.Unlock()
}

func (fl *Fill) verify() {
	fl.mu.Lock()
	fl.verified = true
	fl.changed()
	fl.mu.Unlock()
}

func (fl *Fill) finish(err error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fl.err = err
	if fl.size < 0 {
		close(fl.sized)
	}
	if err != nil && !fl.verified && fl.file != nil {
		_ = fl.file.Close()
	}
	close(fl.done)
	fl.changed()
}

type reader struct {
	fl         *Fill
	ctx        context.Context
	start, pos int64
	gen        int
	closing    chan struct{}
	closeOnce  sync.Once
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	fl := r.fl
	fl.mu.Lock()
	for {
		select {
		case <-r.closing:
			fl.mu.Unlock()
			return 0, os.ErrClosed
		default:
		}
		if err := r.checkGen(); err != nil {
			fl.mu.Unlock()
			return 0, err
		}
		if fl.err != nil && !fl.verified {
			fl.mu.Unlock()
			return 0, fl.err
		}
		if fl.size >= 0 && r.pos > fl.size {
			fl.mu.Unlock()
			return 0, fl.outOfRange(r.pos)
		}
		if lim := fl.released(); r.pos < lim {
			file, gen := fl.file, fl.gen
			fl.mu.Unlock()
			k, err := file.ReadAt(p[:min(int64(len(p)), lim-r.pos)], r.pos)
			fl.mu.Lock()
			if fl.gen != gen {
				// The spool restarted during the read: these bytes may be old.
				continue
			}
			if k > 0 {
				r.pos += int64(k)
				fl.mu.Unlock()
				return k, nil
			}
			if fl.err != nil && !fl.verified {
				continue // the fill failed and closed the spool
			}
			fl.mu.Unlock()
			return 0, fmt.Errorf("read spool of %s: %w", fl.d, err)
		}
		if fl.verified && r.pos == fl.size {
			fl.mu.Unlock()
			return 0, io.EOF
		}
		wake := fl.waitCh()
		fl.mu.Unlock()
		select {
		case <-wake:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-r.closing:
			return 0, os.ErrClosed
		}
		fl.mu.Lock()
	}
}

// checkGen fails a reader that has returned bytes of a spool that has since restarted
// from zero; one that has not yet returned any follows the new content. fl.mu is held.
func (r *reader) checkGen() error {
	if r.gen == r.fl.gen {
		return nil
	}
	if r.pos != r.start {
		return fmt.Errorf("spool of %s restarted after %d bytes were read: %w", r.fl.d, r.pos-r.start, errdefs.ErrAborted)
	}
	r.gen = r.fl.gen
	return nil
}

func (r *reader) Close() error {
	r.closeOnce.Do(func() { close(r.closing) })
	return nil
}
