package store

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// pinsVersion is the version of pins.json.
const pinsVersion = 2

// DefaultMaxPinSources applies when WithMaxPinSources is not given.
const DefaultMaxPinSources = 10000

// Lease is what one source (a node) pins: manifests that, with everything reachable
// from them, are not evicted until Expires. A source renews its lease by reporting
// again; one that stops reporting loses its pins when the lease lapses.
type Lease struct {
	Source    string          `json:"source"`
	Manifests []digest.Digest `json:"manifests"`
	// Reported is when the source made the report, by the clock of the master it
	// reported to: of two leases of one source, the later report wins, whichever
	// master a copy reaches first.
	Reported time.Time `json:"reported"`
	Expires  time.Time `json:"expires"`
}

// pinsFile is pins.json.
type pinsFile struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

// WithMaxPinSources bounds how many sources may hold leases at once (api.max_pin_sources).
func WithMaxPinSources(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.maxPinSources = n
		}
	}
}

// SetLease replaces l.Source's lease with l unless the store holds a lease of that
// source reported later, and reports whether it did. A lease with no manifests
// removes the source's pins. A new source beyond the bound of sources is refused
// with errdefs.ErrResourceExhausted; sources whose leases lapsed are forgotten first.
// The leases are written to storage before SetLease returns.
func (s *Store) SetLease(ctx context.Context, l Lease) (bool, error) {
	if l.Source == "" {
		return false, fmt.Errorf("pins: empty source: %w", errdefs.ErrInvalidArgument)
	}
	for _, d := range l.Manifests {
		if err := checkDigest(d); err != nil {
			return false, fmt.Errorf("pins of %s: %w", l.Source, err)
		}
	}
	l.Manifests = slices.Clone(l.Manifests)
	slices.Sort(l.Manifests)
	l.Manifests = slices.Compact(l.Manifests)

	s.pinsMu.Lock()
	defer s.pinsMu.Unlock()
	s.mu.Lock()
	now := s.now()
	s.pruneLeasesLocked(now)
	old, had := s.pins[l.Source]
	switch {
	case had && old.Reported.After(l.Reported):
		s.mu.Unlock()
		return false, nil
	case !had && len(l.Manifests) > 0 && len(s.pins) >= s.maxPinSources:
		s.mu.Unlock()
		return false, fmt.Errorf("pins of %s: %d sources hold pins already, the most allowed: %w",
			l.Source, len(s.pins), errdefs.ErrResourceExhausted)
	}
	changed := !had || !slices.Equal(old.Manifests, l.Manifests)
	if len(l.Manifests) == 0 || !now.Before(l.Expires) {
		delete(s.pins, l.Source)
	} else {
		s.pins[l.Source] = l
	}
	if changed {
		s.gen++
	}
	f := s.pinsFileLocked()
	s.setPinMetricsLocked()
	s.mu.Unlock()
	if err := s.putAtomic(ctx, s.pinsPath, f); err != nil {
		return false, fmt.Errorf("pins: %w", err)
	}
	return true, nil
}

// Leases returns the leases that hold now, sorted by source.
func (s *Store) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLeasesLocked(s.now())
	return s.pinsFileLocked().Leases
}

func (s *Store) pinsFileLocked() pinsFile {
	f := pinsFile{Version: pinsVersion, Leases: make([]Lease, 0, len(s.pins))}
	for _, l := range s.pins {
		f.Leases = append(f.Leases, l)
	}
	slices.SortFunc(f.Leases, func(a, b Lease) int { return cmp.Compare(a.Source, b.Source) })
	return f
}

// pruneLeasesLocked forgets the leases that lapsed by now. The file keeps them until
// its next write; loading skips them.
func (s *Store) pruneLeasesLocked(now time.Time) {
	n := 0
	for src, l := range s.pins {
		if !now.Before(l.Expires) {
			delete(s.pins, src)
			n++
			s.log.Info("pins lapsed: the source did not report again in time", "source", src,
				"manifests", len(l.Manifests), "expired", l.Expires)
		}
	}
	if n == 0 {
		return
	}
	s.gen++
	if s.m != nil {
		s.m.PinLeasesLapsed.Add(float64(n))
	}
	s.setPinMetricsLocked()
}

func (s *Store) setPinMetricsLocked() {
	if s.m != nil {
		s.m.PinSources.Set(float64(len(s.pins)))
	}
}

func (s *Store) loadPins(ctx context.Context) error {
	data, err := s.drv.GetContent(ctx, s.pinsPath)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: read pins: %w", err)
	}
	var f pinsFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != pinsVersion {
		s.log.Warn("pins file is corrupt or of another version; ignoring it until nodes report again",
			"path", s.pinsPath, "version", f.Version, "error", err)
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range f.Leases {
		l.Manifests = slices.DeleteFunc(l.Manifests, func(d digest.Digest) bool { return checkDigest(d) != nil })
		if l.Source == "" || len(l.Manifests) == 0 {
			continue
		}
		if old, ok := s.pins[l.Source]; !ok || l.Reported.After(old.Reported) {
			s.pins[l.Source] = l
		}
	}
	s.gen++
	// Leases that lapsed while registryd was down are counted and logged here.
	s.pruneLeasesLocked(s.now())
	s.setPinMetricsLocked()
	return nil
}

// protectedLocked is the set of digests reachable from the manifests of leases that
// hold now; leases that lapsed are forgotten.
func (s *Store) protectedLocked() map[digest.Digest]bool {
	s.pruneLeasesLocked(s.now())
	var roots []digest.Digest
	for _, l := range s.pins {
		roots = append(roots, l.Manifests...)
	}
	return reachableFrom(roots, func(d digest.Digest) []digest.Digest {
		if e := s.entries[d]; e != nil && e.kind == kindManifest {
			return e.refs
		}
		return nil
	})
}

// reachableFrom is the set of roots and of everything reachable from them through
// refs, a manifest's references.
func reachableFrom(roots []digest.Digest, refs func(digest.Digest) []digest.Digest) map[digest.Digest]bool {
	seen := make(map[digest.Digest]bool)
	queue := roots
	for len(queue) > 0 {
		d := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if seen[d] {
			continue
		}
		seen[d] = true
		queue = append(queue, refs(d)...)
	}
	return seen
}
