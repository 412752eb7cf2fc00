package transfer

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/registry"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/hopless/hopless/conf"
)

// imageHost is the configured image host. It does not resolve, so a request that
// reaches a server went through the RoundTripper.
const imageHost = "registry.invalid:5001"

const manifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`

// seen is one request as a server received it.
type seen struct {
	method, path, host, auth string
}

// fakeRegistry serves one manifest, tag v1 of repository app, and records requests.
// With user set, it wants basic auth.
type fakeRegistry struct {
	*httptest.Server

	mu         sync.Mutex
	user, pass string
	reqs       []seen
}

func newFakeRegistry(t *testing.T, user, pass string) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{user: user, pass: pass}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, seen{r.Method, r.URL.Path, r.Host, r.Header.Get("Authorization")})
	user, pass := f.user, f.pass
	f.mu.Unlock()
	if user != "" {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	dgst := digest.FromString(manifest)
	switch r.URL.Path {
	case "/v2/app/manifests/v1", "/v2/app/manifests/" + dgst.String():
		w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
		w.Header().Set("Docker-Content-Digest", dgst.String())
		w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, manifest)
		}
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeRegistry) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

// writeCA writes the certificate of srv as a PEM file.
func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func registryConf(url, ca string) conf.Registry {
	return conf.Registry{
		Host:      imageHost,
		Endpoints: []conf.Endpoint{{URL: url, Weight: 1}},
		TLS:       conf.TLS{CA: ca},
		Timeouts: conf.Timeouts{
			Dial:           conf.Duration{Duration: time.Second},
			ResponseHeader: conf.Duration{Duration: 3 * time.Second},
		},
	}
}

// fakeInner does what the local transfer service does with a pull source, except for
// an *registry.OCIRegistry, which stands for containerd's own path: it records it and
// succeeds.
type fakeInner struct {
	mu    sync.Mutex
	srcs  []any
	pulls []string // digests pulled through a source of ours
}

func (f *fakeInner) Transfer(ctx context.Context, src, _ any, _ ...ctrtransfer.Opt) error {
	f.mu.Lock()
	f.srcs = append(f.srcs, src)
	f.mu.Unlock()
	if _, ok := src.(*registry.OCIRegistry); ok {
		return nil
	}
	ir, ok := src.(ctrtransfer.ImageFetcher)
	if !ok {
		return fmt.Errorf("%T is not an ImageFetcher", src)
	}
	if s, ok := ir.(ctrtransfer.ImageResolverOptionSetter); ok {
		s.SetResolverOptions(ctrtransfer.WithMaxConcurrentDownloads(3))
	}
	name, desc, err := ir.Resolve(ctx)
	if err != nil {
		return fmt.Errorf("failed to resolve image: %w", err)
	}
	fetcher, err := ir.Fetcher(ctx, name)
	if err != nil {
		return err
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if digest.FromBytes(b) != desc.Digest {
		return fmt.Errorf("fetched %s, want %s", digest.FromBytes(b), desc.Digest)
	}
	f.mu.Lock()
	f.pulls = append(f.pulls, desc.Digest.String())
	f.mu.Unlock()
	return nil
}

func (f *fakeInner) sources() []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]any(nil), f.srcs...)
}

func newTransferrer(t *testing.T, rs ...conf.Registry) (*Transferrer, *fakeInner) {
	t.Helper()
	hosts, err := NewHosts(context.Background(), HostsConfig{Load: Static(&conf.Node{Registries: rs}), NewRT: FirstEndpoint})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	inner := &fakeInner{}
	return Wrap(inner, hosts, nil), inner
}

func ociRegistry(t *testing.T, ref string) *registry.OCIRegistry {
	t.Helper()
	r, err := registry.NewOCIRegistry(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPullThroughEndpoint(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "", "")
	tr, inner := newTransferrer(t, registryConf(srv.URL, writeCA(t, srv.Server)))

	if err := tr.Transfer(context.Background(), ociRegistry(t, imageHost+"/app:v1"), nil); err != nil {
		t.Fatal(err)
	}
	srcs := inner.sources()
	if len(srcs) != 1 {
		t.Fatalf("inner got %d transfers, want 1", len(srcs))
	}
	if s, ok := srcs[0].(*source); !ok || s.Image() != imageHost+"/app:v1" {
		t.Fatalf("inner got source %v, want ours for the same image", srcs[0])
	}
	reqs := srv.requests()
	if len(reqs) < 2 || reqs[0].method != http.MethodHead || reqs[0].path != "/v2/app/manifests/v1" {
		t.Fatalf("endpoint saw %+v, want a HEAD of the tag and then the manifest", reqs)
	}
	for _, r := range reqs {
		if r.host != strings.TrimPrefix(srv.URL, "https://") {
			t.Errorf("request %+v carries Host %q, want the endpoint's", r, r.host)
		}
	}
}

func TestOtherSourcesPassThrough(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "", "")
	tr, inner := newTransferrer(t, registryConf(srv.URL, writeCA(t, srv.Server)))

	other := ociRegistry(t, "other.invalid/app:v1")
	if err := tr.Transfer(context.Background(), other, nil); err != nil {
		t.Fatal(err)
	}
	notRegistry := "an image store, as in a push or export"
	if err := tr.Transfer(context.Background(), notRegistry, nil); err == nil {
		t.Fatal("fake inner accepted a string source")
	}
	srcs := inner.sources()
	if len(srcs) != 2 || srcs[0] != any(other) || srcs[1] != any(notRegistry) {
		t.Errorf("inner got %v, want the original sources unchanged", srcs)
	}
	if reqs := srv.requests(); len(reqs) != 0 {
		t.Errorf("endpoint saw %+v, want nothing", reqs)
	}
}

func TestFallback(t *testing.T) {
	t.Parallel()
	dead := newFakeRegistry(t, "", "")
	ca := writeCA(t, dead.Server)
	dead.Close() // the only endpoint refuses connections

	for _, fallback := range []bool{true, false} {
		t.Run(fmt.Sprint("fallback=", fallback), func(t *testing.T) {
			t.Parallel()
			rc := registryConf(dead.URL, ca)
			rc.Fallback = fallback
			tr, inner := newTransferrer(t, rc)
			src := ociRegistry(t, imageHost+"/app:v1")

			err := tr.Transfer(context.Background(), src, nil)
			srcs := inner.sources()
			if fallback {
				if err != nil {
					t.Fatalf("fallback pull failed: %v", err)
				}
				if len(srcs) != 2 || srcs[1] != any(src) {
					t.Fatalf("inner got %v, want ours and then the original source", srcs)
				}
				return
			}
			if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "is down") {
				t.Fatalf("error %v, want one wrapping errdefs.ErrUnavailable that names the endpoint", err)
			}
			if len(srcs) != 1 {
				t.Fatalf("inner got %d transfers, want 1 without fallback", len(srcs))
			}
		})
	}
}

func TestNoFallbackOnOtherErrors(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "", "")
	rc := registryConf(srv.URL, writeCA(t, srv.Server))
	rc.Fallback = true
	tr, inner := newTransferrer(t, rc)

	err := tr.Transfer(context.Background(), ociRegistry(t, imageHost+"/missing:v1"), nil)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("error %v, want not found", err)
	}
	if n := len(inner.sources()); n != 1 {
		t.Errorf("inner got %d transfers, want 1: a missing image is no reason to fall back", n)
	}
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "node", "s3cr3t")
	rc := registryConf(srv.URL, writeCA(t, srv.Server))
	rc.Auth.CredentialsFile = filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(rc.Auth.CredentialsFile, []byte("node:s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr, inner := newTransferrer(t, rc)

	if err := tr.Transfer(context.Background(), ociRegistry(t, imageHost+"/app:v1"), nil); err != nil {
		t.Fatal(err)
	}
	if len(inner.pulls) != 1 {
		t.Fatalf("pulled %v, want the manifest", inner.pulls)
	}
	reqs := srv.requests()
	if reqs[0].auth != "" || !strings.HasPrefix(reqs[len(reqs)-1].auth, "Basic ") {
		t.Errorf("endpoint saw %+v, want a challenge and then basic auth", reqs)
	}
}

func TestRedirectToOtherHostGoesDirect(t *testing.T) {
	t.Parallel()
	storage := newFakeRegistry(t, "", "")
	dgst := digest.FromString(manifest)
	endpoint := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			http.Redirect(w, r, storage.URL+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		storage.serve(w, r)
	}))
	t.Cleanup(endpoint.Close)
	// Both test servers use the same certificate.
	tr, inner := newTransferrer(t, registryConf(endpoint.URL, writeCA(t, endpoint)))

	if err := tr.Transfer(context.Background(), ociRegistry(t, imageHost+"/app@"+dgst.String()), nil); err != nil {
		t.Fatal(err)
	}
	if len(inner.pulls) != 1 {
		t.Fatalf("pulled %v, want the manifest", inner.pulls)
	}
	var gets int
	for _, r := range storage.requests() {
		if r.method == http.MethodGet {
			gets++
		}
	}
	if gets == 0 {
		t.Errorf("storage saw %+v, want the redirected GET", storage.requests())
	}
}

func TestNewHostsFactoryError(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	_, err := NewHosts(context.Background(), HostsConfig{
		Load:  Static(&conf.Node{Registries: []conf.Registry{{Host: imageHost}}}),
		NewRT: func(conf.Registry) (http.RoundTripper, error) { return nil, boom },
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), imageHost) {
		t.Errorf("error %v, want boom naming the host", err)
	}
}
