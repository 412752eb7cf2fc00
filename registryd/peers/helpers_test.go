package peers

import (
	"bytes"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

const testToken = "s3cr3t-peer-token_0123456789"

// writeFile writes content to a new file in dir with exactly mode.
func writeFile(t testing.TB, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod, because WriteFile's mode is filtered by the umask.
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// tlsPeer starts an httptest TLS server and returns it with a config that trusts it
// through cfg.TLS.CA, so tests go through the client New builds.
func tlsPeer(t *testing.T, h http.Handler) (*httptest.Server, conf.Peers) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})), 0o644)
	return srv, conf.Peers{
		Self:           "https://127.0.0.1:1",
		Endpoints:      []conf.Endpoint{{URL: srv.URL, Weight: 1}},
		TokenFile:      writeFile(t, dir, "token", testToken+"\n", 0o600),
		TLS:            conf.TLS{CA: ca},
		HealthInterval: conf.Duration{Duration: time.Hour},
	}
}

func mustNew(t *testing.T, cfg conf.Peers, opts ...Option) *Set {
	t.Helper()
	s, err := New(cfg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// isUp reports whether the peer with url is present and up.
func isUp(s *Set, url string) bool {
	for _, p := range s.Healthy() {
		if p.URL == url {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fills(t *testing.T, m *metrics.Metrics, peer, result string) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.PeerFills.WithLabelValues(peer, result).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// syncBuffer is a bytes.Buffer that several goroutines may log into.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
