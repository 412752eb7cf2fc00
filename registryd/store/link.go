package store

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Links scope content to repositories, as distribution's linked blob store does:
// content is stored once per digest, but registryd serves it under a repository only
// once the upstream has shown that the repository holds it (it answered a GET or
// HEAD of that digest there, or served a manifest there that references it). A link
// names the upstream's host and repository, not the client's name for it.
//
// Links live in memory and in index.json (their "links" list), written with it. A
// rebuilt index keeps the links of the index it replaces for the content it finds;
// a link lost to a crash costs one HEAD to the upstream. At start, every stored tag
// links its manifest, and what that reaches, to the tag's repository: the upstream
// said the tag is there (this also links content cached before links existed).
// Evicting, or forgetting, content drops its links.

// linkRepo is one upstream repository.
type linkRepo struct{ upstream, repo string }

// linkRecord is a repository's links in index.json.
type linkRecord struct {
	Upstream   string          `json:"upstream"`
	Repository string          `json:"repository"`
	Digests    []digest.Digest `json:"digests"`
}

// checkLink validates the names of a link as tag records' names are validated.
func checkLink(upstream, repo string, d digest.Digest) error {
	if upstream == "" || len(upstream) > 255 {
		return fmt.Errorf("upstream %q: must be a host[:port]: %w", upstream, errdefs.ErrInvalidArgument)
	}
	if len(repo) > maxRepoLen {
		return fmt.Errorf("repository %q: longer than %d: %w", repo, maxRepoLen, errdefs.ErrInvalidArgument)
	}
	for c := range strings.SplitSeq(repo, "/") {
		if !repoComponent.MatchString(c) {
			return fmt.Errorf("repository %q: component %q is not a valid name: %w", repo, c, errdefs.ErrInvalidArgument)
		}
	}
	return checkDigest(d)
}

// Link records that repository repo of upstream holds d.
func (s *Store) Link(upstream, repo string, d digest.Digest) error {
	if err := checkLink(upstream, repo, d); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.linkLocked(linkRepo{upstream, repo}, d)
	return nil
}

// LinkManifest links d and, when d is a stored manifest, the content it references:
// an upstream that serves a manifest in a repository holds its config, layers and
// child manifests there too. A child manifest's own references are linked when it
// is linked in turn.
func (s *Store) LinkManifest(upstream, repo string, d digest.Digest) error {
	if err := checkLink(upstream, repo, d); err != nil {
		return err
	}
	r := linkRepo{upstream, repo}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.linkLocked(r, d)
	if e := s.entries[d]; e != nil && e.kind == kindManifest {
		for _, ref := range e.refs {
			s.linkLocked(r, ref)
		}
	}
	return nil
}

// Linked reports whether repository repo of upstream is known to hold d.
func (s *Store) Linked(upstream, repo string, d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.links[d][linkRepo{upstream, repo}]
	return ok
}

func (s *Store) linkLocked(r linkRepo, d digest.Digest) {
	if s.links == nil {
		s.links = make(map[digest.Digest]map[linkRepo]struct{})
	}
	set := s.links[d]
	if set == nil {
		set = make(map[linkRepo]struct{}, 1)
		s.links[d] = set
	}
	if _, ok := set[r]; !ok {
		set[r] = struct{}{}
		s.contentDirty = true
	}
}

// dropLinksLocked forgets every link of d, whose content is gone.
func (s *Store) dropLinksLocked(d digest.Digest) {
	if _, ok := s.links[d]; ok {
		delete(s.links, d)
		s.contentDirty = true
	}
}

// linkRecordsLocked lists the links of stored content for index.json, one record
// per repository. Links of content not (or no longer) in the index are left out.
func (s *Store) linkRecordsLocked() []linkRecord {
	byRepo := make(map[linkRepo][]digest.Digest)
	for d, set := range s.links {
		if s.entries[d] == nil {
			continue
		}
		for r := range set {
			byRepo[r] = append(byRepo[r], d)
		}
	}
	out := make([]linkRecord, 0, len(byRepo))
	for r, ds := range byRepo {
		slices.Sort(ds)
		out = append(out, linkRecord{Upstream: r.upstream, Repository: r.repo, Digests: ds})
	}
	slices.SortFunc(out, func(a, b linkRecord) int {
		return strings.Compare(a.Upstream+"/"+a.Repository, b.Upstream+"/"+b.Repository)
	})
	return out
}

// loadLinksLocked adds the links of index.json whose content is in the index and
// whose names are valid.
func (s *Store) loadLinksLocked(recs []linkRecord) {
	for _, rec := range recs {
		r := linkRepo{rec.Upstream, rec.Repository}
		for _, d := range rec.Digests {
			if s.entries[d] == nil || checkLink(r.upstream, r.repo, d) != nil {
				continue
			}
			s.linkLocked(r, d)
		}
	}
}

// linkTags links each tag's manifest, and everything stored that it reaches, to the
// tag's repository.
func (s *Store) linkTags() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, t := range s.tags {
		r := linkRepo{k.upstream, k.repo}
		queue := []digest.Digest{t.Digest}
		for len(queue) > 0 {
			d := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			e := s.entries[d]
			if e == nil {
				continue
			}
			if _, ok := s.links[d][r]; ok {
				continue
			}
			s.linkLocked(r, d)
			if e.kind == kindManifest {
				queue = append(queue, e.refs...)
			}
		}
	}
}
