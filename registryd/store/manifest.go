package store

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// manifestDoc holds the fields of every manifest kind that name other content:
// image manifests (OCI and Docker schema 2), indexes and manifest lists, and the
// draft OCI artifact manifest.
type manifestDoc struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
	Blobs     []ocispec.Descriptor `json:"blobs"`
}

// parseManifest returns the media type to store (mediaType, else the payload's own)
// and the digests the manifest references.
func parseManifest(mediaType string, payload []byte) (string, []digest.Digest, error) {
	var doc manifestDoc
	if err := json.Unmarshal(payload, &doc); err != nil {
		return "", nil, fmt.Errorf("not a JSON manifest: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if mediaType == "" {
		mediaType = doc.MediaType
	}
	if mediaType == "" {
		switch {
		case doc.Manifests != nil:
			mediaType = ocispec.MediaTypeImageIndex
		case doc.Config != nil:
			mediaType = ocispec.MediaTypeImageManifest
		default:
			return "", nil, fmt.Errorf("no media type: %w", errdefs.ErrInvalidArgument)
		}
	}
	if _, _, err := mime.ParseMediaType(mediaType); err != nil {
		return "", nil, fmt.Errorf("media type %q: %w: %w", mediaType, err, errdefs.ErrInvalidArgument)
	}
	var descs []ocispec.Descriptor
	if doc.Config != nil {
		descs = append(descs, *doc.Config)
	}
	descs = append(descs, doc.Layers...)
	descs = append(descs, doc.Manifests...)
	descs = append(descs, doc.Blobs...)
	refs := make([]digest.Digest, 0, len(descs))
	for _, desc := range descs {
		if err := checkDigest(desc.Digest); err != nil {
			return "", nil, fmt.Errorf("references a bad digest: %w", err)
		}
		refs = append(refs, desc.Digest)
	}
	slices.Sort(refs)
	return mediaType, slices.Compact(refs), nil
}

// PutManifest stores a manifest: its payload as blob d and its media type beside it.
// It checks that payload hashes to d and records the content the manifest references
// (config and layers, or child manifests), which eviction keeps while it is kept.
func (s *Store) PutManifest(ctx context.Context, d digest.Digest, mediaType string, payload []byte) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(payload); got != d {
		return fmt.Errorf("manifest %s: payload hashes to %s: %w", d, got, errdefs.ErrInvalidArgument)
	}
	mediaType, refs, err := parseManifest(mediaType, payload)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d, err)
	}
	size := int64(len(payload))
	mu := s.stripe(string(d))
	mu.Lock()
	defer mu.Unlock()

	s.mu.Lock()
	e := s.entries[d]
	if e != nil && e.kind == kindManifest && e.mediaType == mediaType {
		s.mu.Unlock()
		s.touch(d, size)
		return nil
	}
	s.mu.Unlock()
	if have, err := s.storedSize(ctx, d); err != nil || have != size {
		if err := s.drv.PutContent(ctx, blobPath(d), payload); err != nil {
			s.noteWrite(d, size, false, err)
			return fmt.Errorf("manifest %s: write payload: %w", d, err)
		}
	}
	// The record goes second: a crash between the two leaves a plain blob, which a
	// later PutManifest turns into a manifest again.
	if err := s.putAtomic(ctx, metaPath(d), manifestMeta{MediaType: mediaType, Refs: refs}); err != nil {
		s.noteWrite(d, size, false, err)
		return fmt.Errorf("manifest %s: write record: %w", d, err)
	}
	s.mu.Lock()
	s.putEntryLocked(d, &entry{kind: kindManifest, size: size, access: s.now(), mediaType: mediaType, refs: refs})
	s.mu.Unlock()
	return nil
}

// GetManifest returns a stored manifest. Its digest is checked on every read; on a
// mismatch the manifest is removed and the error wraps errdefs.ErrDataLoss.
func (s *Store) GetManifest(ctx context.Context, d digest.Digest) (string, []byte, error) {
	if err := checkDigest(d); err != nil {
		return "", nil, err
	}
	s.mu.Lock()
	var meta *manifestMeta
	if e := s.entries[d]; e != nil && e.kind == kindManifest {
		meta = &manifestMeta{MediaType: e.mediaType, Refs: e.refs}
	}
	s.mu.Unlock()
	if meta == nil {
		m, err := s.readMeta(ctx, d)
		if isNotFound(err) {
			return "", nil, fmt.Errorf("manifest %s: %w", d, errdefs.ErrNotFound)
		}
		if err != nil {
			return "", nil, fmt.Errorf("manifest %s: read record: %w", d, err)
		}
		meta = &m
	}
	payload, err := s.drv.GetContent(ctx, blobPath(d))
	if isNotFound(err) {
		s.forget(d)
		return "", nil, fmt.Errorf("manifest %s: %w", d, errdefs.ErrNotFound)
	}
	if err != nil {
		return "", nil, fmt.Errorf("manifest %s: read: %w", d, err)
	}
	if got := d.Algorithm().FromBytes(payload); got != d {
		why := "content hashes to " + got.String()
		s.verifyFailed(d, why, func(ctx context.Context) bool {
			// Remove it only if it is still bad: a new copy may have been put meanwhile.
			p, err := s.drv.GetContent(ctx, blobPath(d))
			return err == nil && d.Algorithm().FromBytes(p) != d
		})
		return "", nil, fmt.Errorf("manifest %s: stored content is corrupt (%s): %w", d, why, errdefs.ErrDataLoss)
	}
	size := int64(len(payload))
	s.mu.Lock()
	if e := s.entries[d]; e == nil || e.kind != kindManifest {
		s.putEntryLocked(d, &entry{kind: kindManifest, size: size, mediaType: meta.MediaType, refs: meta.Refs})
	}
	s.mu.Unlock()
	s.touch(d, size)
	return meta.MediaType, payload, nil
}
