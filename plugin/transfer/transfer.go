// Package transfer puts hopless into containerd's transfer service, which CRI pulls go
// through. Its Transferrer wraps the local transfer service: a pull of an image whose
// host is configured is handed to the inner service with a source of our own, which
// resolves and fetches through that host's RoundTripper (the balancer) instead of
// hosts.toml. Everything else passes through untouched.
package transfer

import (
	"context"
	"errors"
	"slices"

	"github.com/containerd/containerd/v2/core/content"
	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/plugin/balance"
)

var _ ctrtransfer.Transferrer = (*Transferrer)(nil)

// ReverifyRounds bounds the pulls that follow one that got a corrupt blob.
const ReverifyRounds = 3

// Transferrer is containerd's transfer service with pulls of configured hosts going
// through hopless.
type Transferrer struct {
	inner   ctrtransfer.Transferrer
	hosts   *Hosts
	ingests content.IngestManager
}

// Wrap returns inner with pulls of the hosts in hosts going through them. ingests is
// the content store the inner service writes to, whose ingests of a corrupt blob are
// aborted before the pull is retried; nil turns the retry off.
func Wrap(inner ctrtransfer.Transferrer, hosts *Hosts, ingests content.IngestManager) *Transferrer {
	return &Transferrer{inner: inner, hosts: hosts, ingests: ingests}
}

// Transfer pulls an image of a configured host from an OCI registry through that
// host's endpoints. When every endpoint is down and the host has fallback set, it
// pulls again from the original source, which keeps the caller's credentials and
// containerd's own host configuration. Any other transfer passes through.
//
// A blob whose content did not match its digest (a *balance.DigestError) does not
// fail the pull at once: its ingests are aborted, so that no retry resumes onto the
// bad bytes, and the pull runs again asking the endpoints to verify their copy of
// every blob that failed so far (balance.WithReverify), up to ReverifyRounds times.
func (t *Transferrer) Transfer(ctx context.Context, src, dst any, opts ...ctrtransfer.Opt) error {
	reg, ok := src.(*registry.OCIRegistry)
	if !ok {
		return t.inner.Transfer(ctx, src, dst, opts...)
	}
	h := t.hostOf(reg.Image())
	if h == nil {
		return t.inner.Transfer(ctx, src, dst, opts...)
	}
	cfg := h.config()
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"ref": reg.Image(), "hopless.host": cfg.Host}))
	log.G(ctx).Debug("pulling through hopless endpoints")
	err := t.pull(ctx, h, reg.Image(), dst, opts)
	if err == nil || !cfg.Fallback || !allDown(ctx, err) {
		return err
	}
	log.G(ctx).WithError(err).Warn("every hopless endpoint is down, falling back to the image host")
	if ferr := t.inner.Transfer(ctx, src, dst, opts...); ferr != nil {
		return errors.Join(ferr, err)
	}
	return nil
}

// pull pulls ref through h, again after a corrupt blob.
func (t *Transferrer) pull(ctx context.Context, h *host, ref string, dst any, opts []ctrtransfer.Opt) error {
	var reverify []digest.Digest
	for round := 0; ; round++ {
		pctx := ctx
		if len(reverify) > 0 {
			pctx = balance.WithReverify(ctx, reverify...)
		}
		err := t.inner.Transfer(pctx, newSource(ref, h), dst, opts...)
		bad := digestErrors(err)
		if len(bad) == 0 || ctx.Err() != nil {
			return err
		}
		if t.ingests == nil {
			log.G(ctx).WithError(err).Warn("corrupt blob, and no content store to abort its ingest: not retrying")
			return err
		}
		if round == ReverifyRounds {
			log.G(ctx).WithError(err).WithField("digests", reverify).Error("blobs still corrupt after re-verification, giving up")
			return err
		}
		var now []digest.Digest
		for _, de := range bad {
			log.G(ctx).WithFields(log.Fields{"endpoint": de.Endpoint, "want": de.Want, "got": de.Got}).Warn("corrupt blob from endpoint")
			now = append(now, de.Want)
			if !slices.Contains(reverify, de.Want) {
				reverify = append(reverify, de.Want)
			}
		}
		abortIngests(ctx, t.ingests, now)
		log.G(ctx).WithFields(log.Fields{"digests": reverify, "round": round + 1}).Warn("pulling again, asking the endpoints to re-verify")
	}
}

// hostOf returns the configured host of an image reference, or nil.
func (t *Transferrer) hostOf(ref string) *host {
	spec, err := reference.Parse(ref)
	if err != nil {
		return nil // the inner service reports it
	}
	return t.hosts.lookup(spec.Hostname())
}

// allDown reports whether err says that every endpoint is down, and not that the
// pull was cancelled.
func allDown(ctx context.Context, err error) bool {
	return ctx.Err() == nil && errdefs.IsUnavailable(err)
}

// digestErrors are the *balance.DigestError in err's tree: a pull fetches blobs in
// parallel, and containerd joins some of their errors.
func digestErrors(err error) []*balance.DigestError {
	var out []*balance.DigestError
	var walk func(error)
	walk = func(e error) {
		if de, ok := e.(*balance.DigestError); ok {
			if !slices.ContainsFunc(out, func(o *balance.DigestError) bool { return o.Want == de.Want }) {
				out = append(out, de)
			}
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			if x := u.Unwrap(); x != nil {
				walk(x)
			}
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}
