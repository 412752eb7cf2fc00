package upstream

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sirupsen/logrus"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

// testTimeout bounds every test's context.
const testTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	// distribution logs every request through the logrus standard logger.
	logrus.SetLevel(logrus.FatalLevel)
	os.Exit(m.Run())
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newRegistry serves a real distribution registry on inmemory storage over TLS.
func newRegistry(t *testing.T, auth configuration.Auth) *httptest.Server {
	t.Helper()
	dc := &configuration.Configuration{
		Storage: configuration.Storage{
			"inmemory":    configuration.Parameters{},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
		Auth: auth,
	}
	dc.HTTP.Secret = "upstream-test-secret"
	dc.Log.AccessLog.Disabled = true
	ctx, cancel := context.WithCancel(context.Background())
	app := handlers.NewApp(ctx, dc)
	srv := httptest.NewTLSServer(app)
	t.Cleanup(func() {
		srv.Close()
		_ = app.Shutdown()
		cancel()
	})
	return srv
}

// serve runs h over TLS. Handlers that block should also watch done, which is closed
// before the server.
func serve(t *testing.T, h http.Handler) (srv *httptest.Server, done <-chan struct{}) {
	t.Helper()
	srv = httptest.NewTLSServer(h)
	ch := make(chan struct{})
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(ch) })
	return srv, ch
}

// pushImage writes a random one-layer image to srv as repo:tag.
func pushImage(t *testing.T, srv *httptest.Server, repo, tag string, auth authn.Authenticator) v1.Image {
	t.Helper()
	img, err := random.Image(4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(hostOf(srv) + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(srv.Client().Transport), remote.WithAuth(auth), remote.WithContext(testContext(t))); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return img
}

func layerOf(t *testing.T, img v1.Image) (v1.Hash, []byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return d, b
}

func hostOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "https://") }

// caFile writes srv's certificate as a PEM CA file.
func caFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// credentialsFile writes "user:pass" with the given mode.
func credentialsFile(t *testing.T, user, pass string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(p, []byte(user+":"+pass+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testClient is a Client for srv with metrics and debug logs captured.
type testClient struct {
	*Client
	metrics *metrics.Metrics
	logs    *lockedBuffer
}

func newTestClient(t *testing.T, srv *httptest.Server, u conf.Upstream, opts ...Option) testClient {
	t.Helper()
	if u.URL == "" {
		u.URL = srv.URL
	}
	if u.TLS.CA == "" && strings.HasPrefix(u.URL, "https://") {
		u.TLS.CA = caFile(t, srv)
	}
	logs := &lockedBuffer{}
	m := metrics.New()
	opts = append([]Option{
		WithLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		WithMetrics(m),
		WithTimeouts(2*time.Second, 5*time.Second),
	}, opts...)
	c, err := New(u, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return testClient{Client: c, metrics: m, logs: logs}
}

// counter sums the counter name over the series whose labels include want.
func counter(t *testing.T, m *metrics.Metrics, metric string, want map[string]string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
	series:
		for _, s := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range s.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue series
				}
			}
			sum += s.GetCounter().GetValue()
		}
	}
	return sum
}

func requests(t *testing.T, c testClient, kind, code string) float64 {
	t.Helper()
	return counter(t, c.metrics, "hopless_registryd_upstream_requests_total",
		map[string]string{"upstream": c.Host(), "kind": kind, "code": code})
}

func readAll(t *testing.T, rc io.ReadCloser) ([]byte, error) {
	t.Helper()
	defer rc.Close()
	return io.ReadAll(rc)
}

// errorClass names the errdefs check an error must pass; nil means no error.
type errorClass func(error) bool

func checkError(t *testing.T, err error, want errorClass, wantText string) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want == nil:
		return
	case err == nil:
		t.Fatalf("no error, want one containing %q", wantText)
	case !want(err):
		t.Fatalf("error %q has the wrong class", err)
	case !strings.Contains(err.Error(), wantText):
		t.Fatalf("error %q does not contain %q", err, wantText)
	}
}

// checkFailure asserts that err is an *Error of c's upstream whose Failure reads
// "upstream=<host>; "+want, or, when want is empty, that err is no *Error.
func checkFailure(t *testing.T, err error, c *Client, want string) {
	t.Helper()
	var e *Error
	switch {
	case want == "" && errors.As(err, &e):
		t.Fatalf("error %q is an upstream failure %q, want none", err, e.Failure())
	case want == "":
		return
	case !errors.As(err, &e):
		t.Fatalf("error %q is no *Error, want the failure %q", err, want)
	case e.Failure().String() != "upstream="+c.Host()+"; "+want:
		t.Fatalf("failure %q, want %q", e.Failure(), "upstream="+c.Host()+"; "+want)
	case !errdefs.IsUnavailable(e):
		t.Fatalf("*Error %q is not unavailable", e)
	}
}
