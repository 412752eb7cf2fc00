package upstream

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// checkRepo validates a repository name against the distribution grammar, in its path
// form: lower case, no host or port. Valid names need no escaping in a URL path.
func checkRepo(repo string) error {
	if repo == "" || strings.Trim(repo, "abcdefghijklmnopqrstuvwxyz0123456789._-/") != "" {
		return fmt.Errorf("invalid repository name %q: %w", repo, errdefs.ErrInvalidArgument)
	}
	if _, err := reference.WithName(repo); err != nil {
		return fmt.Errorf("invalid repository name %q: %v: %w", repo, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// target is a validated manifest reference: a tag or a digest in a repository.
type target struct {
	repo, ref string
	dgst      digest.Digest // set when ref is a digest
}

func parseTarget(repo, ref string) (target, error) {
	if err := checkRepo(repo); err != nil {
		return target{}, err
	}
	t := target{repo: repo, ref: ref}
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return target{}, fmt.Errorf("invalid digest %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
		}
		t.dgst = d
		return t, nil
	}
	named, err := reference.WithName(repo)
	if err != nil {
		return target{}, fmt.Errorf("invalid repository name %q: %v: %w", repo, err, errdefs.ErrInvalidArgument)
	}
	if _, err := reference.WithTag(named, ref); err != nil {
		return target{}, fmt.Errorf("invalid tag %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	return t, nil
}

func (t target) String() string {
	if t.dgst != "" {
		return t.repo + "@" + t.ref
	}
	return t.repo + ":" + t.ref
}

// kind is the metrics kind of a request for t.
func (t target) kind() string {
	if t.dgst != "" {
		return kindManifest
	}
	return kindTag
}
