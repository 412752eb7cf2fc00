package route

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// repoRE is the OCI repository-name grammar, as cache.ValidName checks it (route
// cannot import cache).
var repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

// FuzzRoute checks that Route never panics, chooses only a configured upstream (one
// listing ns when ns is given), maps a valid client name to a valid upstream
// repository that Reachable accepts, and refuses with an error that names what the
// client sent and nothing configured.
func FuzzRoute(f *testing.F) {
	ups := []conf.Upstream{
		{URL: "https://registry.example", LocalPrefix: "system/deckhouse", Path: "deckhouse/ce", NS: []string{"registry.example", "registry.d8-system.svc:5001"}},
		{URL: "https://mirror.example:5000", LocalPrefix: "mirror", NS: []string{"mirror.example:5000"}},
		{URL: "https://deep.example", LocalPrefix: "system/deckhouse/deep", Path: "d", NS: []string{"deep.example"}},
	}
	openUps := []conf.Upstream{
		{URL: "https://registry.example", LocalPrefix: "system/deckhouse", Path: "deckhouse/ce", NS: []string{"registry.example"}},
		{URL: "https://hub.example", LocalPrefix: "hub", NS: []string{"hub.example"}, AllowUnprefixed: true},
	}
	routers := [2]*Router{New(ups), New(openUps)}
	configs := [2][]conf.Upstream{ups, openUps}

	// The cases of TestRoute.
	for _, s := range []struct {
		name, ns string
		open     bool
	}{
		{"system/deckhouse/install", "", false},
		{"system/deckhouse/a/b", "", false},
		{"system/deckhouse", "", false},
		{"system/deckhousex/a", "", false},
		{"system/deckhouse/deep/x", "", false},
		{"mirror/app", "", false},
		{"library/alpine", "", false},
		{"mirror/app", "mirror.example:5000", false},
		{"app", "mirror.example:5000", false},
		{"system/deckhouse/x", "REGISTRY.example", false},
		{"system/deckhouse/x", "registry.d8-system.svc:5001", false},
		{"mirror/app", "registry.example", false},
		{"library/alpine", "", true},
		{"hub/library/alpine", "", true},
		{"library/alpine", "hub.example", true},
		{"library/alpine", "registry.example", true},
		{"library/alpine", "docker.io", false},
		{"x", "registry.example:443", false},
		{"system/deckhouse/../../etc", "", true},
		{"system/deckhouse/", "", false},
		{"system/deckhouse//x", "registry.example", false},
		{"system/deckhouse/x\r\nHost: evil", "", false},
	} {
		f.Add(s.name, s.ns, s.open)
	}

	f.Fuzz(func(t *testing.T, name, ns string, open bool) {
		i := 0
		if open {
			i = 1
		}
		r, cfg := routers[i], configs[i]
		got, err := r.Route(name, ns)
		if err != nil {
			switch {
			case errdefs.IsPermissionDenied(err):
				if ns == "" || err.Error() != fmt.Sprintf("ns %q is not configured: permission denied", ns) {
					t.Fatalf("Route(%q, %q): refusal %q does not name the ns as sent", name, ns, err)
				}
			case errdefs.IsNotFound(err):
				if err.Error() != fmt.Sprintf("repository %q is not configured: not found", name) {
					t.Fatalf("Route(%q, %q): refusal %q does not name the repository as sent", name, ns, err)
				}
			default:
				t.Fatalf("Route(%q, %q): unexpected error %v", name, ns, err)
			}
			return
		}
		if got.Upstream < 0 || got.Upstream >= len(cfg) {
			t.Fatalf("Route(%q, %q) = upstream %d of %d", name, ns, got.Upstream, len(cfg))
		}
		u := cfg[got.Upstream]
		if ns != "" && !listsNS(u, ns) {
			t.Fatalf("Route(%q, %q) chose upstream %d, which does not list the ns", name, ns, got.Upstream)
		}
		inPrefix := under(name, u.LocalPrefix)
		switch {
		case inPrefix && u.Path != "":
			if got.Repo != u.Path+"/"+strings.TrimPrefix(name, u.LocalPrefix+"/") {
				t.Fatalf("Route(%q, %q) = %q, not under path %q", name, ns, got.Repo, u.Path)
			}
		case inPrefix:
			if got.Repo != strings.TrimPrefix(name, u.LocalPrefix+"/") {
				t.Fatalf("Route(%q, %q) = %q, want the prefix stripped", name, ns, got.Repo)
			}
		case !u.AllowUnprefixed:
			t.Fatalf("Route(%q, %q) = %v: outside the prefix of an upstream that does not allow it", name, ns, got)
		case got.Repo != name:
			t.Fatalf("Route(%q, %q) = %q, want the unprefixed name unchanged", name, ns, got.Repo)
		}
		if ns == "" {
			for j, o := range cfg {
				if under(name, o.LocalPrefix) && (!inPrefix || len(o.LocalPrefix) > len(u.LocalPrefix)) {
					t.Fatalf("Route(%q) chose upstream %d over %d, whose prefix %q matches better", name, got.Upstream, j, o.LocalPrefix)
				}
			}
		}
		if !r.Reachable(got.Upstream, got.Repo) {
			t.Fatalf("Route(%q, %q) = %v, which Reachable refuses", name, ns, got)
		}
		// Callers validate the name first; a valid name maps to a valid repository.
		if repoRE.MatchString(name) && !repoRE.MatchString(got.Repo) {
			t.Fatalf("Route(%q, %q) mapped a valid name to invalid repository %q", name, ns, got.Repo)
		}
		if repoRE.MatchString(name) && (strings.Contains(got.Repo, "..") || strings.Contains(got.Repo, "//")) {
			t.Fatalf("Route(%q, %q) = %q", name, ns, got.Repo)
		}
	})
}

func listsNS(u conf.Upstream, ns string) bool {
	for _, n := range u.NS {
		if strings.EqualFold(n, ns) {
			return true
		}
	}
	return false
}

func under(name, prefix string) bool {
	return strings.HasPrefix(name, prefix+"/") && len(name) > len(prefix)+1
}
