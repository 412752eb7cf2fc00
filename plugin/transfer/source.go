package transfer

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The local transfer service pulls from a source that is an ImageFetcher, and sets
// its download limits through ImageResolverOptionSetter.
var (
	_ ctrtransfer.ImageFetcher              = (*source)(nil)
	_ ctrtransfer.ImageResolverOptionSetter = (*source)(nil)
)

// source is a pull source for an image of a configured host: what
// registry.OCIRegistry is to the local transfer service for a pull, resolved through
// the host's endpoints instead of hosts.toml.
type source struct {
	ref      string
	resolver remotes.Resolver
}

func newSource(ref string, h *host) *source {
	return &source{
		ref:      ref,
		resolver: docker.NewResolver(docker.ResolverOptions{Hosts: h.registryHosts()}),
	}
}

// String appears in the transfer's progress events ("Resolving from ...").
func (s *source) String() string {
	return fmt.Sprintf("hopless (%s)", s.ref)
}

// Image is the image reference, as for registry.OCIRegistry.
func (s *source) Image() string {
	return s.ref
}

func (s *source) Resolve(ctx context.Context) (string, ocispec.Descriptor, error) {
	return s.resolver.Resolve(ctx, s.ref)
}

func (s *source) SetResolverOptions(opts ...ctrtransfer.ImageResolverOption) {
	if r, ok := s.resolver.(remotes.ResolverWithOptions); ok {
		r.SetOptions(opts...)
	}
}

func (s *source) Fetcher(ctx context.Context, ref string) (ctrtransfer.Fetcher, error) {
	return s.resolver.Fetcher(ctx, ref)
}
