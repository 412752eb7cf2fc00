package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// selfSignedCert writes a certificate for 127.0.0.1 and its key to dir.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hopless lab upstream test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
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
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

type testUpstream struct {
	addr      string
	accessLog string
	pool      *x509.CertPool
	opts      UpstreamOptions
}

// startTestUpstream runs ServeUpstream until the test ends and checks that
// it then shuts down cleanly.
func startTestUpstream(t *testing.T) *testUpstream {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedCert(t, dir)
	u := &testUpstream{accessLog: filepath.Join(dir, "access.log"), pool: pool}
	ready := make(chan string, 1)
	u.opts = UpstreamOptions{
		Addr:       "127.0.0.1:0",
		CertFile:   certFile,
		KeyFile:    keyFile,
		StorageDir: filepath.Join(dir, "storage"),
		AccessLog:  u.accessLog,
		Ready:      func(addr string) { ready <- addr },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeUpstream(ctx, u.opts) }()
	select {
	case u.addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("ServeUpstream: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("ServeUpstream did not become ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeUpstream after cancel: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("ServeUpstream did not return after cancel")
		}
	})
	return u
}

func (u *testUpstream) transport() *http.Transport {
	return &http.Transport{TLSClientConfig: &tls.Config{RootCAs: u.pool, MinVersion: tls.VersionTLS12}}
}

func TestUpstreamSeedImage(t *testing.T) {
	t.Parallel()
	u := startTestUpstream(t)
	ctx := t.Context()
	tr := u.transport()
	defer tr.CloseIdleConnections()

	res, err := Seed(ctx, SeedOptions{
		Registry: u.addr, Repo: "lab/app", Tag: "v1",
		Layers: 2, LayerSize: 1 << 20, RootCAs: u.pool, Seed: 1,
	})
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	if want := u.addr + "/lab/app:v1"; res.Ref != want {
		t.Errorf("Ref = %q, want %q", res.Ref, want)
	}
	if len(res.Layers) != 2 || res.Layers[0] == res.Layers[1] {
		t.Fatalf("Layers = %v, want 2 different digests", res.Layers)
	}
	if res.Bytes < 2<<20 || res.Bytes > 2<<20+2*4096 {
		t.Errorf("Bytes = %d, want 2 MiB plus tar overhead", res.Bytes)
	}

	ref, err := name.ParseReference(res.Ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, remote.WithTransport(tr), remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("remote.Get: %v", err)
	}
	if desc.Digest.String() != res.Digest {
		t.Errorf("manifest digest = %s, want %s", desc.Digest, res.Digest)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest media type = %s, want %s", desc.MediaType, types.OCIManifestSchema1)
	}
	img, err := desc.Image()
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, img, "amd64", res.Layers)

	// Read every layer through go-containerregistry, then one with a Range.
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int64
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read layer: %v", err)
		}
		sizes = append(sizes, n)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("https://%s/v2/lab/app/blobs/%s", u.addr, res.Layers[1]), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=100-1123")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusPartialContent || len(body) != 1024 {
		t.Fatalf("range GET: status %d, %d bytes, err %v; want 206 and 1024 bytes", resp.StatusCode, len(body), err)
	}

	entries, err := ReadAccessLog(u.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range res.Layers {
		if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
			return e.Method == http.MethodHead && e.Digest() == d
		}) {
			t.Errorf("no HEAD for layer %s before its upload", d)
		}
		if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
			return e.Method == http.MethodPut && e.Digest() == d && e.Status == http.StatusCreated
		}) {
			t.Errorf("no PUT completing the upload of layer %s", d)
		}
		gets := slices.DeleteFunc(BlobGETs(entries), func(e AccessEntry) bool { return e.Digest() != d })
		full := slices.ContainsFunc(gets, func(e AccessEntry) bool {
			return e.Status == http.StatusOK && e.Range == "" && e.Bytes == sizes[i]
		})
		if !full {
			t.Errorf("layer %s: no full GET of %d bytes in %+v", d, sizes[i], gets)
		}
	}
	ranged := slices.ContainsFunc(BlobGETs(entries), func(e AccessEntry) bool {
		return e.Digest() == res.Layers[1] && e.Range == "bytes=100-1123" &&
			e.Status == http.StatusPartialContent && e.Bytes == 1024
	})
	if !ranged {
		t.Errorf("range GET not logged as 206 with 1024 bytes")
	}
	if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
		return e.Method == http.MethodPut && e.Path == "/v2/lab/app/manifests/v1" && e.Status == http.StatusCreated
	}) {
		t.Errorf("no manifest PUT by tag")
	}
	for _, e := range entries {
		if e.Time.IsZero() || e.Remote == "" || e.Status == 0 {
			t.Errorf("incomplete entry %+v", e)
		}
		if strings.Contains(e.Path, "/blobs/") && !strings.Contains(e.Path, "/uploads/") && e.Method == http.MethodGet && e.Digest() == "" {
			t.Errorf("blob GET without digest: %+v", e)
		}
	}

	// Same options, same seed: same content, so the push is a no-op.
	again, err := Seed(ctx, SeedOptions{
		Registry: u.addr, Repo: "lab/app", Tag: "v1-again",
		Layers: 2, LayerSize: 1 << 20, RootCAs: u.pool, Seed: 1,
	})
	if err != nil {
		t.Fatalf("Seed again: %v", err)
	}
	if again.Digest != res.Digest {
		t.Errorf("same seed gave digest %s, then %s", res.Digest, again.Digest)
	}
	other, err := Seed(ctx, SeedOptions{
		Registry: u.addr, Repo: "lab/app", Tag: "v2",
		Layers: 2, LayerSize: 1 << 20, RootCAs: u.pool, Seed: 2,
	})
	if err != nil {
		t.Fatalf("Seed other: %v", err)
	}
	if other.Digest == res.Digest || slices.ContainsFunc(other.Layers, func(d string) bool { return slices.Contains(res.Layers, d) }) {
		t.Errorf("seeds 1 and 2 share digests: %+v and %+v", res, other)
	}
}

func TestUpstreamSeedIndex(t *testing.T) {
	t.Parallel()
	u := startTestUpstream(t)
	ctx := t.Context()
	tr := u.transport()
	defer tr.CloseIdleConnections()

	res, err := Seed(ctx, SeedOptions{
		Registry: u.addr, Repo: "lab/multi", Tag: "latest",
		Layers: 3, LayerSize: 100 << 10, Index: true, RootCAs: u.pool, Seed: 7,
	})
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	ref, err := name.ParseReference(res.Ref)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, remote.WithTransport(tr), remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("remote.Get: %v", err)
	}
	if desc.Digest.String() != res.Digest || desc.MediaType != types.OCIImageIndex {
		t.Fatalf("got %s %s, want %s %s", desc.MediaType, desc.Digest, types.OCIImageIndex, res.Digest)
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range im.Manifests {
		if m.Platform == nil {
			t.Fatalf("manifest %s has no platform", m.Digest)
		}
		platforms = append(platforms, m.Platform.String())
		if m.MediaType != types.OCIManifestSchema1 {
			t.Errorf("manifest %s media type %s", m.Digest, m.MediaType)
		}
	}
	if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
		t.Fatalf("platforms = %v, want %v", platforms, want)
	}

	amd, err := remote.Image(ref, remote.WithTransport(tr), remote.WithContext(ctx),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatalf("remote.Image amd64: %v", err)
	}
	checkImage(t, amd, "amd64", res.Layers)
	arm, err := idx.Image(im.Manifests[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	armLayers, err := arm.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(armLayers) != 1 {
		t.Errorf("arm64 image has %d layers, want 1", len(armLayers))
	}
	armCfg, err := arm.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if armCfg.Architecture != "arm64" {
		t.Errorf("arm64 config architecture = %q", armCfg.Architecture)
	}

	entries, err := ReadAccessLog(u.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
		return e.Method == http.MethodPut && e.Path == "/v2/lab/multi/manifests/latest"
	}) {
		t.Error("no index PUT by tag")
	}
	for _, m := range im.Manifests {
		if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
			return e.Method == http.MethodPut && e.Digest() == m.Digest.String()
		}) {
			t.Errorf("no manifest PUT by digest for %s", m.Platform)
		}
	}
}

// checkImage checks that img is an OCI image for linux/arch whose layers and
// diff IDs are wantLayers.
func checkImage(t *testing.T, img v1.Image, arch string, wantLayers []string) {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != arch {
		t.Errorf("config platform = %s/%s, want linux/%s", cfg.OS, cfg.Architecture, arch)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type = %s", m.Config.MediaType)
	}
	var got, diffIDs []string
	for _, l := range m.Layers {
		got = append(got, l.Digest.String())
		if l.MediaType != types.OCIUncompressedLayer {
			t.Errorf("layer %s media type = %s", l.Digest, l.MediaType)
		}
	}
	for _, d := range cfg.RootFS.DiffIDs {
		diffIDs = append(diffIDs, d.String())
	}
	if !slices.Equal(got, wantLayers) {
		t.Errorf("layers = %v, want %v", got, wantLayers)
	}
	if cfg.RootFS.Type != "layers" || !slices.Equal(diffIDs, wantLayers) {
		t.Errorf("rootfs = %s %v, want layers %v", cfg.RootFS.Type, diffIDs, wantLayers)
	}
}

func TestUpstreamBindError(t *testing.T) {
	t.Parallel()
	u := startTestUpstream(t)
	o := u.opts
	o.Addr = u.addr
	o.AccessLog = ""
	o.StorageDir = t.TempDir()
	o.Ready = func(string) { t.Error("Ready called for an address in use") }
	err := ServeUpstream(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), u.addr) {
		t.Fatalf("ServeUpstream on a used address: %v, want an error naming %s", err, u.addr)
	}
}

func TestUpstreamBadOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile, _ := selfSignedCert(t, dir)
	good := UpstreamOptions{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, StorageDir: dir}
	for _, tc := range []struct {
		name string
		edit func(*UpstreamOptions)
		want string
	}{
		{"no addr", func(o *UpstreamOptions) { o.Addr = "" }, "no listen address"},
		{"no cert", func(o *UpstreamOptions) { o.CertFile = "" }, "certificate"},
		{"missing cert", func(o *UpstreamOptions) { o.CertFile = filepath.Join(dir, "nope.crt") }, "nope.crt"},
		{"no storage", func(o *UpstreamOptions) { o.StorageDir = "" }, "storage"},
		{"bad access log", func(o *UpstreamOptions) { o.AccessLog = filepath.Join(dir, "missing", "access.log") }, "access log"},
		{"bad addr", func(o *UpstreamOptions) { o.Addr = "127.0.0.1:99999" }, "127.0.0.1:99999"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := good
			tc.edit(&o)
			err := ServeUpstream(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
