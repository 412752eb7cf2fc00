package route

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

func TestRoute(t *testing.T) {
	t.Parallel()
	r := New([]conf.Upstream{
		{URL: "https://registry.example", LocalPrefix: "system/deckhouse", Path: "deckhouse/ce", NS: []string{"registry.example", "registry.d8-system.svc:5001"}},
		{URL: "https://mirror.example:5000", LocalPrefix: "mirror", NS: []string{"mirror.example:5000"}},
		{URL: "https://deep.example", LocalPrefix: "system/deckhouse/deep", Path: "d", NS: []string{"deep.example"}},
	})
	open := New([]conf.Upstream{
		{URL: "https://registry.example", LocalPrefix: "system/deckhouse", Path: "deckhouse/ce", NS: []string{"registry.example"}},
		{URL: "https://hub.example", LocalPrefix: "hub", NS: []string{"hub.example"}, AllowUnprefixed: true},
	})
	for _, tc := range []struct {
		name, repo, ns string
		open           bool // route with the router whose second upstream allows unprefixed names
		want           Route
		denied         bool
		unknown        bool
	}{
		{name: "alias", repo: "system/deckhouse/install", want: Route{0, "deckhouse/ce/install"}},
		{name: "alias nested", repo: "system/deckhouse/a/b", want: Route{0, "deckhouse/ce/a/b"}},
		{name: "prefix alone is not configured", repo: "system/deckhouse", unknown: true},
		{name: "prefix at a component boundary only", repo: "system/deckhousex/a", unknown: true},
		{name: "longest prefix wins", repo: "system/deckhouse/deep/x", want: Route{2, "d/x"}},
		{name: "empty path strips the prefix", repo: "mirror/app", want: Route{1, "app"}},
		{name: "no prefix is not configured", repo: "library/alpine", unknown: true},
		{name: "outside the alias with registryd's credentials", repo: "other/secret", unknown: true},
		{name: "ns picks the upstream", repo: "mirror/app", ns: "mirror.example:5000", want: Route{1, "app"}},
		{name: "ns with a name outside its prefix", repo: "app", ns: "mirror.example:5000", unknown: true},
		{name: "ns is case-insensitive", repo: "system/deckhouse/x", ns: "REGISTRY.example", want: Route{0, "deckhouse/ce/x"}},
		{name: "cluster image host as ns", repo: "system/deckhouse/x", ns: "registry.d8-system.svc:5001", want: Route{0, "deckhouse/ce/x"}},
		{name: "ns with another upstream's prefix", repo: "mirror/app", ns: "registry.example", unknown: true},
		{name: "allowed: no prefix goes to the upstream that allows it", open: true, repo: "library/alpine", want: Route{1, "library/alpine"}},
		{name: "allowed: its own prefix still maps", open: true, repo: "hub/library/alpine", want: Route{1, "library/alpine"}},
		{name: "allowed: another prefix wins", open: true, repo: "system/deckhouse/x", want: Route{0, "deckhouse/ce/x"}},
		{name: "allowed: by ns", open: true, repo: "library/alpine", ns: "hub.example", want: Route{1, "library/alpine"}},
		{name: "allowed elsewhere, not by this ns", open: true, repo: "library/alpine", ns: "registry.example", unknown: true},
		{name: "unknown ns is refused", repo: "library/alpine", ns: "docker.io", denied: true},
		{name: "unknown ns that looks close is refused", repo: "x", ns: "registry.example:443", denied: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := r
			if tc.open {
				rt = open
			}
			got, err := rt.Route(tc.repo, tc.ns)
			if tc.denied {
				if !errdefs.IsPermissionDenied(err) {
					t.Fatalf("Route(%q, %q): want permission denied, got %v, %v", tc.repo, tc.ns, got, err)
				}
				// The client's own ns and nothing that is configured.
				if want := fmt.Sprintf("ns %q is not configured: permission denied", tc.ns); err.Error() != want {
					t.Errorf("refusal %q, want %q", err, want)
				}
				return
			}
			if tc.unknown {
				if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "not configured") {
					t.Fatalf("Route(%q, %q): want not found, not configured; got %v, %v", tc.repo, tc.ns, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Route(%q, %q) = %v, %v; want %v", tc.repo, tc.ns, got, err, tc.want)
			}
		})
	}
	if i, ok := r.UpstreamByHost("mirror.example:5000"); !ok || i != 1 {
		t.Errorf("UpstreamByHost(mirror) = %d, %v", i, ok)
	}
	if _, ok := r.UpstreamByHost("evil.example"); ok {
		t.Error("UpstreamByHost accepted an unknown host")
	}
}

func TestReachable(t *testing.T) {
	t.Parallel()
	r := New([]conf.Upstream{
		{URL: "https://registry.example", LocalPrefix: "system/deckhouse", Path: "deckhouse/ce"},
		{URL: "https://mirror.example", LocalPrefix: "mirror"},
		{URL: "https://hub.example", LocalPrefix: "hub", Path: "library", AllowUnprefixed: true},
	})
	for _, tc := range []struct {
		i    int
		repo string
		want bool
	}{
		{0, "deckhouse/ce/install", true},
		{0, "deckhouse/ce", false},
		{0, "deckhouse/cex/install", false},
		{0, "other/secret", false},
		{1, "anything/at/all", true},
		{2, "library/alpine", true},
		{2, "other/secret", true},
		{3, "deckhouse/ce/install", false},
		{-1, "deckhouse/ce/install", false},
	} {
		if got := r.Reachable(tc.i, tc.repo); got != tc.want {
			t.Errorf("Reachable(%d, %q) = %v, want %v", tc.i, tc.repo, got, tc.want)
		}
	}
}

func TestRouteNoUpstream(t *testing.T) {
	t.Parallel()
	if _, err := New(nil).Route("x", ""); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("want failed precondition, got %v", err)
	}
}
