package cache

import (
	"context"
	"fmt"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	registrymiddleware "github.com/distribution/distribution/v3/registry/middleware/registry"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
)

// MiddlewareName is the name the cache registers under in distribution's registry
// middleware table; its options carry the *Cache under OptionCache.
const (
	MiddlewareName = "hopless-cache"
	OptionCache    = "cache"
)

func init() {
	// Registration is the one package-level side effect: distribution looks middleware
	// up by name when the app is built.
	if err := registrymiddleware.Register(MiddlewareName, initMiddleware); err != nil {
		panic(err)
	}
}

func initMiddleware(_ context.Context, ns distribution.Namespace, _ storagedriver.StorageDriver, options map[string]any) (distribution.Namespace, error) {
	c, ok := options[OptionCache].(*Cache)
	if !ok || c == nil {
		return nil, fmt.Errorf("%s middleware: option %q must hold a *cache.Cache", MiddlewareName, OptionCache)
	}
	return &namespace{Namespace: ns, cache: c}, nil
}

// namespace serves every repository from the cache; distribution's own storage under
// it is never read or written.
type namespace struct {
	distribution.Namespace
	cache *Cache
}

var (
	_ distribution.Namespace         = (*namespace)(nil)
	_ distribution.RepositoryRemover = (*namespace)(nil)
)

func (n *namespace) Repository(ctx context.Context, name reference.Named) (distribution.Repository, error) {
	req, ok := requestFrom(ctx)
	if !ok {
		// distribution answers only registry errors here; a plain error would leave
		// the client an empty 500.
		return nil, errcode.ErrorCodeUnknown.WithMessage(fmt.Sprintf("request for %s reached the cache without a route", name))
	}
	return &repository{name: name, cache: n.cache, req: req}, nil
}

func (n *namespace) Repositories(context.Context, []string, string) (int, error) {
	return 0, distribution.ErrUnsupported
}

// Remove refuses to delete a repository. Implementing RepositoryRemover only keeps
// distribution from warning at startup that deletes are impossible.
func (n *namespace) Remove(context.Context, reference.Named) error {
	return distribution.ErrUnsupported
}

type repository struct {
	name  reference.Named
	cache *Cache
	req   Request
}

var _ distribution.Repository = (*repository)(nil)

func (r *repository) Named() reference.Named { return r.name }

func (r *repository) Manifests(context.Context, ...distribution.ManifestServiceOption) (distribution.ManifestService, error) {
	return &manifests{cache: r.cache, req: r.req, name: r.name.Name()}, nil
}

func (r *repository) Blobs(context.Context) distribution.BlobStore {
	return &blobs{cache: r.cache, req: r.req}
}

func (r *repository) Tags(context.Context) distribution.TagService {
	return &tags{cache: r.cache, req: r.req}
}
