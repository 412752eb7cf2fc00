package lab

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// keepDefaultTransport restores http.DefaultTransport, which ServeProxy
// replaces, when the test ends. Such a test must not run in parallel.
func keepDefaultTransport(t *testing.T) {
	orig := http.DefaultTransport
	t.Cleanup(func() { http.DefaultTransport = orig })
}

// TestProxyPullThrough pulls through distribution's proxy twice: only the
// first pull reaches the upstream.
func TestProxyPullThrough(t *testing.T) {
	keepDefaultTransport(t)
	up := startTestUpstream(t)
	ctx := t.Context()
	res, err := Seed(ctx, SeedOptions{
		Registry: up.addr, Repo: "lab/app", Tag: "v1", Layers: 1, LayerSize: 1 << 20, RootCAs: up.pool, Seed: 5,
	})
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	blob := res.Layers[0]

	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedCert(t, dir)
	o := ProxyOptions{
		Addr:       "127.0.0.1:0",
		CertFile:   certFile,
		KeyFile:    keyFile,
		StorageDir: filepath.Join(dir, "storage"),
		RemoteURL:  "https://" + up.addr + "/",
		RemoteCA:   up.opts.CertFile,
		AccessLog:  filepath.Join(dir, "access.log"),
	}
	addr, _ := serveUntilCleanup(t, "ServeProxy", func(ctx context.Context, ready func(string)) error {
		o := o
		o.Ready = ready
		return ServeProxy(ctx, o)
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()

	ref, err := name.ParseReference(addr + "/lab/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, remote.WithTransport(tr), remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("manifest through the proxy: %v", err)
	}
	if desc.Digest.String() != res.Digest {
		t.Errorf("manifest digest through the proxy = %s, want %s", desc.Digest, res.Digest)
	}

	url := "https://" + addr + "/v2/lab/app/blobs/" + blob
	for i := 1; i <= 2; i++ {
		resp, body, err := fetch(t, tr, http.MethodGet, url, "")
		if err != nil || resp.StatusCode != http.StatusOK || sha256Digest(body) != blob {
			t.Fatalf("pull %d: status %d, %d bytes, err %v; want the whole blob", i, resp.StatusCode, len(body), err)
		}
		// The proxy commits the blob to its cache after the client has it
		// all, and logs the request after that.
		waitBlobGETs(t, o.AccessLog, blob, i)
	}
	if gets := waitBlobGETs(t, up.accessLog, blob, 1); gets[0].Bytes != res.Bytes {
		t.Errorf("upstream blob GET %+v, want the whole blob", gets[0])
	}

	o.Addr = addr
	o.Ready = func(string) { t.Error("Ready called for an address in use") }
	if err := ServeProxy(ctx, o); err == nil || !strings.Contains(err.Error(), addr) {
		t.Errorf("ServeProxy on a used address: %v, want an error naming %s", err, addr)
	}
}

func TestProxyDeadRemote(t *testing.T) {
	keepDefaultTransport(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	certFile, keyFile, _ := selfSignedCert(t, dir)
	err = ServeProxy(t.Context(), ProxyOptions{
		Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, StorageDir: dir,
		RemoteURL: "https://" + dead, RemoteCA: certFile,
		Ready: func(string) { t.Error("Ready called with a dead remote") },
	})
	if err == nil || !strings.Contains(err.Error(), dead) {
		t.Fatalf("ServeProxy with a dead remote: %v, want an error naming %s", err, dead)
	}
}

// TestProxyBadOptions runs in parallel: every case fails before ServeProxy
// replaces http.DefaultTransport.
func TestProxyBadOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile, _ := selfSignedCert(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	used, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The subtests run after this function returns, so no defer.
	t.Cleanup(func() { used.Close() })
	good := ProxyOptions{
		Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, StorageDir: dir,
		RemoteURL: "https://127.0.0.1:1", RemoteCA: certFile,
	}
	key, openKey := filepath.Join(dir, "s3.key"), filepath.Join(dir, "s3-open.key")
	for f, mode := range map[string]os.FileMode{key: 0o600, openKey: 0o644} {
		if err := os.WriteFile(f, []byte("k3y\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	// onS3 is good on an S3 bucket, edited.
	onS3 := func(edit func(*ProxyS3)) func(*ProxyOptions) {
		return func(o *ProxyOptions) {
			s3 := ProxyS3{Endpoint: "http://127.0.0.1:1", Region: "us-east-1", Bucket: "b", AccessKeyFile: key, SecretKeyFile: key, RootDirectory: "/proxy-1"}
			edit(&s3)
			o.StorageDir, o.S3 = "", &s3
		}
	}
	for _, tc := range []struct {
		name string
		edit func(*ProxyOptions)
		want string
	}{
		{"no addr", func(o *ProxyOptions) { o.Addr = "" }, "no listen address"},
		{"no key", func(o *ProxyOptions) { o.KeyFile = "" }, "key"},
		{"missing cert", func(o *ProxyOptions) { o.CertFile = filepath.Join(dir, "nope.crt") }, "nope.crt"},
		{"no storage", func(o *ProxyOptions) { o.StorageDir = "" }, "storage"},
		{"dir and s3", func(o *ProxyOptions) { onS3(func(*ProxyS3) {})(o); o.StorageDir = dir }, "both"},
		{"s3 no bucket", onS3(func(s *ProxyS3) { s.Bucket = "" }), "bucket"},
		{"s3 no key file", onS3(func(s *ProxyS3) { s.SecretKeyFile = "" }), "secret key file"},
		{"s3 no root", onS3(func(s *ProxyS3) { s.RootDirectory = "/" }), "root directory"},
		{"s3 endpoint scheme", onS3(func(s *ProxyS3) { s.Endpoint = "ftp://127.0.0.1:1" }), "ftp://127.0.0.1:1"},
		{"s3 key too open", onS3(func(s *ProxyS3) { s.AccessKeyFile = openKey }), "s3-open.key"},
		{"s3 key missing", onS3(func(s *ProxyS3) { s.SecretKeyFile = filepath.Join(dir, "nope.key") }), "nope.key"},
		{"no remote", func(o *ProxyOptions) { o.RemoteURL = "" }, "no remote URL"},
		{"remote scheme", func(o *ProxyOptions) { o.RemoteURL = "ftp://127.0.0.1:1" }, "ftp://127.0.0.1:1"},
		{"remote path", func(o *ProxyOptions) { o.RemoteURL = "https://127.0.0.1:1/v2" }, "https://127.0.0.1:1/v2"},
		{"remote unparsable", func(o *ProxyOptions) { o.RemoteURL = "https://[::1" }, "remote URL"},
		{"missing remote CA", func(o *ProxyOptions) { o.RemoteCA = filepath.Join(dir, "nope.pem") }, "nope.pem"},
		{"remote CA not PEM", func(o *ProxyOptions) { o.RemoteCA = notPEM }, "not.pem"},
		{"bad addr", func(o *ProxyOptions) { o.Addr = "127.0.0.1:99999" }, "127.0.0.1:99999"},
		{"addr in use", func(o *ProxyOptions) { o.Addr = used.Addr().String() }, used.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := good
			tc.edit(&o)
			err := ServeProxy(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestProxyS3Storage: the s3 driver gets the bucket, the endpoint's security, the
// root and the keys from their files.
func TestProxyS3Storage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ak, sk := filepath.Join(dir, "access"), filepath.Join(dir, "secret")
	for f, v := range map[string]string{ak: "AK\n", sk: "SK\n"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		endpoint string
		secure   bool
	}{{"http://127.0.0.1:8333", false}, {"https://127.0.0.1:8333", true}} {
		o := ProxyS3{Endpoint: tc.endpoint, Region: "us-east-1", Bucket: "hopless", AccessKeyFile: ak, SecretKeyFile: sk, RootDirectory: "/proxy-1", ForcePathStyle: true}
		st, err := o.storage()
		if err != nil {
			t.Fatal(err)
		}
		p := st["s3"]
		if st.Type() != "s3" || p["regionendpoint"] != tc.endpoint || p["secure"] != tc.secure || p["bucket"] != "hopless" || p["region"] != "us-east-1" ||
			p["accesskey"] != "AK" || p["secretkey"] != "SK" || p["rootdirectory"] != "/proxy-1" || p["forcepathstyle"] != true {
			t.Errorf("%s: storage = %v", tc.endpoint, st)
		}
	}
}
