package fill

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Direct streams blob d from src to one reader without a spool, for when the store
// cannot take it (no room): nothing is written to disk. It returns once src has given
// the size, so that a caller can send its headers; the reader yields the whole blob
// from byte 0.
//
// It keeps the fill's promise that nothing unverified is ever complete: the reader
// hashes every byte, and the bytes after the last 64 KiB boundary before the end are
// held back, in memory, until the whole blob's digest matches. On a mismatch or any
// other failure Read returns an error, never io.EOF. A cut or stalled stream is
// resumed at the byte reached, with the Filler's retries, backoff and stall timeout;
// a resumed answer of another size fails with errdefs.ErrDataLoss.
//
// A caller that serves a range starting at offset reads and discards the bytes
// before it: they must be hashed too. Every reader of a blob makes its own requests
// to src; concurrent misses of a blob that cannot be stored are not joined.
func (f *Filler) Direct(ctx context.Context, d digest.Digest, src Source) (*DirectReader, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("direct read of %q: %w: %w", d, errdefs.ErrInvalidArgument, err)
	}
	r := &DirectReader{f: f, ctx: ctx, d: d, src: src, h: d.Algorithm().Hash(), size: -1,
		log: f.log.With("digest", d, "direct", true)}
	if err := r.open(); err != nil {
		return nil, err
	}
	if r.size < 0 {
		r.Close()
		return nil, fmt.Errorf("source of %s gave no size: %w", d, errdefs.ErrInvalidArgument)
	}
	r.boundary = 0
	if r.size > 0 {
		r.boundary = (r.size - 1) / holdback * holdback
	}
	return r, nil
}

// DirectReader is one blob streamed by Direct. It is not safe for concurrent use.
type DirectReader struct {
	f   *Filler
	ctx context.Context
	d   digest.Digest
	src Source
	log *slog.Logger

	size     int64
	boundary int64 // bytes before it flow as they arrive; the rest wait for the digest
	h        hash.Hash
	pos      int64 // bytes returned by Read
	got      int64 // bytes received from src (and hashed)
	tail     []byte
	verified bool
	err      error

	body   io.ReadCloser
	actx   context.Context // the current attempt's
	cancel context.CancelCauseFunc
	stall  *time.Timer
}

// Size is the blob's size, as the source gave it.
func (r *DirectReader) Size() int64 { return r.size }

// Digest is the blob's digest.
func (r *DirectReader) Digest() digest.Digest { return r.d }

// open calls src at r.got.
func (r *DirectReader) open() error {
	actx, cancel := context.WithCancelCause(r.ctx)
	stall := time.AfterFunc(r.f.stall, func() { cancel(errStalled) })
	body, size, err := r.src(actx, r.got)
	if err != nil {
		stall.Stop()
		cancel(nil)
		if errors.Is(context.Cause(actx), errStalled) {
			err = fmt.Errorf("no answer for %s: %w", r.f.stall, errStalled)
		}
		return fmt.Errorf("read %s at byte %d: %w", r.d, r.got, err)
	}
	if r.size >= 0 && size != r.size {
		_ = body.Close()
		stall.Stop()
		cancel(nil)
		return fmt.Errorf("source of %s gave size %d, earlier %d: %w", r.d, size, r.size, errdefs.ErrDataLoss)
	}
	// The stall timer runs only while a Read of the body waits: a slow client that
	// keeps this reader from reading is not a stalled source.
	stall.Stop()
	r.size, r.body, r.actx, r.cancel, r.stall = size, body, actx, cancel, stall
	return nil
}

func (r *DirectReader) closeBody() {
	if r.body != nil {
		_ = r.body.Close()
		r.stall.Stop()
		r.cancel(nil)
		r.body = nil
	}
}

// receive reads up to len(p) more bytes of the blob from src into p, resuming a cut
// or stalled stream at the byte reached, and hashes them.
func (r *DirectReader) receive(p []byte) (int, error) {
	failures := 0
	backoff := r.f.backoff
	for {
		if r.body == nil {
			if err := r.open(); err != nil {
				if r.ctx.Err() != nil || permanent(err) {
					return 0, err
				}
				if err := r.retry(&failures, &backoff, err); err != nil {
					return 0, err
				}
				continue
			}
		}
		r.stall.Reset(r.f.stall)
		k, err := r.body.Read(p)
		r.stall.Stop()
		if k > 0 {
			r.h.Write(p[:k])
			r.got += int64(k)
			return k, nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if errors.Is(context.Cause(r.actx), errStalled) {
			err = fmt.Errorf("no bytes for %s: %w", r.f.stall, errStalled)
		}
		r.closeBody()
		if r.ctx.Err() != nil {
			return 0, r.ctx.Err()
		}
		if err := r.retry(&failures, &backoff, fmt.Errorf("read %s at byte %d: %w", r.d, r.got, err)); err != nil {
			return 0, err
		}
	}
}

// retry waits before the next attempt, or gives up after the Filler's retries.
func (r *DirectReader) retry(failures *int, backoff *time.Duration, err error) error {
	*failures++
	if *failures > r.f.retries {
		return fmt.Errorf("direct read of %s: %d attempts in a row made no progress past byte %d: %w: %w",
			r.d, *failures, r.got, errdefs.ErrUnavailable, err)
	}
	r.log.Warn("direct read attempt failed, retrying", "offset", r.got, "backoff", *backoff, "error", err)
	t := time.NewTimer(*backoff)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-t.C:
	}
	*backoff = min(2**backoff, max(maxBackoff, r.f.backoff))
	return nil
}

// Read returns the blob's bytes in order; see Direct.
func (r *DirectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.pos < r.boundary {
		k, err := r.receive(p[:min(int64(len(p)), r.boundary-r.pos)])
		r.pos += int64(k)
		if err != nil {
			r.fail(err)
		}
		return k, err
	}
	if !r.verified {
		if err := r.finish(); err != nil {
			r.fail(err)
			return 0, err
		}
	}
	if r.pos == r.size {
		return 0, io.EOF
	}
	k := copy(p, r.tail[r.pos-r.boundary:])
	r.pos += int64(k)
	return k, nil
}

// finish receives the held-back tail and checks the digest.
func (r *DirectReader) finish() error {
	r.tail = make([]byte, r.size-r.boundary)
	for n := 0; n < len(r.tail); {
		k, err := r.receive(r.tail[n:])
		n += k
		if err != nil {
			return err
		}
	}
	r.closeBody()
	if got := digest.NewDigest(r.d.Algorithm(), r.h); got != r.d {
		r.f.metrics.VerifyFailures.WithLabelValues("fill").Inc()
		return fmt.Errorf("content of %s hashes to %s: %w", r.d, got, errdefs.ErrDataLoss)
	}
	r.verified = true
	return nil
}

func (r *DirectReader) fail(err error) {
	r.err = err
	r.closeBody()
}

// Close ends the stream from the source.
func (r *DirectReader) Close() error {
	r.closeBody()
	if r.err == nil {
		r.err = errors.New("direct reader closed")
	}
	return nil
}
