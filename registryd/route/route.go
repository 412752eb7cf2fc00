// Package route decides which configured upstream serves a request and under which
// upstream repository name. It is the one place that turns client input (the
// repository name and containerd's ns parameter) into an upstream, so it is also the
// place that refuses to act as an open proxy: only configured upstreams are ever
// chosen.
package route

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// Route is where a request's content comes from.
type Route struct {
	// Upstream indexes the configured upstreams.
	Upstream int
	// Repo is the repository name at the upstream.
	Repo string
}

// Router maps client requests to upstreams.
type Router struct {
	ups []conf.Upstream
}

// New returns a Router over validated upstreams; the first one is the default for
// names that match no local prefix.
func New(ups []conf.Upstream) *Router {
	return &Router{ups: ups}
}

// Route maps a client repository name and the ns query parameter (empty when absent).
// With ns, the upstream is the one listing ns; an unknown ns is refused with an error
// wrapping errdefs.ErrPermissionDenied. Without ns, the upstream with the longest
// matching local prefix wins. Within the chosen upstream, LocalPrefix/X becomes
// Path/X.
//
// The local prefix is a boundary: a name outside the chosen upstream's prefix (or,
// without ns, outside every prefix) is refused with an error wrapping
// errdefs.ErrNotFound, unless that upstream sets allow_unprefixed; then the name
// goes to it unchanged (without ns, to the first upstream that sets it). The errors
// name only what the client sent, never the configured hosts or ns values.
func (r *Router) Route(name, ns string) (Route, error) {
	if len(r.ups) == 0 {
		return Route{}, fmt.Errorf("no upstream is configured: %w", errdefs.ErrFailedPrecondition)
	}
	idx := -1
	if ns != "" {
		for i, u := range r.ups {
			for _, n := range u.NS {
				if strings.EqualFold(n, ns) {
					idx = i
				}
			}
		}
		if idx < 0 {
			return Route{}, fmt.Errorf("ns %q is not configured: %w", ns, errdefs.ErrPermissionDenied)
		}
		if !hasPrefix(name, r.ups[idx].LocalPrefix) && !r.ups[idx].AllowUnprefixed {
			return Route{}, notConfigured(name)
		}
		return Route{Upstream: idx, Repo: r.mapName(idx, name)}, nil
	}
	best := -1
	for i, u := range r.ups {
		if hasPrefix(name, u.LocalPrefix) && (best < 0 || len(u.LocalPrefix) > len(r.ups[best].LocalPrefix)) {
			best = i
		}
	}
	if best < 0 {
		for i, u := range r.ups {
			if u.AllowUnprefixed {
				return Route{Upstream: i, Repo: name}, nil
			}
		}
		return Route{}, notConfigured(name)
	}
	return Route{Upstream: best, Repo: r.mapName(best, name)}, nil
}

func notConfigured(name string) error {
	return fmt.Errorf("repository %q is not configured: %w", name, errdefs.ErrNotFound)
}

// Reachable reports whether the upstream repository repo of upstream i is one that
// Route can map a client name to: under the upstream's path (any name when it has
// none), or any name when it sets allow_unprefixed. The peer endpoint, which is
// given upstream repositories, refuses the others as Route refuses their names.
func (r *Router) Reachable(i int, repo string) bool {
	if i < 0 || i >= len(r.ups) {
		return false
	}
	u := r.ups[i]
	return u.AllowUnprefixed || u.Path == "" || hasPrefix(repo, u.Path)
}

// UpstreamByHost returns the index of the upstream whose URL host is host.
func (r *Router) UpstreamByHost(host string) (int, bool) {
	for i, u := range r.ups {
		if strings.EqualFold(hostOf(u.URL), host) {
			return i, true
		}
	}
	return 0, false
}

func (r *Router) mapName(i int, name string) string {
	u := r.ups[i]
	if !hasPrefix(name, u.LocalPrefix) {
		return name
	}
	rest := strings.TrimPrefix(name, u.LocalPrefix+"/")
	if u.Path == "" {
		return rest
	}
	return u.Path + "/" + rest
}

// hasPrefix matches at a path-component boundary: "system/deckhouse" is a prefix of
// "system/deckhouse/x" but not of "system/deckhousex" or of itself.
func hasPrefix(name, prefix string) bool {
	return prefix != "" && strings.HasPrefix(name, prefix+"/") && len(name) > len(prefix)+1
}

func hostOf(u string) string {
	s := u
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	return s
}
