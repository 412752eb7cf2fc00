// Package registrytest runs real registries for registryd's tests: an upstream
// distribution registry over TLS that counts requests and can be made to fail,
// images pushed into it, a registryd configuration in front of it, and a helper that
// runs a server for the length of a test. Only tests import it.
package registrytest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/hopless/hopless/conf"
)

// UpstreamPath is the upstream repository path that the configuration maps the
// default local prefix (system/deckhouse) to.
const UpstreamPath = "deckhouse/ce"

// Request is one request that reached an Upstream.
type Request struct {
	Method string
	Path   string
	Range  string
}

// Upstream is an in-memory distribution registry behind TLS. Every request except
// the test's own pushes is recorded.
type Upstream struct {
	*httptest.Server
	// Host is host:port, the upstream's default ns.
	Host string
	// CAFile is the PEM certificate that verifies the upstream.
	CAFile string

	push http.RoundTripper
	fail atomic.Int32

	mu        sync.Mutex
	requests  []Request
	intercept func(w http.ResponseWriter, r *http.Request) bool
}

const pushHeader = "X-Servertest-Push"

// NewUpstream starts an upstream that is closed when the test ends.
func NewUpstream(t testing.TB) *Upstream {
	t.Helper()
	dc := &configuration.Configuration{
		Storage: configuration.Storage{"inmemory": configuration.Parameters{}},
	}
	dc.HTTP.Secret = "registrytest-upstream"
	dc.Log.AccessLog.Disabled = true
	ctx, cancel := context.WithCancel(context.Background())
	app := handlers.NewApp(ctx, dc)
	u := &Upstream{}
	u.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(pushHeader) == "" {
			req := Request{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range")}
			u.mu.Lock()
			u.requests = append(u.requests, req)
			intercept := u.intercept
			u.mu.Unlock()
			if intercept != nil && intercept(w, r) {
				return
			}
			if code := u.fail.Load(); code != 0 {
				w.WriteHeader(int(code))
				return
			}
		}
		app.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		u.Close()
		_ = app.Shutdown()
		cancel()
	})
	u.Host = strings.TrimPrefix(u.URL, "https://")
	u.push = headerTransport{base: u.Client().Transport}
	u.CAFile = filepath.Join(t.TempDir(), "upstream-ca.pem")
	writePEM(t, u.CAFile, "CERTIFICATE", u.Certificate().Raw)
	return u
}

type headerTransport struct{ base http.RoundTripper }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(pushHeader, "1")
	return h.base.RoundTrip(r)
}

// Fail makes the upstream answer every recorded request with status; 0 restores it.
func (u *Upstream) Fail(status int) { u.fail.Store(int32(status)) }

// Intercept lets f see every recorded request first; f returns true if it answered
// the request itself. f may block, but should give up when r's context ends.
func (u *Upstream) Intercept(f func(w http.ResponseWriter, r *http.Request) bool) {
	u.mu.Lock()
	u.intercept = f
	u.mu.Unlock()
}

// Requests returns the recorded requests.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Request(nil), u.requests...)
}

// Count returns how many recorded requests match.
func (u *Upstream) Count(match func(Request) bool) int {
	n := 0
	for _, r := range u.Requests() {
		if match(r) {
			n++
		}
	}
	return n
}

// Any matches every request.
func Any(Request) bool { return true }

// BlobGET matches GET requests for blob d.
func BlobGET(d v1.Hash) func(Request) bool {
	return func(r Request) bool {
		return r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/blobs/"+d.String())
	}
}

// ManifestFetch matches HEAD and GET requests for the manifest ref (a tag or digest).
func ManifestFetch(ref string) func(Request) bool {
	return func(r Request) bool {
		return (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.HasSuffix(r.Path, "/manifests/"+ref)
	}
}

// Ref is the upstream reference of repo (an upstream repository path) with suffix
// (":tag" or "@sha256:...").
func (u *Upstream) Ref(t testing.TB, repo, suffix string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(u.Host + "/" + repo + suffix)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Push writes img as repo:tag, where repo is the upstream repository path.
func (u *Upstream) Push(t testing.TB, repo, tag string, img v1.Image) {
	t.Helper()
	if err := remote.Write(u.Ref(t, repo, ":"+tag), img, remote.WithTransport(u.push), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing %s:%s to the upstream: %v", repo, tag, err)
	}
}

// PushIndex writes idx and all its images as repo:tag.
func (u *Upstream) PushIndex(t testing.TB, repo, tag string, idx v1.ImageIndex) {
	t.Helper()
	if err := remote.WriteIndex(u.Ref(t, repo, ":"+tag), idx, remote.WithTransport(u.push), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing index %s:%s to the upstream: %v", repo, tag, err)
	}
}

// Image is a random image of layers layers of size bytes each.
func Image(t testing.TB, size, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Index is an OCI index of one random image per platform ("linux/amd64", ...).
func Index(t testing.TB, size, layers int64, platforms ...string) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        Image(t, size, layers),
			Descriptor: v1.Descriptor{Platform: plat},
		})
	}
	return idx
}

// Blobs returns img's config and layer digests.
func Blobs(t testing.TB, img v1.Image) []v1.Hash {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := []v1.Hash{cfg}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// Digest is img's manifest digest.
func Digest(t testing.TB, img interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Cert is a self-signed server certificate for 127.0.0.1 and localhost.
type Cert struct {
	CertFile, KeyFile string
	X509              *x509.Certificate
}

// NewCert writes a new certificate and its key into dir.
func NewCert(t testing.TB, dir string) *Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "registryd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cert{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), X509: cert}
	writePEM(t, c.CertFile, "CERTIFICATE", der)
	writePEM(t, c.KeyFile, "PRIVATE KEY", keyDER)
	return c
}

// Client is an HTTPS client that trusts only this certificate.
func (c *Cert) Client(t testing.TB) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(c.X509)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// WriteSecret writes a token file of mode 0600.
func WriteSecret(t testing.TB, path, secret string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Env is a registryd configuration in a directory of its own: a TLS server on
// 127.0.0.1:0 (the file says 127.0.0.1:5001) with a self-signed certificate, storage under Dir/cache, and the
// upstreams, the first under system/deckhouse mapped to UpstreamPath.
type Env struct {
	Dir  string
	Cert *Cert
	// Config is loaded from Dir/registryd.toml; tests may change it before New.
	Config *conf.Registryd
}

// NewEnv writes and loads the configuration. extra is TOML inserted before the
// [[upstream]] tables, for example "[api]\ntoken_file = \"api-token\"\n".
func NewEnv(t testing.TB, extra string, ups ...*Upstream) *Env {
	t.Helper()
	dir := t.TempDir()
	cert := NewCert(t, dir)
	var b strings.Builder
	fmt.Fprintf(&b, "[server]\nlisten = \"127.0.0.1:5001\"\ntls_cert = %q\ntls_key = %q\nshutdown_timeout = \"5s\"\n\n", cert.CertFile, cert.KeyFile)
	fmt.Fprintf(&b, "[storage]\nroot = \"cache\"\n\n[log]\nlevel = \"info\"\n\n%s\n", extra)
	for i, u := range ups {
		prefix := conf.DefaultLocalPrefix
		if i > 0 {
			prefix = fmt.Sprintf("other%d", i)
		}
		fmt.Fprintf(&b, "[[upstream]]\nurl = %q\nlocal_prefix = %q\npath = %q\ntls.ca = %q\n\n", u.URL, prefix, UpstreamPath, u.CAFile)
	}
	path := filepath.Join(dir, "registryd.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadRegistryd(path)
	if err != nil {
		t.Fatalf("loading the test configuration: %v\n%s", err, b.String())
	}
	// conf refuses port 0, which tests need.
	cfg.Server.Listen = "127.0.0.1:0"
	return &Env{Dir: dir, Cert: cert, Config: cfg}
}

// LogBuffer collects a server's log; it is safe for concurrent use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Logger logs JSON at debug level into a new LogBuffer, which is printed if the test
// fails. Nothing is written to t itself, since background work may log after the test.
func Logger(t testing.TB) (*slog.Logger, *LogBuffer) {
	buf := &LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewJSONHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// Runner is what Start runs: a *server.Server.
type Runner interface {
	Run(ctx context.Context) error
	Listening() <-chan struct{}
}

// Running is a Runner whose Run is in progress.
type Running struct {
	cancel  context.CancelFunc
	done    chan error
	once    sync.Once
	err     error
	checked atomic.Bool
}

// Start runs r until the test ends or Stop is called. It fails the test if r does not
// start listening within 10 s, or if Run returns an error that the test did not take
// with Stop.
func Start(t testing.TB, r Runner) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	run := &Running{cancel: cancel, done: make(chan error, 1)}
	go func() { run.done <- r.Run(ctx) }()
	select {
	case <-r.Listening():
	case err := <-run.done:
		cancel()
		t.Fatalf("Run returned before listening: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("the server did not start listening within 10s")
	}
	t.Cleanup(func() {
		if err := run.wait(); err != nil && !run.checked.Load() {
			t.Errorf("Run: %v", err)
		}
	})
	return run
}

// Stop cancels Run's context and returns Run's result.
func (r *Running) Stop() error {
	r.checked.Store(true)
	return r.wait()
}

func (r *Running) wait() error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(15 * time.Second):
			r.err = errors.New("the server did not return from Run within 15s of cancel")
		}
	})
	return r.err
}

// RegistryError is one entry of a registry error body.
type RegistryError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Errors parses a registry error body; it fails the test if body is not one.
func Errors(t testing.TB, body []byte) []RegistryError {
	t.Helper()
	var e struct {
		Errors []RegistryError `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("body %q is not a registry error: %v", body, err)
	}
	return e.Errors
}

// Do sends a request and returns the response with its body read.
func Do(t testing.TB, c *http.Client, method, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp, body
}

// Verify reads all of img's blobs, as a pull does, and checks each against its digest.
func Verify(t testing.TB, img v1.Image) {
	t.Helper()
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatalf("reading the config: %v", err)
	}
	want, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(raw)); got != want.String() {
		t.Errorf("config digest %s, want %s", got, want)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("layer %s: %v", d, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		_ = rc.Close()
		if err != nil {
			t.Fatalf("reading layer %s: %v", d, err)
		}
		if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != d.String() {
			t.Errorf("layer digest %s, want %s", got, d)
		}
	}
}
