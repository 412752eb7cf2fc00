package store

import (
	"cmp"
	"context"
	"io"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"golang.org/x/time/rate"

	"github.com/hopless/hopless/conf"
)

// defaultScrubInterval is the least time between the starts of two scrub passes when
// storage.scrub_interval is left at zero, so that a small store (or one of empty
// blobs) is not re-read in a busy loop.
const defaultScrubInterval = conf.DefaultScrubInterval

// scrubInterval is storage.scrub_interval, or defaultScrubInterval when it is not
// positive.
func (s *Store) scrubInterval() time.Duration {
	if d := s.cfg.ScrubInterval.Duration; d > 0 {
		return d
	}
	return defaultScrubInterval
}

// byteLimiter paces the scrub: WaitN returns once n more bytes may be read, or with
// ctx's error.
type byteLimiter interface {
	WaitN(ctx context.Context, n int) error
}

// newScrubLimiter is a token bucket of bytesPerSec, or nil when it is 0 (disabled).
// Its burst holds at least one read of the verifier (holdback bytes), so that WaitN
// is never asked for more than the bucket can hold.
func newScrubLimiter(bytesPerSec conf.Size) byteLimiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := int(min(int64(bytesPerSec), 1<<30))
	if burst < holdback {
		burst = holdback
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), burst)
}

// noteVerified remembers that key's bytes matched its digest: reads may skip hashing
// it, and the scrub puts it last.
func (s *Store) noteVerified(key verifyKey) {
	s.verified.add(key)
	s.noteChecked(key.d)
}

func (s *Store) noteChecked(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkedAt[d] = s.now()
}

// ScrubStats reports one scrub pass.
type ScrubStats struct {
	Blobs int   // blobs hashed to the end, good or bad
	Bytes int64 // bytes hashed
	Bad   int   // blobs whose bytes did not match their digest, removed
	// Errors counts blobs that could not be read (not counted as bad, kept).
	Errors int
}

// RunScrub re-hashes stored blobs until ctx is done: pass after pass, one blob at a
// time, the one hashed longest ago (or never) first, reading at most
// storage.scrub_rate bytes per second. A blob that does not match its digest is
// removed as a corrupt read removes it, so that the next request fetches it again; one
// that matches is remembered as verified anew. It returns at once when
// storage.scrub_rate is 0. Passes start at most every storage.scrub_interval (default
// 1m); one that takes longer is followed by the next at once.
func (s *Store) RunScrub(ctx context.Context) {
	if s.scrubLim == nil {
		return
	}
	interval := s.scrubInterval()
	for {
		start := time.Now()
		st := s.ScrubPass(ctx)
		if ctx.Err() != nil {
			return
		}
		if st.Bad > 0 || st.Errors > 0 {
			s.log.Warn("scrub pass done", "blobs", st.Blobs, "bytes", st.Bytes, "bad", st.Bad, "errors", st.Errors)
		} else {
			s.log.Debug("scrub pass done", "blobs", st.Blobs, "bytes", st.Bytes)
		}
		if wait := interval - time.Since(start); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-s.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// ScrubPass hashes every blob stored when it starts once, oldest-checked first, paced
// by storage.scrub_rate (unpaced when it is 0), skipping those hashed by a read since
// the pass started. It stops early when ctx is done.
func (s *Store) ScrubPass(ctx context.Context) ScrubStats {
	var st ScrubStats
	start := s.now()
	for _, d := range s.scrubOrder() {
		if ctx.Err() != nil {
			break
		}
		s.mu.Lock()
		skip := s.entries[d] == nil || s.checkedAt[d].After(start)
		s.mu.Unlock()
		if skip {
			continue
		}
		s.scrubOne(ctx, d, &st)
	}
	return st
}

// scrubOrder is the stored digests, the one hashed longest ago (or never) first. It
// drops the check times of digests no longer stored.
func (s *Store) scrubOrder() []digest.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	for d := range s.checkedAt {
		if s.entries[d] == nil {
			delete(s.checkedAt, d)
		}
	}
	ds := make([]digest.Digest, 0, len(s.entries))
	for d := range s.entries {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b digest.Digest) int {
		if c := s.checkedAt[a].Compare(s.checkedAt[b]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return ds
}

// scrubOne hashes d's stored bytes through the limiter, as VerifyBlob does.
func (s *Store) scrubOne(ctx context.Context, d digest.Digest, st *ScrubStats) {
	r, _, err := s.openBlob(ctx, d, true, false)
	if errdefs.IsNotFound(err) {
		return // evicted meanwhile
	}
	if err != nil {
		st.Errors++
		s.noteChecked(d) // on to the next; tried again next pass
		s.log.Warn("scrub: opening a blob failed", "digest", d, "error", err)
		return
	}
	defer r.Close()
	v := r.(*verifyingReader)
	sr := &scrubReader{ctx: ctx, r: v.r, lim: s.scrubLim}
	v.r = sr
	err = v.verify()
	st.Bytes += sr.n
	if s.m != nil {
		s.m.ScrubbedBytes.Add(float64(sr.n))
	}
	switch {
	case err == nil:
		st.Blobs++
	case errdefs.IsDataLoss(err):
		// verify removed it, as a corrupt read does.
		st.Blobs++
		st.Bad++
		if s.m != nil {
			s.m.ScrubBadBlobs.Inc()
		}
	case ctx.Err() != nil:
	default:
		st.Errors++
		s.noteChecked(d)
		s.log.Warn("scrub: reading a blob failed", "digest", d, "error", err)
	}
}

// scrubReader counts the bytes read and asks the limiter for each of them after
// reading them, so that a pass over n bytes waits for exactly n tokens.
type scrubReader struct {
	ctx context.Context
	r   io.ReadSeekCloser
	lim byteLimiter // nil: unpaced
	n   int64
	err error
}

func (r *scrubReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	if n > 0 && r.lim != nil {
		if werr := r.lim.WaitN(r.ctx, n); werr != nil {
			r.err = werr
			return n, werr
		}
	}
	return n, err
}

func (r *scrubReader) Seek(offset int64, whence int) (int64, error) {
	return r.r.Seek(offset, whence)
}

func (r *scrubReader) Close() error { return r.r.Close() }
