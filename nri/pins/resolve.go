package pins

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// resolveLoop resolves the pending images, one at a time, until ctx ends. A failed
// image is tried again after backoff (minBackoff doubling to maxBackoff).
func (r *Reporter) resolveLoop(ctx context.Context) {
	for {
		// The scan below covers every image signalled so far.
		select {
		case <-r.resolveWake:
		default:
		}
		now := r.clock.Now()
		due, next := r.duePending(now)
		for _, image := range due {
			if ctx.Err() != nil {
				return
			}
			r.resolveOne(ctx, image)
		}
		if len(due) > 0 {
			continue
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = r.clock.After(max(next.Sub(now), 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-r.resolveWake:
		case <-timer:
		}
	}
}

// duePending returns the pending images due for resolution at now, and when the
// next one not yet due is.
func (r *Reporter) duePending(now time.Time) (due []string, next time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for image, p := range r.set.pending {
		switch {
		case !now.Before(p.retryAt):
			due = append(due, image)
		case next.IsZero() || p.retryAt.Before(next):
			next = p.retryAt
		}
	}
	slices.Sort(due)
	return due, next
}

func (r *Reporter) resolveOne(ctx context.Context, image string) {
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	d, err := r.resolve(rctx, image)
	cancel()
	if err == nil {
		if verr := d.Validate(); verr != nil {
			err = fmt.Errorf("resolving %s: digest %q: %w", image, d, verr)
		}
	}
	if ctx.Err() != nil {
		return
	}
	now := r.clock.Now()
	r.mu.Lock()
	p := r.set.pending[image]
	if p == nil {
		// Its containers are gone meanwhile.
		r.mu.Unlock()
		return
	}
	if err != nil {
		p.attempts++
		wait := jitter(backoffAfter(p.attempts))
		p.retryAt = now.Add(wait)
		attempts := p.attempts
		r.mu.Unlock()
		if attempts == 1 {
			r.log.Warn("resolving an image's digest failed; its containers stay unpinned until it succeeds", "image", image, "retry_in", wait, "error", err)
		} else {
			r.log.Debug("resolving an image's digest failed again", "image", image, "attempts", attempts, "retry_in", wait, "error", err)
		}
		return
	}
	attempts := p.attempts
	changed := r.set.resolved(image, d)
	r.afterChange(changed, false, false)
	r.mu.Unlock()
	if attempts > 0 {
		r.log.Info("resolved an image's digest after failures", "image", image, "digest", d, "attempts", attempts+1)
	}
}

// backoffAfter is the wait after the given number of failures in a row.
func backoffAfter(failures int) time.Duration {
	d := minBackoff
	for i := 1; i < failures && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}
