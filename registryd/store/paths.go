package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

const (
	rootDir      = "/hopless"
	blobsDir     = rootDir + "/blobs"
	manifestsDir = rootDir + "/manifests"
	tagsDir      = rootDir + "/tags"
	tmpDir       = rootDir + "/tmp"
	indexPath    = rootDir + "/index.json"
	pinsPath     = rootDir + "/pins.json"
	// tagsSub separates a repository's path from its tags. Repository components
	// cannot start with '_', so it never collides with one.
	tagsSub = "_tags"
	// maxRepoLen is the reference grammar's bound on a repository name.
	maxRepoLen = 255
)

var (
	// repoComponent is one path component of the reference grammar
	// (github.com/distribution/reference): no domain, no '..', no empty part.
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)
	tagName       = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)
	// hostPort is an upstream that can be written readably as a path component.
	hostPort = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?$`)
)

// checkDigest rejects a digest that is malformed or of an unknown algorithm.
func checkDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w: %w", d, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// contentPath is dir/<alg>/<hex[:2]>/<hex> for a valid digest.
func contentPath(dir string, d digest.Digest) string {
	enc := d.Encoded()
	return path.Join(dir, d.Algorithm().String(), enc[:2], enc)
}

func blobPath(d digest.Digest) string { return contentPath(blobsDir, d) }
func metaPath(d digest.Digest) string { return contentPath(manifestsDir, d) }

// parseContentPath is the inverse of contentPath.
func parseContentPath(dir, p string) (digest.Digest, bool) {
	rest, ok := strings.CutPrefix(p, dir+"/")
	if !ok {
		return "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || len(parts[2]) < 2 || parts[1] != parts[2][:2] {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[2])
	return d, d.Validate() == nil
}

// SpoolPath is the local file where a fill writes d's bytes:
// <spool>/<alg>/<hex>.partial. A file left there by a crash is kept so that a fill
// can resume from it. It is "" for an invalid digest.
func (s *Store) SpoolPath(d digest.Digest) string {
	if checkDigest(d) != nil {
		return ""
	}
	return filepath.Join(s.spool, d.Algorithm().String(), d.Encoded()+".partial")
}

type tagKey struct{ upstream, repo, tag string }

// tagPath checks the names and builds the tag's driver path.
func tagPath(k tagKey) (string, error) {
	if k.upstream == "" || len(k.upstream) > 255 {
		return "", fmt.Errorf("upstream %q: must be a host[:port]: %w", k.upstream, errdefs.ErrInvalidArgument)
	}
	if len(k.repo) > maxRepoLen {
		return "", fmt.Errorf("repository %q: longer than %d: %w", k.repo, maxRepoLen, errdefs.ErrInvalidArgument)
	}
	for c := range strings.SplitSeq(k.repo, "/") {
		if !repoComponent.MatchString(c) {
			return "", fmt.Errorf("repository %q: component %q is not a valid name: %w", k.repo, c, errdefs.ErrInvalidArgument)
		}
	}
	if !tagName.MatchString(k.tag) {
		return "", fmt.Errorf("tag %q: not a valid tag: %w", k.tag, errdefs.ErrInvalidArgument)
	}
	return path.Join(tagsDir, upstreamDir(k.upstream), k.repo, tagsSub, k.tag), nil
}

// upstreamDir writes host[:port] as host[_port]; hostnames have no '_', so this is
// unambiguous. Anything else (an IPv6 literal, say) becomes '_' and a hash.
func upstreamDir(u string) string {
	if hostPort.MatchString(u) {
		return strings.Replace(u, ":", "_", 1)
	}
	sum := sha256.Sum256([]byte(u))
	return "_" + hex.EncodeToString(sum[:16])
}
