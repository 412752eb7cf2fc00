// Package plugin is the NRI side of hopless-nri: the handlers that containerd calls
// over the NRI socket. They learn which images the node's containers use and hand
// them to the pins reporter; nothing else.
//
// Every handler returns at once and never fails: NRI closes a plugin that takes more
// than 2 s on a request, and an error returned from RunPodSandbox, CreateContainer or
// StartContainer fails the pod. So the handlers touch no network and no disk; image
// digests that containerd does not give are resolved later, in the reporter's own
// goroutine. The only handler that returns an error is Synchronize, when the
// configuration that containerd handed a pre-installed plugin did not parse:
// containerd logs that error, names the plugin, stops it and runs on without it. An
// error from Configure would not reach containerd's log: the NRI stub closes the
// connection before the answer is sent.
package plugin

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/containerd/nri/pkg/api"
	"github.com/opencontainers/go-digest"
)

// ImageNameAnnotation is where CRI puts a container's image name as written in the
// pod spec; runtimes before containerd 2.4.3 give no Container.Image.
const ImageNameAnnotation = "io.kubernetes.cri.image-name"

// Image is what a container runs: the name as the pod spec wrote it, and the
// manifest digest when the runtime told it.
type Image struct {
	Name   string
	Digest digest.Digest
}

// Images takes the images in use. Its methods must not block.
type Images interface {
	Set(containerID string, img Image)
	Remove(containerID string)
	// Replace sets the whole set, after a (re)connection's Synchronize.
	Replace(map[string]Image)
}

// Plugin implements the NRI stub's handlers.
type Plugin struct {
	images Images
	log    *slog.Logger
	// configure, if set, receives the configuration text that containerd hands a
	// pre-installed plugin; it must only parse it and hand it on.
	configure func(text string) error
	// configErr is what configure returned, for Synchronize to report.
	configErr error
}

// New returns the handlers; configure may be nil (an external plugin loads its
// configuration from a file before it connects).
func New(images Images, log *slog.Logger, configure func(text string) error) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{images: images, log: log, configure: configure}
}

// Configure subscribes to the container events the plugin handles.
func (p *Plugin) Configure(_ context.Context, config, runtime, version string) (api.EventMask, error) {
	p.log.Info("connected to the runtime", "runtime", runtime, "version", version)
	if p.configure != nil {
		if err := p.configure(config); err != nil {
			p.configErr = fmt.Errorf("hopless-nri cannot start: %w", err)
			p.log.Error("bad configuration", "error", err)
		}
	}
	return api.MustParseEventMask("PostCreateContainer", "RemoveContainer"), nil
}

// Synchronize replaces the images in use with those of the running containers.
func (p *Plugin) Synchronize(_ context.Context, _ []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	if p.configErr != nil {
		return nil, p.configErr
	}
	set := make(map[string]Image, len(ctrs))
	for _, c := range ctrs {
		if img, ok := ImageOf(c); ok {
			set[c.GetId()] = img
		}
	}
	p.images.Replace(set)
	p.log.Info("synchronized", "containers", len(ctrs), "with_images", len(set))
	return nil, nil
}

// PostCreateContainer records the new container's image.
func (p *Plugin) PostCreateContainer(_ context.Context, _ *api.PodSandbox, c *api.Container) error {
	if img, ok := ImageOf(c); ok {
		p.images.Set(c.GetId(), img)
	} else {
		p.log.Debug("a container without an image name", "container", c.GetId())
	}
	return nil
}

// RemoveContainer forgets the container.
func (p *Plugin) RemoveContainer(_ context.Context, _ *api.PodSandbox, c *api.Container) error {
	p.images.Remove(c.GetId())
	return nil
}

// Shutdown is the runtime going away; the pins stay until their lease lapses.
func (p *Plugin) Shutdown(context.Context) {
	p.log.Info("the runtime is shutting down")
}

// ImageOf is c's image: Container.Image where the runtime fills it, else the CRI
// annotation (no digest). A digest that does not parse is dropped, and the name
// resolved later.
func ImageOf(c *api.Container) (Image, bool) {
	var img Image
	if i := c.GetImage(); i != nil {
		img.Name = i.GetName()
		if d, err := digest.Parse(i.GetDigest()); err == nil {
			img.Digest = d
		}
	}
	if img.Name == "" {
		img.Name = c.GetAnnotations()[ImageNameAnnotation]
	}
	return img, img.Name != "" || img.Digest != ""
}
