package server

import (
	"net/url"
	"testing"
)

func TestRewriteURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		in           string
		prefix, path string
		wantPath     string
		wantRawPath  string
		wantEscaped  string
		wantQuery    string
	}{
		{
			name: "manifest by tag", in: "/v2/system/deckhouse/install/manifests/v1.2",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/manifests/v1.2", wantEscaped: "/v2/deckhouse/ce/install/manifests/v1.2",
		},
		{
			name: "blob by digest", in: "/v2/system/deckhouse/install/blobs/sha256:abc",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/blobs/sha256:abc", wantEscaped: "/v2/deckhouse/ce/install/blobs/sha256:abc",
		},
		{
			name: "tags list keeps paging", in: "/v2/system/deckhouse/install/tags/list?n=10&last=v1",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/tags/list", wantEscaped: "/v2/deckhouse/ce/install/tags/list",
			wantQuery: "n=10&last=v1",
		},
		{
			name: "repository equal to the prefix", in: "/v2/system/deckhouse/manifests/v1",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/manifests/v1", wantEscaped: "/v2/deckhouse/ce/manifests/v1",
		},
		{
			name: "empty path maps to the root", in: "/v2/system/deckhouse/install/manifests/v1",
			prefix: "system/deckhouse", path: "",
			wantPath: "/v2/install/manifests/v1", wantEscaped: "/v2/install/manifests/v1",
		},
		{
			name: "ns dropped", in: "/v2/system/deckhouse/install/manifests/v1?ns=registry.d8-system.svc%3A5001",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/manifests/v1", wantEscaped: "/v2/deckhouse/ce/install/manifests/v1",
		},
		{
			name: "ns dropped, other parameters kept", in: "/v2/other/tags/list?ns=r.example&n=5",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/other/tags/list", wantEscaped: "/v2/other/tags/list", wantQuery: "n=5",
		},
		{
			name: "other repository unchanged", in: "/v2/library/alpine/manifests/3",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/library/alpine/manifests/3", wantEscaped: "/v2/library/alpine/manifests/3",
		},
		{
			name: "prefix must end at a component", in: "/v2/system/deckhousex/manifests/3",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/system/deckhousex/manifests/3", wantEscaped: "/v2/system/deckhousex/manifests/3",
		},
		{
			name: "base unchanged", in: "/v2/",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/", wantEscaped: "/v2/",
		},
		{
			name: "bare prefix unchanged", in: "/v2/system/deckhouse/",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/system/deckhouse/", wantEscaped: "/v2/system/deckhouse/",
		},
		{
			name: "raw path rewritten with the path", in: "/v2/system/deckhouse/install/manifests/a%2Fb",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/manifests/a/b", wantRawPath: "/v2/deckhouse/ce/install/manifests/a%2Fb",
			wantEscaped: "/v2/deckhouse/ce/install/manifests/a%2Fb",
		},
		{
			name: "escaped prefix still matches the path", in: "/v2/system%2Fdeckhouse/install/manifests/v1",
			prefix: "system/deckhouse", path: "deckhouse/ce",
			wantPath: "/v2/deckhouse/ce/install/manifests/v1", wantEscaped: "/v2/deckhouse/ce/install/manifests/v1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in, err := url.Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			orig := *in
			got := rewriteURL(in, tt.prefix, tt.path)
			if got.Path != tt.wantPath || got.RawPath != tt.wantRawPath || got.EscapedPath() != tt.wantEscaped {
				t.Errorf("rewriteURL(%q) path=%q raw=%q escaped=%q, want %q %q %q",
					tt.in, got.Path, got.RawPath, got.EscapedPath(), tt.wantPath, tt.wantRawPath, tt.wantEscaped)
			}
			if got.Query().Encode() != mustQuery(t, tt.wantQuery).Encode() {
				t.Errorf("rewriteURL(%q) query=%q, want %q", tt.in, got.RawQuery, tt.wantQuery)
			}
			if *in != orig {
				t.Errorf("rewriteURL modified its input: %+v, was %+v", *in, orig)
			}
		})
	}
}

func mustQuery(t *testing.T, q string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRequestKind(t *testing.T) {
	t.Parallel()
	tests := []struct{ path, want string }{
		{"/v2/", kindBase},
		{"/v2", kindBase},
		{"/healthz", kindHealth},
		{"/readyz", kindHealth},
		{"/v2/a/b/manifests/v1", kindManifest},
		{"/v2/a/blobs/sha256:abc", kindBlob},
		{"/v2/a/tags/list", kindTags},
		{"/v2/manifests/blobs/sha256:abc", kindBlob},
		{"/v2/a/blobs/uploads/", kindOther},
		{"/v2/a/blobs/uploads/1234", kindOther},
		{"/v2/_catalog", kindOther},
		{"/v2/a/manifests/", kindOther},
		{"/metrics", kindOther},
	}
	for _, tt := range tests {
		if got := requestKind(tt.path); got != tt.want {
			t.Errorf("requestKind(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}
