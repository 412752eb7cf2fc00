package peers

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/registryd/metrics"
)

// lookups is the PeerLookups counter of kind and result.
func lookups(t *testing.T, m *metrics.Metrics, kind, result string) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.PeerLookups.WithLabelValues(kind, result).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// TestLookups asks a test peer for tags and manifests: answers are parsed and
// manifests verified; an unknown one is ErrNotFound and keeps the peer up; an answer
// that cannot be used is the peer's failure and marks it down.
func TestLookups(t *testing.T) {
	t.Parallel()
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	d := digest.FromBytes(manifest)
	other := digest.FromString("something else")
	validated := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.Header.Get("Authorization") != "Bearer "+testToken || r.Header.Get(HeaderPeer) != "https://127.0.0.1:1" ||
			q.Get("upstream") != "registry.example" || q.Get("repo") != "deckhouse/ce/app" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		switch {
		case r.URL.Path == TagPath && q.Get("tag") == "v1":
			_ = json.NewEncoder(w).Encode(TagAnswer{Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(manifest)), Validated: validated})
		case r.URL.Path == TagPath && q.Get("tag") == "garbage":
			_, _ = w.Write([]byte(`{"digest":"sha256:nope"}`))
		case r.URL.Path == ManifestPath && q.Get("digest") == d.String():
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			_, _ = w.Write(manifest)
		case r.URL.Path == ManifestPath && q.Get("digest") == other.String():
			_, _ = w.Write(manifest) // not other's payload
		default:
			http.NotFound(w, r)
		}
	})

	t.Run("answers", func(t *testing.T) {
		t.Parallel()
		srv, cfg := tlsPeer(t, handler)
		m := metrics.New()
		s := mustNew(t, cfg, WithMetrics(m))
		p := Peer{URL: srv.URL, Weight: 1}
		a, err := s.Tag(t.Context(), p, "registry.example", "deckhouse/ce/app", "v1")
		if err != nil || a.Digest != d || a.Size != int64(len(manifest)) || !a.Validated.Equal(validated) {
			t.Fatalf("Tag = %+v, %v; want digest %s validated %s", a, err, d, validated)
		}
		mt, payload, err := s.Manifest(t.Context(), p, "registry.example", "deckhouse/ce/app", d, 1<<20)
		if err != nil || string(payload) != string(manifest) || mt != "application/vnd.oci.image.manifest.v1+json" {
			t.Fatalf("Manifest = %q, %q, %v", mt, payload, err)
		}
		if _, err := s.Tag(t.Context(), p, "registry.example", "deckhouse/ce/app", "unknown"); !errdefs.IsNotFound(err) {
			t.Errorf("an unknown tag: %v, want not found", err)
		}
		if _, _, err := s.Manifest(t.Context(), p, "registry.example", "deckhouse/ce/app", digest.FromString("unknown"), 1<<20); !errdefs.IsNotFound(err) {
			t.Errorf("an unknown manifest: %v, want not found", err)
		}
		if !isUp(s, srv.URL) {
			t.Error("definite answers marked the peer down")
		}
		for _, c := range []struct {
			kind, result string
			want         float64
		}{{"tag", "ok", 1}, {"tag", "unknown", 1}, {"manifest", "ok", 1}, {"manifest", "unknown", 1}} {
			if got := lookups(t, m, c.kind, c.result); got != c.want {
				t.Errorf("lookups {%s, %s} = %v, want %v", c.kind, c.result, got, c.want)
			}
		}
	})

	for _, tt := range []struct {
		name string
		ask  func(s *Set, p Peer) error
	}{
		{"an unusable tag answer", func(s *Set, p Peer) error {
			_, err := s.Tag(t.Context(), p, "registry.example", "deckhouse/ce/app", "garbage")
			return err
		}},
		{"a manifest that does not match its digest", func(s *Set, p Peer) error {
			_, _, err := s.Manifest(t.Context(), p, "registry.example", "deckhouse/ce/app", other, 1<<20)
			return err
		}},
		{"a manifest above the limit", func(s *Set, p Peer) error {
			_, _, err := s.Manifest(t.Context(), p, "registry.example", "deckhouse/ce/app", d, 10)
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := tlsPeer(t, handler)
			s := mustNew(t, cfg)
			if err := tt.ask(s, Peer{URL: srv.URL, Weight: 1}); !errdefs.IsUnavailable(err) {
				t.Errorf("got %v, want unavailable", err)
			}
			if isUp(s, srv.URL) {
				t.Error("the peer is still up")
			}
		})
	}
}
