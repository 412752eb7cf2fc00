package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestWritesRejected(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, testConfig(t, fakeUpstream(t, nil).URL))

	tests := []struct{ method, path string }{
		{http.MethodPut, "/v2/system/deckhouse/install/manifests/v1"},
		{http.MethodPut, "/v2/library/alpine/manifests/3"},
		{http.MethodPost, "/v2/system/deckhouse/install/blobs/uploads/"},
		{http.MethodPatch, "/v2/install/blobs/uploads/0123"},
		{http.MethodDelete, "/v2/install/manifests/sha256:0123"},
		{http.MethodDelete, "/v2/install/blobs/sha256:0123"},
		{http.MethodPost, "/v2/"},
		{http.MethodDelete, "/v2"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			w := httptest.NewRecorder()
			s.handler.ServeHTTP(w, httptest.NewRequest(tt.method, tt.path, strings.NewReader("x")))
			if w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("status %d, want 405; body %q", w.Code, w.Body)
			}
			if got := w.Header().Get("Allow"); got != "GET, HEAD" {
				t.Errorf("Allow %q, want \"GET, HEAD\"", got)
			}
			var body struct {
				Errors []struct{ Code, Message string }
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q is not JSON: %v", w.Body, err)
			}
			if len(body.Errors) != 1 || body.Errors[0].Code != "UNSUPPORTED" ||
				body.Errors[0].Message != "registryd is a read-only pull-through cache" {
				t.Errorf("body %q, want one UNSUPPORTED error", w.Body)
			}
		})
	}
}

func TestReadsPassThrough(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, testConfig(t, fakeUpstream(t, nil).URL))

	w := httptest.NewRecorder()
	s.handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v2/", nil))
	if w.Code != http.StatusOK || w.Header().Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/: status %d headers %v, want 200 from distribution", w.Code, w.Header())
	}
	// The fake upstream has nothing, so distribution answers with a registry error.
	w = httptest.NewRecorder()
	s.handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v2/system/deckhouse/install/manifests/v1?ns=registry.example", nil))
	if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "MANIFEST_UNKNOWN") {
		t.Fatalf("GET manifest: status %d body %q, want 404 MANIFEST_UNKNOWN", w.Code, w.Body)
	}
	if got := counterValue(t, s.metrics.HTTPRequests.WithLabelValues("GET", kindManifest, "404")); got != 1 {
		t.Errorf("manifest 404 counter = %v, want 1", got)
	}
	if got := counterValue(t, s.metrics.HTTPResponseBytes.WithLabelValues(kindManifest)); got != float64(w.Body.Len()) {
		t.Errorf("manifest bytes counter = %v, want %d", got, w.Body.Len())
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		path     string
		breakFS  func(t *testing.T, root string)
		wantCode int
		wantBody string
	}{
		{name: "liveness", path: "/healthz", wantCode: http.StatusOK, wantBody: "ok"},
		{name: "ready", path: "/readyz", wantCode: http.StatusOK, wantBody: "ok"},
		{
			name: "liveness ignores storage", path: "/healthz",
			breakFS:  func(t *testing.T, root string) { mustRemove(t, root) },
			wantCode: http.StatusOK, wantBody: "ok",
		},
		{
			name: "storage root missing", path: "/readyz",
			breakFS:  func(t *testing.T, root string) { mustRemove(t, root) },
			wantCode: http.StatusServiceUnavailable, wantBody: "no such file or directory",
		},
		{
			name: "storage root is a file", path: "/readyz",
			breakFS: func(t *testing.T, root string) {
				mustRemove(t, root)
				if err := os.WriteFile(root, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantCode: http.StatusServiceUnavailable, wantBody: "is not a directory",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, fakeUpstream(t, nil).URL)
			cfg.Storage.Root = filepath.Join(t.TempDir(), "cache")
			s := newTestServer(t, cfg)
			if tt.breakFS != nil {
				tt.breakFS(t, cfg.Storage.Root)
				// Close saves the TTL scheduler's state under the root.
				t.Cleanup(func() {
					mustRemove(t, cfg.Storage.Root)
					if err := os.Mkdir(cfg.Storage.Root, 0o755); err != nil {
						t.Error(err)
					}
				})
			}
			w := httptest.NewRecorder()
			s.handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tt.path, nil))
			if w.Code != tt.wantCode || !strings.Contains(w.Body.String(), tt.wantBody) {
				t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, w.Code, w.Body, tt.wantCode, tt.wantBody)
			}
			if got := counterValue(t, s.metrics.HTTPRequests.WithLabelValues("GET", kindHealth, strconv.Itoa(tt.wantCode))); got != 1 {
				t.Errorf("health counter = %v, want 1", got)
			}
		})
	}
}

func mustRemove(t *testing.T, p string) {
	t.Helper()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
