package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// SetPins replaces the manifests pinned by source (a node name): they, and everything
// reachable from them, are never evicted. An empty list removes the source's pins.
func (s *Store) SetPins(ctx context.Context, source string, manifests []digest.Digest) error {
	if source == "" {
		return fmt.Errorf("pins: empty source: %w", errdefs.ErrInvalidArgument)
	}
	for _, d := range manifests {
		if err := checkDigest(d); err != nil {
			return fmt.Errorf("pins of %s: %w", source, err)
		}
	}
	set := slices.Clone(manifests)
	slices.Sort(set)
	set = slices.Compact(set)

	s.pinsMu.Lock()
	defer s.pinsMu.Unlock()
	s.mu.Lock()
	if slices.Equal(s.pins[source], set) {
		s.mu.Unlock()
		return nil
	}
	if len(set) == 0 {
		delete(s.pins, source)
	} else {
		s.pins[source] = set
	}
	s.gen++
	all := make(map[string][]digest.Digest, len(s.pins))
	for k, v := range s.pins {
		all[k] = v
	}
	s.mu.Unlock()
	if err := s.putAtomic(ctx, pinsPath, all); err != nil {
		return fmt.Errorf("pins: %w", err)
	}
	return nil
}

func (s *Store) loadPins(ctx context.Context) error {
	data, err := s.drv.GetContent(ctx, pinsPath)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: read pins: %w", err)
	}
	var all map[string][]digest.Digest
	if err := json.Unmarshal(data, &all); err != nil {
		s.log.Warn("pins file is corrupt; ignoring it until nodes report again", "path", pinsPath, "error", err)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for src, ds := range all {
		ds = slices.DeleteFunc(ds, func(d digest.Digest) bool { return checkDigest(d) != nil })
		if src != "" && len(ds) > 0 {
			s.pins[src] = ds
		}
	}
	s.gen++
	return nil
}

// protectedLocked is the set of digests reachable from pinned manifests.
func (s *Store) protectedLocked() map[digest.Digest]bool {
	seen := make(map[digest.Digest]bool)
	var queue []digest.Digest
	for _, ds := range s.pins {
		queue = append(queue, ds...)
	}
	for len(queue) > 0 {
		d := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if seen[d] {
			continue
		}
		seen[d] = true
		if e := s.entries[d]; e != nil && e.kind == kindManifest {
			queue = append(queue, e.refs...)
		}
	}
	return seen
}
