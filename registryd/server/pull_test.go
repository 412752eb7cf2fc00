package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/conf"
)

// TestPullThroughTLS pushes an image into a real distribution upstream behind TLS
// and pulls it through registryd, itself on TLS, by the alias path.
//
// Not parallel: New replaces http.DefaultTransport to trust the upstream CA, which
// must not race with other tests reading it.
func TestPullThroughTLS(t *testing.T) {
	saved := http.DefaultTransport
	t.Cleanup(func() { http.DefaultTransport = saved })

	upstream := newUpstreamRegistry(t)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(upstream.URL, "https://")
	ref, err := name.ParseReference(host + "/deckhouse/ce/install:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(upstream.Client().Transport), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("pushing to the upstream: %v", err)
	}

	dir := t.TempDir()
	caFile := filepath.Join(dir, "upstream-ca.pem")
	writePEM(t, caFile, "CERTIFICATE", upstream.Certificate().Raw)
	certFile, keyFile, serverCert := selfSignedCert(t, dir)

	cfg := testConfig(t, upstream.URL)
	cfg.Server.Insecure = false
	cfg.Server.TLSCert, cfg.Server.TLSKey = certFile, keyFile
	cfg.Metrics.Listen = "127.0.0.1:0"
	cfg.Upstream[0].TLS = conf.TLS{}

	// Without the CA the upstream's certificate is rejected: distribution checks the
	// upstream while it starts.
	if _, err := New(t.Context(), cfg, WithLogger(testLogger(t))); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("New without the upstream CA = %v, want a certificate error", err)
	}

	cfg.Upstream[0].TLS.CA = caFile
	s := newTestServer(t, cfg)
	run := start(t, s)

	roots := x509.NewCertPool()
	roots.AddCert(serverCert)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	t.Cleanup(client.CloseIdleConnections)
	base := "https://" + s.Addr().String() + "/v2/system/deckhouse/install"

	manifestDigest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	mediaType, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"v1", manifestDigest.String()} {
		body, hdr := fetch(t, client, base+"/manifests/"+ref+"?ns="+host, string(mediaType), "")
		if got := hdr.Get("Docker-Content-Digest"); got != manifestDigest.String() {
			t.Errorf("manifest %s: Docker-Content-Digest %q, want %s", ref, got, manifestDigest)
		}
		checkDigest(t, "manifest "+ref, body, manifestDigest)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cfgDigest, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	digests := []v1.Hash{cfgDigest}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
	}
	for _, d := range digests {
		// The first pull fills the cache from the upstream, the second is served from it.
		for i := range 2 {
			body, _ := fetch(t, client, base+"/blobs/"+d.String(), "", "")
			checkDigest(t, fmt.Sprintf("blob %s pull %d", d, i+1), body, d)
		}
	}
	part, _ := fetch(t, client, base+"/blobs/"+digests[1].String(), "", "bytes=0-99")
	if len(part) != 100 {
		t.Errorf("range request returned %d bytes, want 100", len(part))
	}

	tags, _ := fetch(t, client, base+"/tags/list", "", "")
	if !strings.Contains(string(tags), `"v1"`) || !strings.Contains(string(tags), `"deckhouse/ce/install"`) {
		t.Errorf("tags/list = %s, want tag v1 of deckhouse/ce/install", tags)
	}

	metricsBody, _ := fetch(t, http.DefaultClient, "http://"+s.MetricsAddr().String()+"/metrics", "", "")
	for _, want := range []string{
		`hopless_registryd_http_requests_total{code="200",kind="manifest",method="GET"} 2`,
		fmt.Sprintf(`hopless_registryd_http_requests_total{code="200",kind="blob",method="GET"} %d`, 2*len(digests)),
		`hopless_registryd_http_requests_total{code="206",kind="blob",method="GET"} 1`,
		`hopless_registryd_http_requests_total{code="200",kind="tags",method="GET"} 1`,
		`hopless_registryd_http_response_bytes_total{kind="blob"}`,
		`go_goroutines`,
		`process_cpu_seconds_total`,
	} {
		if !strings.Contains(string(metricsBody), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// distribution registers its proxy metrics on the default registry; ours is separate.
	if strings.Contains(string(metricsBody), "registry_proxy") {
		t.Errorf("metrics include distribution's default-registry collectors")
	}

	if err := run.stop(); err != nil {
		t.Errorf("Run: %v, want nil after a clean shutdown", err)
	}
}

// newUpstreamRegistry serves an in-memory distribution registry over TLS.
func newUpstreamRegistry(t *testing.T) *httptest.Server {
	t.Helper()
	dc := &configuration.Configuration{
		Storage: configuration.Storage{"inmemory": configuration.Parameters{}},
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

func fetch(t *testing.T, c *http.Client, url, accept, rangeHdr string) ([]byte, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, resp.Header
}

func checkDigest(t *testing.T, what string, body []byte, want v1.Hash) {
	t.Helper()
	sum := sha256.Sum256(body)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != want.String() {
		t.Errorf("%s: body digest %s, want %s", what, got, want)
	}
}

// selfSignedCert writes a self-signed certificate for 127.0.0.1 and its key.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
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
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile, cert
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
