package route

import (
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
	for _, tc := range []struct {
		name, repo, ns string
		want           Route
		denied         bool
	}{
		{name: "alias", repo: "system/deckhouse/install", want: Route{0, "deckhouse/ce/install"}},
		{name: "alias nested", repo: "system/deckhouse/a/b", want: Route{0, "deckhouse/ce/a/b"}},
		{name: "prefix alone is not aliased", repo: "system/deckhouse", want: Route{0, "system/deckhouse"}},
		{name: "prefix at a component boundary only", repo: "system/deckhousex/a", want: Route{0, "system/deckhousex/a"}},
		{name: "longest prefix wins", repo: "system/deckhouse/deep/x", want: Route{2, "d/x"}},
		{name: "empty path strips the prefix", repo: "mirror/app", want: Route{1, "app"}},
		{name: "no prefix goes to the first upstream", repo: "library/alpine", want: Route{0, "library/alpine"}},
		{name: "ns picks the upstream", repo: "app", ns: "mirror.example:5000", want: Route{1, "app"}},
		{name: "ns is case-insensitive", repo: "system/deckhouse/x", ns: "REGISTRY.example", want: Route{0, "deckhouse/ce/x"}},
		{name: "cluster image host as ns", repo: "system/deckhouse/x", ns: "registry.d8-system.svc:5001", want: Route{0, "deckhouse/ce/x"}},
		{name: "ns with another upstream's prefix keeps the name", repo: "mirror/app", ns: "registry.example", want: Route{0, "mirror/app"}},
		{name: "unknown ns is refused", repo: "library/alpine", ns: "docker.io", denied: true},
		{name: "unknown ns that looks close is refused", repo: "x", ns: "registry.example:443", denied: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := r.Route(tc.repo, tc.ns)
			if tc.denied {
				if !errdefs.IsPermissionDenied(err) {
					t.Fatalf("Route(%q, %q): want permission denied, got %v, %v", tc.repo, tc.ns, got, err)
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

func TestRouteNoUpstream(t *testing.T) {
	t.Parallel()
	if _, err := New(nil).Route("x", ""); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("want failed precondition, got %v", err)
	}
}
