package server

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/space"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/test/registrytest"
)

// The fill engine keeps the spool's disk space through the store.
var _ fill.Space = (*store.Store)(nil)

// TestReadyzStorage takes the storage's filesystem below storage.min_free: /readyz
// stays 200, says why in its body, and hopless_registryd_storage_writable is 0; with
// room again both say so.
func TestReadyzStorage(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "8m")
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	cfg := env.Config
	cfg.Storage.Root = filepath.Join(dir, "root")
	cfg.Storage.Spool = filepath.Join(dir, "root", conf.DefaultSpoolDir)
	cfg.Storage.MinFree = conf.Space{Percent: 25}
	s, _ := newServer(t, cfg)

	writable := func() float64 {
		var m dto.Metric
		if err := s.metrics.StorageWritable.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	if w := serve(s, http.MethodGet, "/readyz"); w.Code != http.StatusOK || w.Body.String() != "ok\n" {
		t.Fatalf("/readyz with room: %d %q", w.Code, w.Body)
	}
	u, err := space.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, u.Avail-u.Total/8), 0o600); err != nil {
		t.Fatal(err)
	}
	w := serve(s, http.MethodGet, "/readyz")
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Body.String(), "ok\n") ||
		!strings.Contains(w.Body.String(), "below storage.min_free 25%") {
		t.Errorf("/readyz below the floor: %d %q, want 200, ok and the reason", w.Code, w.Body)
	}
	if v := writable(); v != 0 {
		t.Errorf("storage_writable below the floor = %v, want 0", v)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if w := serve(s, http.MethodGet, "/readyz"); w.Code != http.StatusOK || w.Body.String() != "ok\n" {
		t.Errorf("/readyz with room again: %d %q", w.Code, w.Body)
	}
	if v := writable(); v != 1 {
		t.Errorf("storage_writable with room again = %v, want 1", v)
	}
}

// TestReadyzRebuilding starts on storage whose index must be rebuilt and whose walk
// fails (a symbolic link to itself cannot be stat'ed), so that the rebuild goes on
// retrying: /readyz stays 200 and says so, and hopless_registryd_index_rebuilding is 1.
func TestReadyzRebuilding(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	cfg := env.Config
	loop := filepath.Join(cfg.Storage.Root, "hopless", "blobs", "loop")
	if err := os.MkdirAll(filepath.Dir(loop), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("loop", loop); err != nil {
		t.Fatal(err)
	}
	s, _ := newServer(t, cfg)
	w := serve(s, http.MethodGet, "/readyz")
	if w.Code != http.StatusOK || !strings.HasPrefix(w.Body.String(), "ok\n") ||
		!strings.Contains(w.Body.String(), "index is being rebuilt") {
		t.Errorf("/readyz while the index is rebuilt: %d %q, want 200, ok and the reason", w.Code, w.Body)
	}
	var m dto.Metric
	if err := s.metrics.IndexRebuilding.Write(&m); err != nil {
		t.Fatal(err)
	}
	if v := m.GetGauge().GetValue(); v != 1 {
		t.Errorf("index_rebuilding = %v, want 1", v)
	}
}
