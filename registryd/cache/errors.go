package cache

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// registryError turns an internal error into the registry error that distribution's
// handlers write. Unknown content is handled by the callers, since distribution
// matches those sentinels by identity.
func registryError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled):
		return errcode.ErrorCodeUnavailable.WithMessage("request cancelled")
	case errdefs.IsPermissionDenied(err):
		return errcode.ErrorCodeDenied.WithMessage(err.Error())
	case errdefs.IsInvalidArgument(err):
		return errcode.ErrorCodeManifestInvalid.WithMessage(err.Error())
	case errdefs.IsDataLoss(err):
		return errcode.ErrorCodeUnavailable.WithMessage("content failed digest verification; it was discarded: " + err.Error())
	case upstreamUnavailable(err):
		return errcode.ErrorCodeUnavailable.WithMessage("upstream unavailable: " + err.Error())
	default:
		return errcode.ErrorCodeUnknown.WithDetail(err.Error())
	}
}
