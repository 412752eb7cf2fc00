package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Progress is how far a prefetch has come.
type Progress struct {
	Image     string `json:"image"`
	Manifests int    `json:"manifests"`
	Blobs     int    `json:"blobs"`
	BlobsDone int    `json:"blobs_done"`
	Bytes     int64  `json:"bytes"`
	BytesDone int64  `json:"bytes_done"`
	Done      bool   `json:"done"`
	Error     string `json:"error,omitempty"`

	// State is where the image is in its prefetch job: queued, running or done. The
	// API sets it; Prefetch leaves it alone.
	State string `json:"state,omitempty"`
}

// prefetchParallel bounds the blob fills one prefetch runs at once.
const prefetchParallel = 4

// Prefetch warms the cache with an image as clients name it ("system/deckhouse/x:tag"
// or "...@sha256:..."): its manifests (every platform of an index) and all their
// blobs. report is called after every step. The error returned is for the log; the
// Error that report sees names the image and the kind of failure, nothing internal.
func (c *Cache) Prefetch(ctx context.Context, image string, report func(Progress)) error {
	p := Progress{Image: image}
	var mu sync.Mutex
	emit := func(f func(*Progress)) {
		mu.Lock()
		f(&p)
		snap := p
		mu.Unlock()
		if report != nil {
			report(snap)
		}
	}
	err := c.prefetch(ctx, image, emit)
	emit(func(p *Progress) {
		p.Done = true
		if err != nil {
			p.Error = prefetchMessage(err)
		}
	})
	return err
}

func (c *Cache) prefetch(ctx context.Context, image string, emit func(func(*Progress))) error {
	ref, err := reference.Parse(image)
	if err != nil {
		return fmt.Errorf("image %q: %v: %w", image, err, errdefs.ErrInvalidArgument)
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return fmt.Errorf("image %q has no repository name: %w", image, errdefs.ErrInvalidArgument)
	}
	// Names are as clients send them to this registry; a leading registry host, if
	// given, is dropped.
	name := named.Name()
	if d := reference.Domain(named); strings.ContainsAny(d, ".:") || d == "localhost" {
		name = reference.Path(named)
	}
	if !ValidName(name) {
		return fmt.Errorf("image %q: invalid repository name %q: %w", image, name, errdefs.ErrInvalidArgument)
	}
	rt, err := c.router.Route(name, "")
	if err != nil {
		return err
	}
	req := Request{Route: rt, Name: name}
	var root digest.Digest
	switch r := ref.(type) {
	case reference.Digested:
		root = r.Digest()
	case reference.Tagged:
		desc, err := c.resolveTag(ctx, req, r.Tag())
		if err != nil {
			return step("resolving "+image, err)
		}
		root = desc.Digest
	default:
		return fmt.Errorf("image %q needs a tag or a digest: %w", image, errdefs.ErrInvalidArgument)
	}

	var blobs []v1.Descriptor
	seen := map[digest.Digest]bool{}
	queue := []digest.Digest{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if seen[d] {
			continue
		}
		seen[d] = true
		res, err := c.manifest(ctx, req, d)
		if err != nil {
			return step(fmt.Sprintf("manifest %s of %s", d, image), err)
		}
		man, _, err := distribution.UnmarshalManifest(res.mediaType, res.payload)
		if err != nil {
			return step(fmt.Sprintf("manifest %s of %s", d, image), fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument))
		}
		emit(func(p *Progress) { p.Manifests++ })
		for _, ref := range man.References() {
			if isManifest(ref.MediaType) {
				queue = append(queue, ref.Digest)
			} else if !seen[ref.Digest] {
				seen[ref.Digest] = true
				blobs = append(blobs, ref)
			}
		}
	}
	var total int64
	for _, b := range blobs {
		total += b.Size
	}
	emit(func(p *Progress) { p.Blobs, p.Bytes = len(blobs), total })

	sem := make(chan struct{}, prefetchParallel)
	errs := make(chan error, len(blobs))
	var wg sync.WaitGroup
	for _, b := range blobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
			defer func() { <-sem }()
			if err := c.warmBlob(ctx, req, b.Digest); err != nil {
				errs <- step(fmt.Sprintf("blob %s of %s", b.Digest, image), err)
				return
			}
			emit(func(p *Progress) { p.BlobsDone++; p.BytesDone += b.Size })
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// warmBlob makes sure blob d is in the store. The manifests that reference it are
// linked to req's repository, and so is d with them.
func (c *Cache) warmBlob(ctx context.Context, req Request, d digest.Digest) error {
	if _, err := c.store.StatBlob(ctx, d); err == nil {
		return nil
	}
	fl, _, err := c.scopedFill(ctx, req, d)
	if err != nil {
		return err
	}
	select {
	case <-fl.Done():
		return fl.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// step marks err as the failure of a prefetch step that clients may be told of by
// its name (what) and the kind of failure.
func step(what string, err error) error {
	return &subjectError{what: what, err: err}
}

// prefetchMessage is what a prefetch job reports of err: a failed step by its name
// and the kind of failure; anything else is a check of the image itself, whose
// message quotes only what the client sent.
func prefetchMessage(err error) string {
	var se *subjectError
	if errors.As(err, &se) {
		return se.what + ": " + failurePhrase(err)
	}
	return err.Error()
}

func isManifest(mediaType string) bool {
	switch mediaType {
	case v1.MediaTypeImageManifest, v1.MediaTypeImageIndex,
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json":
		return true
	}
	return false
}
