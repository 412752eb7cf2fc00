package server

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestDistributionConfig(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "https://registry.example")
	cfg.Upstream[0].TTL.Duration = 48 * time.Hour
	dc := distributionConfig(cfg, "puller", "s3cret")

	if got := dc.Storage.Type(); got != "filesystem" {
		t.Errorf("storage type %q, want filesystem", got)
	}
	if got := dc.Storage.Parameters()["rootdirectory"]; got != cfg.Storage.Root {
		t.Errorf("rootdirectory %v, want %s", got, cfg.Storage.Root)
	}
	if got := dc.Storage["delete"]["enabled"]; got != false {
		t.Errorf("storage.delete.enabled = %v, want false", got)
	}
	if dc.Proxy.RemoteURL != "https://registry.example" || dc.Proxy.Username != "puller" || dc.Proxy.Password != "s3cret" {
		t.Errorf("proxy = %+v, want the upstream URL and credentials", dc.Proxy)
	}
	if dc.Proxy.TTL == nil || *dc.Proxy.TTL != 48*time.Hour {
		t.Errorf("proxy TTL = %v, want 48h", dc.Proxy.TTL)
	}
	if dc.HTTP.Debug.Prometheus.Enabled {
		t.Error("distribution's own Prometheus metrics are on, want off")
	}
}

func TestDistributionLogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want logrus.Level
	}{
		{"debug", logrus.DebugLevel},
		{"info", logrus.WarnLevel},
		{"warn", logrus.WarnLevel},
		{"error", logrus.ErrorLevel},
	}
	for _, tt := range tests {
		if got := distributionLogLevel(tt.in); got != tt.want {
			t.Errorf("distributionLogLevel(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestUpstreamCredentials checks that the credentials file reaches the upstream as
// basic auth and that the password never reaches our log.
func TestUpstreamCredentials(t *testing.T) {
	t.Parallel()
	const user, pass = "puller", "pa55-never-logged"
	var mu sync.Mutex
	var authed bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="upstream"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/v2/" {
			mu.Lock()
			authed = true
			mu.Unlock()
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(up.Close)

	cfg := testConfig(t, up.URL)
	cfg.Upstream[0].Auth.CredentialsFile = filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(cfg.Upstream[0].Auth.CredentialsFile, []byte(user+":"+pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	s, err := New(t.Context(), cfg, WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/v2/system/deckhouse/install/manifests/v1", nil)
	r.Header.Set("Authorization", "Basic "+pass)
	s.handler.ServeHTTP(w, r)
	mu.Lock()
	defer mu.Unlock()
	if !authed {
		t.Errorf("the upstream saw no request with the configured credentials (client got %d %s)", w.Code, w.Body)
	}
	if bytes.Contains([]byte(logs.String()), []byte(pass)) {
		t.Errorf("the password or the client's Authorization header reached the log:\n%s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
