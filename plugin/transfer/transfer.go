// Package transfer puts hopless into containerd's transfer service, which CRI pulls go
// through. Its Transferrer wraps the local transfer service: a pull of an image whose
// host is configured is handed to the inner service with a source of our own, which
// resolves and fetches through that host's RoundTripper (the balancer) instead of
// hosts.toml. Everything else passes through untouched.
package transfer

import (
	"context"
	"errors"

	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

var _ ctrtransfer.Transferrer = (*Transferrer)(nil)

// Transferrer is containerd's transfer service with pulls of configured hosts going
// through hopless.
type Transferrer struct {
	inner ctrtransfer.Transferrer
	hosts *Hosts
}

// Wrap returns inner with pulls of the hosts in hosts going through them.
func Wrap(inner ctrtransfer.Transferrer, hosts *Hosts) *Transferrer {
	return &Transferrer{inner: inner, hosts: hosts}
}

// Transfer pulls an image of a configured host from an OCI registry through that
// host's endpoints. When every endpoint is down and the host has fallback set, it
// pulls again from the original source, which keeps the caller's credentials and
// containerd's own host configuration. Any other transfer passes through.
func (t *Transferrer) Transfer(ctx context.Context, src, dst any, opts ...ctrtransfer.Opt) error {
	reg, ok := src.(*registry.OCIRegistry)
	if !ok {
		return t.inner.Transfer(ctx, src, dst, opts...)
	}
	h := t.hostOf(reg.Image())
	if h == nil {
		return t.inner.Transfer(ctx, src, dst, opts...)
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"ref": reg.Image(), "hopless.host": h.cfg.Host}))
	log.G(ctx).Debug("pulling through hopless endpoints")
	err := t.inner.Transfer(ctx, newSource(reg.Image(), h), dst, opts...)
	if err == nil || !h.cfg.Fallback || !allDown(ctx, err) {
		return err
	}
	log.G(ctx).WithError(err).Warn("every hopless endpoint is down, falling back to the image host")
	if ferr := t.inner.Transfer(ctx, src, dst, opts...); ferr != nil {
		return errors.Join(ferr, err)
	}
	return nil
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
