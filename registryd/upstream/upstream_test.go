package upstream

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

// TestRegistry fetches from a real distribution registry what go-containerregistry
// pushed to it.
func TestRegistry(t *testing.T) {
	t.Parallel()
	srv := newRegistry(t, nil)
	img := pushImage(t, srv, "library/app", "v1", authn.Anonymous)
	layer, content := layerOf(t, img)
	dgst := digest.Digest(layer.String())
	size := int64(len(content))
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	imgDigest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	mediaType, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, srv, conf.Upstream{})

	t.Run("blob", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name     string
			repo     string
			dgst     digest.Digest
			offset   int64
			want     []byte
			wantErr  errorClass
			wantText string
		}{
			{name: "whole", repo: "library/app", dgst: dgst, want: content},
			{name: "from an offset", repo: "library/app", dgst: dgst, offset: 1000, want: content[1000:]},
			{name: "last byte", repo: "library/app", dgst: dgst, offset: size - 1, want: content[size-1:]},
			{name: "offset at the end", repo: "library/app", dgst: dgst, offset: size, want: []byte{}},
			{name: "offset beyond the end", repo: "library/app", dgst: dgst, offset: size + 1, wantErr: errdefs.IsInvalidArgument, wantText: "beyond"},
			{name: "unknown blob", repo: "library/app", dgst: digest.FromString("nope"), wantErr: errdefs.IsNotFound, wantText: "BLOB_UNKNOWN"},
			{name: "unknown repository", repo: "library/none", dgst: dgst, wantErr: errdefs.IsNotFound, wantText: "404"},
			{name: "negative offset", repo: "library/app", dgst: dgst, offset: -1, wantErr: errdefs.IsInvalidArgument, wantText: "negative"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				rc, total, err := c.Blob(testContext(t), tt.repo, tt.dgst, tt.offset)
				checkError(t, err, tt.wantErr, tt.wantText)
				if err != nil {
					return
				}
				got, err := readAll(t, rc)
				if err != nil {
					t.Fatalf("reading: %v", err)
				}
				if total != size {
					t.Errorf("total = %d, want %d", total, size)
				}
				if !bytes.Equal(got, tt.want) {
					t.Errorf("read %d bytes, want %d (equal: %v)", len(got), len(tt.want), bytes.Equal(got, tt.want))
				}
			})
		}
	})

	t.Run("stat", func(t *testing.T) {
		t.Parallel()
		got, err := c.StatBlob(testContext(t), "library/app", dgst)
		if err != nil || got != size {
			t.Fatalf("StatBlob = %d, %v; want %d", got, err, size)
		}
		_, err = c.StatBlob(testContext(t), "library/app", digest.FromString("nope"))
		checkError(t, err, errdefs.IsNotFound, "404")
	})

	t.Run("manifest", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name     string
			ref      string
			max      int64
			wantErr  errorClass
			wantText string
		}{
			{name: "by tag", ref: "v1", max: 1 << 20},
			{name: "by digest", ref: imgDigest.String(), max: 1 << 20},
			{name: "exactly the limit", ref: "v1", max: int64(len(raw))},
			{name: "too large", ref: "v1", max: 10, wantErr: errdefs.IsInvalidArgument, wantText: "exceeds 10 bytes"},
			{name: "unknown tag", ref: "v2", max: 1 << 20, wantErr: errdefs.IsNotFound, wantText: "MANIFEST_UNKNOWN"},
			{name: "unknown digest", ref: digest.FromString("nope").String(), max: 1 << 20, wantErr: errdefs.IsNotFound, wantText: "404"},
			{name: "no limit", ref: "v1", max: 0, wantErr: errdefs.IsInvalidArgument, wantText: "limit"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				m, err := c.Manifest(testContext(t), "library/app", tt.ref, tt.max)
				checkError(t, err, tt.wantErr, tt.wantText)
				if err != nil {
					return
				}
				if m.Digest.String() != imgDigest.String() || m.MediaType != string(mediaType) || !bytes.Equal(m.Payload, raw) {
					t.Errorf("Manifest = %s %s %d bytes, want %s %s %d bytes", m.Digest, m.MediaType, len(m.Payload), imgDigest, mediaType, len(raw))
				}

				d, err := c.HeadManifest(testContext(t), "library/app", tt.ref, tt.max)
				if err != nil {
					t.Fatalf("HeadManifest: %v", err)
				}
				want := Descriptor{Digest: m.Digest, MediaType: m.MediaType, Size: int64(len(raw))}
				if d != want {
					t.Errorf("HeadManifest = %+v, want %+v", d, want)
				}
			})
		}
	})
}

// TestMetrics checks the counters after a known sequence of requests.
func TestMetrics(t *testing.T) {
	t.Parallel()
	srv := newRegistry(t, nil)
	img := pushImage(t, srv, "library/app", "v1", authn.Anonymous)
	layer, content := layerOf(t, img)
	c := newTestClient(t, srv, conf.Upstream{})
	ctx := testContext(t)

	rc, _, err := c.Blob(ctx, "library/app", digest.Digest(layer.String()), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, rc); err != nil {
		t.Fatal(err)
	}
	rc, _, err = c.Blob(ctx, "library/app", digest.Digest(layer.String()), 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, rc); err != nil {
		t.Fatal(err)
	}
	m, err := c.Manifest(ctx, "library/app", "v1", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Manifest(ctx, "library/app", "v2", 1<<20); !errdefs.IsNotFound(err) {
		t.Fatalf("Manifest v2: %v, want not found", err)
	}

	for _, tt := range []struct {
		kind, code string
		want       float64
	}{
		{kindPing, "200", 1},
		{kindBlob, "200", 1},
		{kindBlob, "206", 1},
		{kindTag, "200", 1},
		{kindTag, "404", 1},
		{kindToken, "200", 0},
	} {
		if got := requests(t, c, tt.kind, tt.code); got != tt.want {
			t.Errorf("upstream requests{kind=%s,code=%s} = %v, want %v", tt.kind, tt.code, got, tt.want)
		}
	}
	wantBytes := float64(len(content) + len(content) - 100 + len(m.Payload))
	if got := counter(t, c.metrics, "hopless_registryd_upstream_bytes_total", map[string]string{"upstream": c.Host()}); got != wantBytes {
		t.Errorf("upstream bytes = %v, want %v", got, wantBytes)
	}
}

// TestValidation checks that bad names never reach the upstream.
func TestValidation(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	c := newTestClient(t, srv, conf.Upstream{})
	good := digest.FromString("x")
	tests := []struct {
		name      string
		repo, ref string
		wantText  string
	}{
		{"upper case", "Library/app", "v1", "repository"},
		{"empty", "", "v1", "repository"},
		{"double slash", "a//b", "v1", "repository"},
		{"dot dot", "a/../b", "v1", "repository"},
		{"leading slash", "/a", "v1", "repository"},
		{"trailing slash", "a/", "v1", "repository"},
		{"port", "host:5000/a", "v1", "repository"},
		{"query", "a?b=c", "v1", "repository"},
		{"space", "a b", "v1", "repository"},
		{"percent", "a%2fb", "v1", "repository"},
		{"bad tag", "a", "-v1", "tag"},
		{"tag with slash", "a", "v1/../x", "tag"},
		{"empty ref", "a", "", "tag"},
		{"bad digest", "a", "sha256:zz", "digest"},
		{"unknown algorithm", "a", "md5:d41d8cd98f00b204e9800998ecf8427e", "digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			_, err := c.Manifest(ctx, tt.repo, tt.ref, 1<<20)
			checkError(t, err, errdefs.IsInvalidArgument, tt.wantText)
			_, err = c.HeadManifest(ctx, tt.repo, tt.ref, 1<<20)
			checkError(t, err, errdefs.IsInvalidArgument, tt.wantText)
			if tt.wantText == "repository" {
				_, _, err = c.Blob(ctx, tt.repo, good, 0)
				checkError(t, err, errdefs.IsInvalidArgument, tt.wantText)
				_, err = c.StatBlob(ctx, tt.repo, good)
				checkError(t, err, errdefs.IsInvalidArgument, tt.wantText)
			}
		})
	}
	_, _, err := c.Blob(testContext(t), "a", "sha256:short", 0)
	checkError(t, err, errdefs.IsInvalidArgument, "digest")
	if n := hits.Load(); n != 0 {
		t.Errorf("the upstream got %d requests, want 0", n)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	srv, _ := serve(t, http.NotFoundHandler())
	ca := caFile(t, srv)
	dir := t.TempDir()
	notPEM := dir + "/not.pem"
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		u        conf.Upstream
		wantText string
	}{
		{name: "https", u: conf.Upstream{URL: "https://registry.example"}},
		{name: "https with port and slash", u: conf.Upstream{URL: "https://registry.example:5000/"}},
		{name: "http when insecure", u: conf.Upstream{URL: "http://registry.example", TLS: conf.TLS{Insecure: true}}},
		{name: "CA", u: conf.Upstream{URL: "https://registry.example", TLS: conf.TLS{CA: ca}}},
		{name: "http", u: conf.Upstream{URL: "http://registry.example"}, wantText: "insecure"},
		{name: "ftp", u: conf.Upstream{URL: "ftp://registry.example"}, wantText: "scheme"},
		{name: "path", u: conf.Upstream{URL: "https://registry.example/v2"}, wantText: "host[:port] only"},
		{name: "user info", u: conf.Upstream{URL: "https://u:p@registry.example"}, wantText: "host[:port] only"},
		{name: "no host", u: conf.Upstream{URL: "https:///x"}, wantText: "host[:port] only"},
		{name: "docker hub alias", u: conf.Upstream{URL: "https://docker.io"}, wantText: "index.docker.io"},
		{name: "missing CA", u: conf.Upstream{URL: "https://registry.example", TLS: conf.TLS{CA: dir + "/none.pem"}}, wantText: "reading upstream CA"},
		{name: "CA not PEM", u: conf.Upstream{URL: "https://registry.example", TLS: conf.TLS{CA: notPEM}}, wantText: "no PEM"},
		{name: "cert without key", u: conf.Upstream{URL: "https://registry.example", TLS: conf.TLS{Cert: ca}}, wantText: "together"},
		{name: "bad key pair", u: conf.Upstream{URL: "https://registry.example", TLS: conf.TLS{Cert: ca, Key: notPEM}}, wantText: "client certificate"},
		{name: "missing credentials", u: conf.Upstream{URL: "https://registry.example", Auth: conf.Auth{CredentialsFile: dir + "/none"}}, wantText: "credentials"},
		{name: "open credentials", u: conf.Upstream{URL: "https://registry.example", Auth: conf.Auth{CredentialsFile: credentialsFile(t, "u", "p", 0o644)}}, wantText: "too open"},
		{name: "private credentials", u: conf.Upstream{URL: "https://registry.example", Auth: conf.Auth{CredentialsFile: credentialsFile(t, "u", "p", 0o600)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.u)
			if tt.wantText != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantText) {
					t.Fatalf("New = %v, want an error containing %q", err, tt.wantText)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if c.http.Proxy != nil {
				t.Error("the transport takes a proxy from the environment")
			}
			if c.http.MaxIdleConnsPerHost != 16 || c.http.ForceAttemptHTTP2 || !c.http.DisableCompression {
				t.Errorf("transport = %+v", c.http)
			}
			if slices.Contains(c.http.TLSClientConfig.NextProtos, "h2") {
				t.Errorf("the transport offers HTTP/2 (ALPN %v); blobs are fetched over HTTP/1.1", c.http.TLSClientConfig.NextProtos)
			}
			if c.http.TLSClientConfig.MinVersion != 0x0303 {
				t.Errorf("TLS MinVersion = %#x, want TLS 1.2", c.http.TLSClientConfig.MinVersion)
			}
			if c.http.ResponseHeaderTimeout != defaultResponseHeaderTimeout || c.http.TLSHandshakeTimeout != defaultDialTimeout {
				t.Errorf("timeouts = %v, %v", c.http.TLSHandshakeTimeout, c.http.ResponseHeaderTimeout)
			}
		})
	}

	c, err := New(conf.Upstream{URL: "https://registry.example:5000"}, WithTimeouts(time.Second, 2*time.Second), WithTimeouts(0, -1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Host() != "registry.example:5000" {
		t.Errorf("Host = %q", c.Host())
	}
	if c.http.TLSHandshakeTimeout != time.Second || c.http.ResponseHeaderTimeout != 2*time.Second {
		t.Errorf("timeouts = %v, %v; want 1s, 2s", c.http.TLSHandshakeTimeout, c.http.ResponseHeaderTimeout)
	}
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in                 string
		first, last, total int64
		wantErr            bool
	}{
		{in: "bytes 0-9/10", first: 0, last: 9, total: 10},
		{in: "bytes 5-9/*", first: 5, last: 9, total: -1},
		{in: "bytes */10", first: -1, last: -1, total: 10},
		{in: "bytes */*", wantErr: true},
		{in: "bytes 5-4/10", wantErr: true},
		{in: "bytes 0-10/10", wantErr: true},
		{in: "bytes 0-9", wantErr: true},
		{in: "items 0-9/10", wantErr: true},
		{in: "bytes a-9/10", wantErr: true},
		{in: "bytes -1-9/10", wantErr: true},
		{in: "", wantErr: true},
		{in: "bytes 0-9223372036854775806/9223372036854775807", first: 0, last: 9223372036854775806, total: 9223372036854775807},
		{in: "bytes 0-9223372036854775807/9223372036854775807", wantErr: true},
		{in: "bytes 0-9223372036854775808/*", wantErr: true},
		{in: "bytes */-1", wantErr: true},
	}
	for _, tt := range tests {
		first, last, total, err := parseContentRange(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("parseContentRange(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && (first != tt.first || last != tt.last || total != tt.total) {
			t.Errorf("parseContentRange(%q) = %d, %d, %d; want %d, %d, %d", tt.in, first, last, total, tt.first, tt.last, tt.total)
		}
	}
}

func TestRedactError(t *testing.T) {
	t.Parallel()
	// As http.Client returns it, before it is wrapped.
	var err error = &url.Error{Op: "Get", URL: "https://u:p@s3.example/b?X-Amz-Signature=secret", Err: io.EOF}
	redactError(err)
	if s := err.Error(); strings.Contains(s, "secret") || strings.Contains(s, "u:p") || !strings.Contains(s, "https://s3.example/b?REDACTED") {
		t.Errorf("redacted error = %q", s)
	}
}

// TestBlobsOverHTTP1 fetches a blob from an upstream that offers HTTP/2: the request
// arrives as HTTP/1.1.
func TestBlobsOverHTTP1(t *testing.T) {
	t.Parallel()
	content := []byte("a blob over HTTP/1.1")
	dgst := digest.FromBytes(content)
	protos := make(chan string, 8)
	srv := httptest.NewUnstartedServer(fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.Proto
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		_, _ = w.Write(content)
	}, nil))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv, conf.Upstream{})
	rc, _, err := c.Blob(testContext(t), "library/app", dgst, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, rc)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read %q, %v", got, err)
	}
	if p := <-protos; p != "HTTP/1.1" {
		t.Errorf("blob request over %s, want HTTP/1.1", p)
	}
}
