package cri

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/metadata"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	// k8sNamespace is the containerd namespace that CRI keeps its images in.
	k8sNamespace = "k8s.io"
	// namespaceHeader is the gRPC metadata key that containerd reads a call's
	// namespace from.
	namespaceHeader = "containerd-namespace"
)

// ambiguousError is pickRepoDigest's error when ref's repository has more than one
// repo digest: the image was pulled as several manifests that share its config.
type ambiguousError struct {
	ref, repo   string
	repoDigests []string
}

func (e *ambiguousError) Error() string {
	return fmt.Sprintf("image %q: more than one repo digest is of repository %s (RepoDigests %v)", e.ref, e.repo, e.repoDigests)
}

// ImageDigest resolves an image reference as a pod spec writes it (a full reference
// such as registry.example:5001/system/deckhouse/install:v1, or a short one such as
// busybox) to the digest of the manifest (or index) that containerd pulled for it.
// A reference that carries a digest is answered with that digest, without a call.
// It fails with errdefs.ErrNotFound when CRI does not have the image.
func (c *Client) ImageDigest(ctx context.Context, ref string) (digest.Digest, error) {
	if d, ok, err := refDigest(ref); ok || err != nil {
		return d, err
	}
	if err := needDeadline(ctx, "resolving image "+ref); err != nil {
		return "", err
	}
	resp, err := c.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return "", fmt.Errorf("asking CRI on containerd socket %s for the status of image %q: %w", c.socket, ref, errgrpc.ToNative(err))
	}
	if resp.GetImage() == nil {
		return "", fmt.Errorf("image %q on containerd socket %s: %w", ref, c.socket, errdefs.ErrNotFound)
	}
	d, err := pickRepoDigest(ref, resp.GetImage().GetRepoDigests())
	if _, ok := errors.AsType[*ambiguousError](err); !ok {
		return d, err
	}
	// Several manifests of the repository share the image's config, and RepoDigests
	// does not say which one the tag was pulled as: containerd's image record of the
	// tag does.
	named, perr := reference.ParseDockerRef(ref)
	if perr != nil {
		return "", err
	}
	ictx := metadata.AppendToOutgoingContext(ctx, namespaceHeader, k8sNamespace)
	img, gerr := c.store.Get(ictx, &imagesapi.GetImageRequest{Name: named.String()})
	if gerr != nil {
		return "", fmt.Errorf("%w; asking containerd socket %s for image %s in namespace %s: %w",
			err, c.socket, named, k8sNamespace, errgrpc.ToNative(gerr))
	}
	d, perr = digest.Parse(img.GetImage().GetTarget().GetDigest())
	if perr != nil {
		return "", fmt.Errorf("image %s on containerd socket %s has target digest %q: %w",
			named, c.socket, img.GetImage().GetTarget().GetDigest(), perr)
	}
	return d, nil
}

// refDigest is the digest that ref carries (name@sha256:…, or name:tag@sha256:…).
// ok is false for a reference without one; err is set for a malformed digest.
func refDigest(ref string) (d digest.Digest, ok bool, err error) {
	i := strings.LastIndexByte(ref, '@')
	if i < 0 {
		return "", false, nil
	}
	d, err = digest.Parse(ref[i+1:])
	if err != nil {
		return "", false, fmt.Errorf("the digest of image reference %q: %w", ref, err)
	}
	return d, true, nil
}

// pickRepoDigest picks, out of CRI's RepoDigests of an image (each
// "repository@digest", the repository fully qualified), the digest of ref's
// repository. A ref that names no repository (an image ID) and a ref whose
// repository has none take the only repo digest there is. It fails with
// errdefs.ErrNotFound when there is nothing to pick, and with an *ambiguousError when
// ref's repository has several.
func pickRepoDigest(ref string, repoDigests []string) (digest.Digest, error) {
	type candidate struct {
		name string
		d    digest.Digest
	}
	var all []candidate
	for _, rd := range repoDigests {
		n, err := reference.ParseNormalizedNamed(rd)
		if err != nil {
			continue
		}
		if c, ok := n.(reference.Canonical); ok {
			all = append(all, candidate{c.Name(), c.Digest()})
		}
	}
	if named, err := reference.ParseNormalizedNamed(ref); err == nil {
		var match []digest.Digest
		for _, c := range all {
			if c.name == named.Name() && !slices.Contains(match, c.d) {
				match = append(match, c.d)
			}
		}
		switch len(match) {
		case 1:
			return match[0], nil
		case 0:
		default:
			return "", &ambiguousError{ref, named.Name(), repoDigests}
		}
	}
	if len(all) == 1 {
		return all[0].d, nil
	}
	if len(all) == 0 {
		return "", fmt.Errorf("image %q has no repo digest (RepoDigests %v): %w", ref, repoDigests, errdefs.ErrNotFound)
	}
	return "", fmt.Errorf("image %q: no repo digest is of its repository, and there are %d (RepoDigests %v): %w",
		ref, len(all), repoDigests, errdefs.ErrNotFound)
}
