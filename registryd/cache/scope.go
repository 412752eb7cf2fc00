package cache

import (
	"context"
	"fmt"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/route"
)

// Repository scoping. Content is stored once per digest, but served under a
// repository only when the store links it there (registryd/store's links): when it
// was fetched for that repository, or the upstream confirmed that the repository
// holds it. A stored blob or manifest asked for under a repository it is not linked
// to is confirmed with the upstream once (a HEAD of that digest there, one call for
// all concurrent callers); a 404 is a 404 for that name, and the stored bytes are
// never served under it.
//
// A blob fill stays single per digest, whichever repository asked first: the bytes
// are the same. A caller whose repository is not the one the fill fetches from
// waits for the fill's first answer: if the upstream refused the fill's repository,
// the caller fills again under its own; if the fill is under way, the caller's
// repository is confirmed before any byte is served to it. A request naming a wrong
// repository thus never fails one naming the right one, and never gets its bytes.

// scope is the cache's state for repository scoping.
type scope struct {
	// confirms are the upstream confirmations in flight, by kind, upstream,
	// repository and digest.
	confirms flight[struct{}]

	mu sync.Mutex
	// origins records, for each running fill, the route it fetches with: that of
	// the caller that started it.
	origins map[digest.Digest]fillOrigin
}

type fillOrigin struct {
	fl    *fill.Fill
	route route.Route
}

// linkRepo returns the upstream host and repository that req's links are kept under.
func (c *Cache) linkRepo(req Request) (string, string, error) {
	up, err := c.upstreamFor(req)
	if err != nil {
		return "", "", err
	}
	return up.Host(), req.Route.Repo, nil
}

// linked reports whether d may be served under req's repository without asking.
func (c *Cache) linked(req Request, d digest.Digest) bool {
	host, repo, err := c.linkRepo(req)
	return err == nil && c.store.Linked(host, repo, d)
}

// link records that req's repository holds d, as the upstream (or the owner peer,
// which applies the same rule) has just shown.
func (c *Cache) link(req Request, d digest.Digest) {
	host, repo, err := c.linkRepo(req)
	if err == nil {
		err = c.store.Link(host, repo, d)
	}
	if err != nil {
		c.log.Warn("recording a repository link failed", "repo", req.Route.Repo, "digest", d, "error", err)
	}
}

// linkManifest links manifest d and the content it references to req's repository.
func (c *Cache) linkManifest(req Request, d digest.Digest) {
	host, repo, err := c.linkRepo(req)
	if err == nil {
		err = c.store.LinkManifest(host, repo, d)
	}
	if err != nil {
		c.log.Warn("recording a repository link failed", "repo", req.Route.Repo, "digest", d, "error", err)
	}
}

// allowBlob returns nil when stored blob d may be served under req's repository:
// it is linked there, or the upstream confirms it now (and it is linked from then
// on). An upstream that does not have it there makes the error wrap
// errdefs.ErrNotFound.
func (c *Cache) allowBlob(ctx context.Context, req Request, d digest.Digest) error {
	if c.linked(req, d) {
		return nil
	}
	up, err := c.upstreamFor(req)
	if err != nil {
		return err
	}
	key := "blob " + up.Host() + "/" + req.Route.Repo + "@" + d.String()
	_, err = c.scope.confirms.do(ctx, key, func() (struct{}, error) {
		if c.linked(req, d) {
			return struct{}{}, nil
		}
		lctx, cancel := context.WithTimeout(c.ctx, c.lookupTimeout)
		defer cancel()
		if _, err := up.StatBlob(lctx, req.Route.Repo, d); err != nil {
			return struct{}{}, fmt.Errorf("confirming blob %s in %s at %s: %w", d, req.Route.Repo, up.Host(), err)
		}
		c.log.Debug("the upstream confirmed a stored blob in another repository", "repo", req.Route.Repo, "digest", d)
		c.link(req, d)
		return struct{}{}, nil
	})
	return err
}

// confirmManifest links stored manifest d to req's repository once the upstream has
// confirmed, with a HEAD, that the repository holds it.
func (c *Cache) confirmManifest(ctx context.Context, req Request, d digest.Digest) error {
	up, err := c.upstreamFor(req)
	if err != nil {
		return err
	}
	if _, err := up.HeadManifest(ctx, req.Route.Repo, d.String(), c.maxManifest); err != nil {
		return fmt.Errorf("confirming manifest %s in %s at %s: %w", d, req.Route.Repo, up.Host(), err)
	}
	c.linkManifest(req, d)
	return nil
}

// joinFill starts or joins the fill of d and returns it with the route it fetches
// with.
func (c *Cache) joinFill(req Request, d digest.Digest) (*fill.Fill, route.Route) {
	src, label := c.blobSource(req, d)
	s := &c.scope
	s.mu.Lock()
	defer s.mu.Unlock()
	fl := c.filler.Fill(d, label, src)
	if o, ok := s.origins[d]; ok && o.fl == fl {
		return fl, o.route
	}
	// Every Fill call is made here under s.mu, so a fill not recorded yet is the one
	// this call started.
	if s.origins == nil {
		s.origins = make(map[digest.Digest]fillOrigin)
	}
	s.origins[d] = fillOrigin{fl: fl, route: req.Route}
	go func() {
		<-fl.Done()
		s.mu.Lock()
		if o, ok := s.origins[d]; ok && o.fl == fl {
			delete(s.origins, d)
		}
		s.mu.Unlock()
	}()
	return fl, req.Route
}

// maxRefills bounds how often a caller fills again under its own repository after
// fills under other repositories failed.
const maxRefills = 2

// scopedFill starts or joins the fill of d for req and waits for the blob's size. It
// returns the fill only once req may be served from it: the fill fetches under req's
// repository, or it fetches under another one and the upstream confirmed req's. A
// fill under another repository that the upstream refused (or another upstream
// failed) does not fail req: req fills again under its own.
func (c *Cache) scopedFill(ctx context.Context, req Request, d digest.Digest) (*fill.Fill, int64, error) {
	for refills := 0; ; refills++ {
		fl, origin := c.joinFill(req, d)
		if origin != req.Route {
			c.log.Debug("waiting for the fill of a blob for another repository", "repo", req.Route.Repo,
				"fill_repo", origin.Repo, "digest", d)
		}
		size, err := fl.Size(ctx)
		if origin == req.Route {
			return fl, size, err
		}
		if err != nil {
			if ctx.Err() == nil && refills < maxRefills && refusedElsewhere(err, origin, req.Route) {
				continue
			}
			return nil, 0, err
		}
		if err := c.allowBlob(ctx, req, d); err != nil {
			return nil, 0, err
		}
		return fl, size, nil
	}
}

// refusedElsewhere reports whether a fill that fetched with route origin failed in
// a way that says nothing about route want: its repository was refused (404, 401,
// 403), or it failed at another upstream.
func refusedElsewhere(err error, origin, want route.Route) bool {
	if origin.Upstream != want.Upstream {
		return true
	}
	return errdefs.IsNotFound(err) || errdefs.IsPermissionDenied(err) || errdefs.IsUnauthorized(err)
}
