package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Tag is what a tag of an upstream repository pointed to when last asked.
type Tag struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	// Validated is when upstream last confirmed the tag.
	Validated time.Time
}

// tagRecord is a tag file, and a tag in index.json. It names its tag so that a walk
// can rebuild the index even where the upstream's directory name is a hash.
type tagRecord struct {
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType,omitempty"`
	Size       int64         `json:"size"`
	Validated  time.Time     `json:"validated"`
}

func newTagRecord(k tagKey, t Tag) tagRecord {
	return tagRecord{Upstream: k.upstream, Repository: k.repo, Tag: k.tag,
		Digest: t.Digest, MediaType: t.MediaType, Size: t.Size, Validated: t.Validated}
}

func (r tagRecord) tag() (tagKey, Tag, bool) {
	k := tagKey{upstream: r.Upstream, repo: r.Repository, tag: r.Tag}
	if _, err := tagPath(k); err != nil || checkDigest(r.Digest) != nil {
		return k, Tag{}, false
	}
	return k, Tag{Digest: r.Digest, MediaType: r.MediaType, Size: r.Size, Validated: r.Validated}, true
}

// GetTag returns the tag of repo at upstream, or an error wrapping errdefs.ErrNotFound.
// Names that could not be stored safely are refused with errdefs.ErrInvalidArgument.
func (s *Store) GetTag(ctx context.Context, upstream, repo, tag string) (Tag, error) {
	k := tagKey{upstream: upstream, repo: repo, tag: tag}
	p, err := tagPath(k)
	if err != nil {
		return Tag{}, err
	}
	s.mu.Lock()
	t, ok := s.tags[k]
	s.mu.Unlock()
	if ok {
		return t, nil
	}
	// Another master sharing the storage may have written it.
	rk, t, err := s.readTag(ctx, p)
	if isNotFound(err) {
		return Tag{}, fmt.Errorf("tag %s/%s:%s: %w", upstream, repo, tag, errdefs.ErrNotFound)
	}
	if err != nil {
		return Tag{}, fmt.Errorf("tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	if rk != k {
		return Tag{}, fmt.Errorf("tag %s/%s:%s: record names %s/%s:%s: %w", upstream, repo, tag,
			rk.upstream, rk.repo, rk.tag, errdefs.ErrDataLoss)
	}
	s.mu.Lock()
	if _, ok := s.tags[k]; !ok {
		s.setTagLocked(k, t)
	}
	s.mu.Unlock()
	return t, nil
}

// PutTag records what a tag points to.
func (s *Store) PutTag(ctx context.Context, upstream, repo, tag string, t Tag) error {
	k := tagKey{upstream: upstream, repo: repo, tag: tag}
	p, err := tagPath(k)
	if err != nil {
		return err
	}
	if err := checkDigest(t.Digest); err != nil {
		return fmt.Errorf("tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	if t.Size < 0 {
		return fmt.Errorf("tag %s/%s:%s: negative size: %w", upstream, repo, tag, errdefs.ErrInvalidArgument)
	}
	mu := s.stripe(p)
	mu.Lock()
	defer mu.Unlock()
	if err := s.putAtomic(ctx, p, newTagRecord(k, t)); err != nil {
		s.noteWrite("", 0, false, err)
		return fmt.Errorf("tag %s/%s:%s: %w", upstream, repo, tag, err)
	}
	s.mu.Lock()
	s.setTagLocked(k, t)
	s.mu.Unlock()
	return nil
}

func (s *Store) readTag(ctx context.Context, p string) (tagKey, Tag, error) {
	data, err := s.drv.GetContent(ctx, p)
	if err != nil {
		return tagKey{}, Tag{}, err
	}
	var r tagRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return tagKey{}, Tag{}, fmt.Errorf("read %s: %w", p, err)
	}
	k, t, ok := r.tag()
	if !ok {
		return tagKey{}, Tag{}, fmt.Errorf("read %s: bad tag record: %w", p, errdefs.ErrDataLoss)
	}
	return k, t, nil
}
