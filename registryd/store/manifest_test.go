package store

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestManifests(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := newMetrics()
			b := newBackend(t, name)
			s := b.open(t, WithMetrics(m))
			amd, amdBlobs := putImage(t, s, 1, randomBytes(1, 300), randomBytes(2, 400))
			arm, armBlobs := putImage(t, s, 2, randomBytes(3, 500))
			idx := putIndex(t, s, amd, arm)

			s.mu.Lock()
			gotRefs := map[digest.Digest][]digest.Digest{
				amd: s.entries[amd].refs, arm: s.entries[arm].refs, idx: s.entries[idx].refs,
			}
			s.mu.Unlock()
			wantRefs := map[digest.Digest][]digest.Digest{
				amd: sorted(amdBlobs), arm: sorted(armBlobs), idx: sorted([]digest.Digest{amd, arm}),
			}
			for d, want := range wantRefs {
				if !slices.Equal(gotRefs[d], want) {
					t.Errorf("refs of %s = %v, want %v", d, gotRefs[d], want)
				}
			}

			mt, payload, err := s.GetManifest(t.Context(), idx)
			if err != nil || mt != ocispec.MediaTypeImageIndex || digest.FromBytes(payload) != idx {
				t.Fatalf("GetManifest = %q, %d bytes, %v", mt, len(payload), err)
			}
			// A manifest is a blob too.
			if size, err := s.StatBlob(t.Context(), amd); err != nil || size == 0 {
				t.Fatalf("StatBlob(manifest) = %d, %v", size, err)
			}
			if gauge(t, m.StoreBytes) != float64(s.Size()) {
				t.Errorf("StoreBytes = %v, Size = %d", gauge(t, m.StoreBytes), s.Size())
			}

			// Idempotent.
			_, payload, _ = s.GetManifest(t.Context(), amd)
			size := s.Size()
			if err := s.PutManifest(t.Context(), amd, ocispec.MediaTypeImageManifest, payload); err != nil {
				t.Fatal(err)
			}
			if s.Size() != size {
				t.Fatalf("Size changed by a repeated put: %d -> %d", size, s.Size())
			}

			// A corrupt manifest is detected on read and removed.
			bad := []byte(strings.Replace(string(payload), "schemaVersion", "schemaVersioN", 1))
			b.rewrite(t, s, amd, bad)
			if _, _, err := s.GetManifest(t.Context(), amd); !errdefs.IsDataLoss(err) {
				t.Fatalf("GetManifest(corrupt) = %v, want data loss", err)
			}
			if n := counter(t, m.VerifyFailures.WithLabelValues("store")); n != 1 {
				t.Fatalf("VerifyFailures = %v", n)
			}
			if _, _, err := s.GetManifest(t.Context(), amd); !errdefs.IsNotFound(err) {
				t.Fatalf("GetManifest after quarantine = %v, want not found", err)
			}
		})
	}
}

func sorted(ds []digest.Digest) []digest.Digest {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds
}

func TestPutManifestInvalid(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "inmemory").open(t)
	good := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"` +
		digest.FromString("c").String() + `","size":1},"layers":[]}`)
	tests := []struct {
		name      string
		d         digest.Digest
		mediaType string
		payload   []byte
		want      string // media type stored, or "" for an invalid argument
	}{
		{"ok", digest.FromBytes(good), ocispec.MediaTypeImageManifest, good, ocispec.MediaTypeImageManifest},
		{"media type from payload", digest.FromBytes(good), "", good, ocispec.MediaTypeImageManifest},
		{"wrong digest", digest.FromString("other"), ocispec.MediaTypeImageManifest, good, ""},
		{"bad digest", "sha256:zz", ocispec.MediaTypeImageManifest, good, ""},
		{"not JSON", digest.FromString("nope"), ocispec.MediaTypeImageManifest, []byte("nope"), ""},
		{"bad reference", digest.FromString(`{"layers":[{"digest":"sha256:../x"}]}`), ocispec.MediaTypeImageManifest,
			[]byte(`{"layers":[{"digest":"sha256:../x"}]}`), ""},
		{"no media type", digest.FromString(`{"layers":[]}`), "", []byte(`{"layers":[]}`), ""},
		{"bad media type", digest.FromBytes(good), "a b\n", good, ""},
	}
	for _, tt := range tests {
		err := s.PutManifest(t.Context(), tt.d, tt.mediaType, tt.payload)
		if tt.want == "" {
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("%s: PutManifest = %v, want invalid argument", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: PutManifest = %v", tt.name, err)
			continue
		}
		if mt, _, err := s.GetManifest(t.Context(), tt.d); err != nil || mt != tt.want {
			t.Errorf("%s: GetManifest = %q, %v; want %q", tt.name, mt, err, tt.want)
		}
	}
}

func TestTags(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, name)
			s := b.open(t)
			validated := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
			tags := []struct {
				upstream, repo, tag string
				t                   Tag
			}{
				{"registry.example", "deckhouse/ce", "v1.2.3", Tag{Digest: digest.FromString("a"), MediaType: ocispec.MediaTypeImageIndex, Size: 10, Validated: validated}},
				{"127.0.0.1:5000", "library/alpine", "latest", Tag{Digest: digest.FromString("b"), Size: 20, Validated: validated}},
				{"[::1]:5000", "a/b/c", "x_Y.z-1", Tag{Digest: digest.FromString("c"), Size: 30, Validated: validated}},
			}
			for _, tt := range tags {
				if err := s.PutTag(t.Context(), tt.upstream, tt.repo, tt.tag, tt.t); err != nil {
					t.Fatalf("PutTag(%s %s %s): %v", tt.upstream, tt.repo, tt.tag, err)
				}
			}
			check := func(s *Store) {
				t.Helper()
				for _, tt := range tags {
					got, err := s.GetTag(t.Context(), tt.upstream, tt.repo, tt.tag)
					if err != nil || got != tt.t {
						t.Errorf("GetTag(%s %s %s) = %+v, %v; want %+v", tt.upstream, tt.repo, tt.tag, got, err, tt.t)
					}
				}
				if _, err := s.GetTag(t.Context(), "registry.example", "deckhouse/ce", "nope"); !errdefs.IsNotFound(err) {
					t.Errorf("GetTag(absent) = %v, want not found", err)
				}
			}
			check(s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			check(b.open(t))
			// Another master wrote it: not in this store's memory, read from storage.
			other := b.open(t)
			up := Tag{Digest: digest.FromString("new"), Size: 1, Validated: validated}
			if err := other.PutTag(t.Context(), "registry.example", "deckhouse/ce", "fresh", up); err != nil {
				t.Fatal(err)
			}
			if got, err := b.open(t).GetTag(t.Context(), "registry.example", "deckhouse/ce", "fresh"); err != nil || got != up {
				t.Errorf("GetTag of a tag stored by another store = %+v, %v", got, err)
			}
		})
	}
}

// Names that could escape the storage root, or that the grammar forbids, are refused.
func TestTagNamesRejected(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "filesystem").open(t)
	tag := Tag{Digest: digest.FromString("a")}
	tests := []struct{ upstream, repo, tag string }{
		{"registry.example", "../x", "latest"},
		{"registry.example", "a/../../b", "latest"},
		{"registry.example", "/abs", "latest"},
		{"registry.example", "a//b", "latest"},
		{"registry.example", "Upper/case", "latest"},
		{"registry.example", "", "latest"},
		{"registry.example", "a/_tags", "latest"},
		{"registry.example", strings.Repeat("a/", 128) + "a", "latest"},
		{"registry.example", "repo", "../../etc"},
		{"registry.example", "repo", ".hidden"},
		{"registry.example", "repo", "a/b"},
		{"registry.example", "repo", ""},
		{"registry.example", "repo", strings.Repeat("t", 129)},
		{"", "repo", "latest"},
	}
	for _, tt := range tests {
		if err := s.PutTag(t.Context(), tt.upstream, tt.repo, tt.tag, tag); !errdefs.IsInvalidArgument(err) {
			t.Errorf("PutTag(%q, %q, %q) = %v, want invalid argument", tt.upstream, tt.repo, tt.tag, err)
		}
		if _, err := s.GetTag(t.Context(), tt.upstream, tt.repo, tt.tag); !errdefs.IsInvalidArgument(err) {
			t.Errorf("GetTag(%q, %q, %q) = %v, want invalid argument", tt.upstream, tt.repo, tt.tag, err)
		}
	}
	if err := s.PutTag(t.Context(), "registry.example", "repo", "latest", Tag{Digest: "sha256:../x"}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("PutTag(bad digest) = %v", err)
	}
	// Odd upstream names are hashed into one path component.
	for _, up := range []string{"../..", "a/b", "[::1]:5000"} {
		p, err := tagPath(tagKey{upstream: up, repo: "r", tag: "t"})
		if err != nil {
			t.Fatalf("tagPath(%q): %v", up, err)
		}
		if !strings.HasPrefix(p, tagsDir+"/_") || strings.Count(p, "/") != 6 || strings.Contains(p, "..") {
			t.Errorf("tagPath(%q) = %s", up, p)
		}
	}
}
