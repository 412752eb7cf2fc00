package store

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

const linkHost = "registry.example"

func TestLinks(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := newBackend(t, name).open(t)
			blob := commit(t, s, randomBytes(1, 500))
			img, refs := putImage(t, s, 2, randomBytes(3, 300))

			if s.Linked(linkHost, "deckhouse/ce/a", blob) {
				t.Fatal("a blob is linked before anything linked it")
			}
			if err := s.Link(linkHost, "deckhouse/ce/a", blob); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				host, repo string
				want       bool
			}{
				{linkHost, "deckhouse/ce/a", true},
				{linkHost, "deckhouse/ce/b", false},
				{linkHost, "deckhouse/ce", false},
				{"mirror.example", "deckhouse/ce/a", false},
			} {
				if got := s.Linked(tc.host, tc.repo, blob); got != tc.want {
					t.Errorf("Linked(%s, %s) = %v, want %v", tc.host, tc.repo, got, tc.want)
				}
			}

			// A manifest brings its references along; another repository gets none.
			if err := s.LinkManifest(linkHost, "deckhouse/ce/img", img); err != nil {
				t.Fatal(err)
			}
			for _, d := range append([]digest.Digest{img}, refs...) {
				if !s.Linked(linkHost, "deckhouse/ce/img", d) {
					t.Errorf("%s is not linked with the manifest that references it", d)
				}
				if s.Linked(linkHost, "deckhouse/ce/a", d) {
					t.Errorf("%s is linked to a repository that never had it", d)
				}
			}

			for _, bad := range []struct{ host, repo string }{
				{"", "deckhouse/ce/a"}, {linkHost, "Deckhouse/a"}, {linkHost, "a//b"}, {linkHost, "../a"},
			} {
				if err := s.Link(bad.host, bad.repo, blob); !errdefs.IsInvalidArgument(err) {
					t.Errorf("Link(%q, %q) = %v, want invalid argument", bad.host, bad.repo, err)
				}
			}
			if err := s.Link(linkHost, "deckhouse/ce/a", "sha256:nope"); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Link of a bad digest = %v, want invalid argument", err)
			}
		})
	}
}

// TestLinksSurviveRestart: links are kept by a clean close, by a crash after the
// index was last written, and are lost (never invented) with the index.
func TestLinksSurviveRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		stop func(t *testing.T, b *backend, s *Store)
		kept bool
	}{
		{"clean close", func(t *testing.T, b *backend, s *Store) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"kill -9 after an index write", func(t *testing.T, b *backend, s *Store) {
			if err := s.save(t.Context(), false); err != nil {
				t.Fatal(err)
			}
			s.kill()
		}, true},
		{"index deleted", func(t *testing.T, b *backend, s *Store) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.drv.Delete(t.Context(), s.indexPath); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, name := range backendNames {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				b := newBackend(t, name)
				s := b.open(t)
				blob := commit(t, s, randomBytes(1, 500))
				notStored := digest.FromBytes([]byte("not stored"))
				for _, d := range []digest.Digest{blob, notStored} {
					if err := s.Link(linkHost, "deckhouse/ce/a", d); err != nil {
						t.Fatal(err)
					}
				}
				tt.stop(t, b, s)

				s2 := b.open(t)
				if got := s2.Linked(linkHost, "deckhouse/ce/a", blob); got != tt.kept {
					t.Errorf("after restart Linked = %v, want %v", got, tt.kept)
				}
				if s2.Linked(linkHost, "deckhouse/ce/b", blob) {
					t.Error("after restart a link appeared for another repository")
				}
				if s2.Linked(linkHost, "deckhouse/ce/a", notStored) {
					t.Error("the link of content that was never stored survived the restart")
				}
			})
		}
	}
}

// TestLinksGoWithContent: evicting a blob, or finding it gone, drops its links; the
// same bytes stored again are not linked until something links them again.
func TestLinksGoWithContent(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			clk := newClock()
			b := newBackend(t, name)
			s := b.open(t, WithClock(clk.Now))
			old := randomBytes(1, 500)
			oldBlob := commit(t, s, old)
			clk.Advance(2 * time.Hour)
			kept := commit(t, s, randomBytes(2, 500))
			for _, d := range []digest.Digest{oldBlob, kept} {
				if err := s.Link(linkHost, "deckhouse/ce/a", d); err != nil {
					t.Fatal(err)
				}
			}
			if st, err := s.Evict(t.Context(), 0, time.Hour); err != nil || st.Blobs != 1 {
				t.Fatalf("Evict = %+v, %v; want one blob evicted", st, err)
			}
			if s.Linked(linkHost, "deckhouse/ce/a", oldBlob) {
				t.Error("an evicted blob is still linked")
			}
			if !s.Linked(linkHost, "deckhouse/ce/a", kept) {
				t.Error("a kept blob lost its link")
			}
			commit(t, s, old)
			if s.Linked(linkHost, "deckhouse/ce/a", oldBlob) {
				t.Error("a blob stored again is linked without a new link")
			}

			// The kept blob disappears from storage; reading it finds out.
			if b.mem != nil {
				if err := b.mem.Delete(t.Context(), blobPath(kept)); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Remove(s.fsPath(blobPath(kept))); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.OpenBlob(t.Context(), kept); !errdefs.IsNotFound(err) {
				t.Fatalf("OpenBlob of a removed blob: %v", err)
			}
			if s.Linked(linkHost, "deckhouse/ce/a", kept) {
				t.Error("a blob found gone is still linked")
			}
		})
	}
}

// TestTagsLink: at start, stored tags link their manifests and what those reach to
// the tags' repositories, whatever links the index had.
func TestTagsLink(t *testing.T) {
	t.Parallel()
	for _, name := range backendNames {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/crash=%v", name, crash), func(t *testing.T) {
				t.Parallel()
				b := newBackend(t, name)
				s := b.open(t)
				img, refs := putImage(t, s, 1, randomBytes(2, 300))
				idx := putIndex(t, s, img)
				loose := commit(t, s, randomBytes(3, 100))
				if err := s.PutTag(t.Context(), linkHost, "deckhouse/ce/a", "v1", Tag{Digest: idx, Size: 1}); err != nil {
					t.Fatal(err)
				}
				if s.Linked(linkHost, "deckhouse/ce/a", idx) {
					t.Fatal("a tag linked its manifest before a restart")
				}
				if crash {
					s.kill()
				} else if err := s.Close(); err != nil {
					t.Fatal(err)
				}

				s2 := b.open(t)
				for _, d := range append([]digest.Digest{idx, img}, refs...) {
					if !s2.Linked(linkHost, "deckhouse/ce/a", d) {
						t.Errorf("%s, reached from tag v1, is not linked to its repository", d)
					}
					if s2.Linked(linkHost, "deckhouse/ce/b", d) {
						t.Errorf("%s is linked to a repository without the tag", d)
					}
				}
				if s2.Linked(linkHost, "deckhouse/ce/a", loose) {
					t.Error("a blob no tag reaches is linked")
				}
			})
		}
	}
}
