package agent

import (
	"log/slog"
	"maps"
	"sync"

	"github.com/hopless/hopless/nri/pins"
	"github.com/hopless/hopless/nri/plugin"
)

// lazyImages holds the images in use until the reporter exists, which for a
// pre-installed plugin is only after Configure, then hands them over. Without a
// pins token it only holds them.
type lazyImages struct {
	mu      sync.Mutex
	target  plugin.Images
	pending map[string]plugin.Image
}

var _ plugin.Images = (*lazyImages)(nil)

func (l *lazyImages) Set(id string, img plugin.Image) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.target != nil {
		l.target.Set(id, img)
		return
	}
	l.pending[id] = img
}

func (l *lazyImages) Remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.target != nil {
		l.target.Remove(id)
		return
	}
	delete(l.pending, id)
}

func (l *lazyImages) Replace(set map[string]plugin.Image) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.target != nil {
		l.target.Replace(set)
		return
	}
	l.pending = maps.Clone(set)
}

// attach sends what is held to t, and from now on everything.
func (l *lazyImages) attach(t plugin.Images) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.target = t
	t.Replace(l.pending)
	l.pending = nil
}

// reporterImages adapts the pins reporter to the plugin's handlers.
type reporterImages struct {
	r   *pins.Reporter
	log *slog.Logger
}

func (a *reporterImages) Set(id string, img plugin.Image) {
	if err := a.r.Set(id, img.Name, img.Digest); err != nil {
		a.log.Warn("an image in use is not pinned", "container", id, "image", img.Name, "error", err)
	}
}

func (a *reporterImages) Remove(id string) { a.r.Remove(id) }

func (a *reporterImages) Replace(set map[string]plugin.Image) {
	refs := make(map[string]pins.ImageRef, len(set))
	for id, img := range set {
		refs[id] = pins.ImageRef{Image: img.Name, Digest: img.Digest}
	}
	if err := a.r.Replace(refs); err != nil {
		a.log.Warn("some images in use are not pinned", "error", err)
	}
}
