package pins

import (
	"container/list"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// ImageRef is the image a container uses. Digest is the manifest's digest (the one
// the container was created from, a list's or a platform manifest's); empty, the
// container is pending until Image is resolved.
type ImageRef struct {
	Image  string
	Digest digest.Digest
}

// entry is one container tracked.
type entry struct {
	id   string
	ref  ImageRef
	elem *list.Element // in pinSet.order
}

// pendingImage is an image that containers use whose digest is not known yet.
type pendingImage struct {
	containers map[string]*entry
	// attempts counts the failed resolutions; the next is due at retryAt.
	attempts int
	retryAt  time.Time
}

// pinSet is the containers a node runs and the digests they pin. It is not safe for
// concurrent use: Reporter guards it.
type pinSet struct {
	maxContainers int
	maxImages     int
	containers    map[string]*entry
	order         *list.List // of *entry, least recently added first
	digests       map[digest.Digest]int
	pending       map[string]*pendingImage
}

func newPinSet(maxContainers, maxImages int) *pinSet {
	return &pinSet{
		maxContainers: maxContainers,
		maxImages:     maxImages,
		containers:    map[string]*entry{},
		order:         list.New(),
		digests:       map[digest.Digest]int{},
		pending:       map[string]*pendingImage{},
	}
}

// set tracks container id as using ref and reports whether the pins may have
// changed; evicted is the container that gave way to it, or empty. ref.Digest must
// be valid or empty.
func (s *pinSet) set(id string, ref ImageRef) (changed bool, evicted string) {
	if e, ok := s.containers[id]; ok {
		// A container reported again without its digest keeps the one resolved
		// for it: a reconnect must not unpin what it runs.
		if e.ref.Image == ref.Image && (e.ref.Digest == ref.Digest || ref.Digest == "") {
			return false, ""
		}
		changed = s.drop(e)
	}
	if len(s.containers) >= s.maxContainers {
		oldest := s.order.Front().Value.(*entry)
		evicted = oldest.id
		changed = s.drop(oldest) || changed
	}
	e := &entry{id: id, ref: ref}
	e.elem = s.order.PushBack(e)
	s.containers[id] = e
	if ref.Digest == "" {
		p := s.pending[ref.Image]
		if p == nil {
			p = &pendingImage{containers: map[string]*entry{}}
			s.pending[ref.Image] = p
		}
		p.containers[id] = e
		return changed, evicted
	}
	s.digests[ref.Digest]++
	// Beyond maxImages, which digests are sent depends on the order of additions.
	return changed || s.digests[ref.Digest] == 1 || len(s.digests) > s.maxImages, evicted
}

// remove forgets container id and reports whether the pins may have changed.
func (s *pinSet) remove(id string) bool {
	e, ok := s.containers[id]
	if !ok {
		return false
	}
	return s.drop(e)
}

func (s *pinSet) drop(e *entry) bool {
	delete(s.containers, e.id)
	s.order.Remove(e.elem)
	if e.ref.Digest == "" {
		p := s.pending[e.ref.Image]
		delete(p.containers, e.id)
		if len(p.containers) == 0 {
			delete(s.pending, e.ref.Image)
		}
		return false
	}
	over := len(s.digests) > s.maxImages
	s.digests[e.ref.Digest]--
	if s.digests[e.ref.Digest] > 0 {
		return over
	}
	delete(s.digests, e.ref.Digest)
	return true
}

// replace tracks exactly the containers of refs, whose digests must be valid or
// empty, and reports whether the pins may have changed; evicted counts the
// containers beyond maxContainers that were left out. Containers tracked already
// with the same image keep their place and their digest.
func (s *pinSet) replace(refs map[string]ImageRef) (changed bool, evicted int) {
	for id, e := range s.containers {
		if _, ok := refs[id]; !ok {
			changed = s.drop(e) || changed
		}
	}
	ids := make([]string, 0, len(refs))
	for id := range refs {
		ids = append(ids, id)
	}
	// Sorted, so that which containers are left out beyond the bound does not
	// depend on the map's order.
	slices.Sort(ids)
	for _, id := range ids {
		c, ev := s.set(id, refs[id])
		changed = changed || c
		if ev != "" {
			evicted++
		}
	}
	return changed, evicted
}

// resolved gives d to the containers pending on image and reports whether the pins
// may have changed.
func (s *pinSet) resolved(image string, d digest.Digest) bool {
	p := s.pending[image]
	if p == nil {
		return false
	}
	delete(s.pending, image)
	changed := false
	for _, e := range p.containers {
		e.ref.Digest = d
		s.digests[d]++
		changed = changed || s.digests[d] == 1 || len(s.digests) > s.maxImages
	}
	return changed
}

// pin is one image of a report.
type pin struct {
	Image  string
	Digest digest.Digest
}

// snapshot returns the pins to report, sorted by digest: the distinct digests, each
// with the image of the most recently added container that uses it, at most
// maxImages of them, those of the most recently added containers. total is the
// number of distinct digests.
func (s *pinSet) snapshot() (pins []pin, total int) {
	total = len(s.digests)
	seen := make(map[digest.Digest]bool, min(total, s.maxImages))
	for el := s.order.Back(); el != nil && len(pins) < s.maxImages; el = el.Prev() {
		e := el.Value.(*entry)
		if e.ref.Digest == "" || seen[e.ref.Digest] {
			continue
		}
		seen[e.ref.Digest] = true
		pins = append(pins, pin{Image: logName(e.ref.Image), Digest: e.ref.Digest})
	}
	slices.SortFunc(pins, func(a, b pin) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return pins, total
}

// maxImageName bounds the image names sent: they are for the masters' logs, and
// 1000 of them must fit in a 1 MiB body.
const maxImageName = 256

// logName is image as sent: printable ASCII that JSON does not escape, and short.
func logName(image string) string {
	b := []byte(image[:min(len(image), maxImageName)])
	for i, c := range b {
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b[i] = '_'
		}
	}
	return string(b)
}
