package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/metadata"
	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/core/transfer/image"
	"github.com/containerd/containerd/v2/core/transfer/local"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/balance"
)

// testImage is a one-layer image: its manifest, config and layer.
type testImage struct {
	manifest, config, layer []byte
	layerDesc               ocispec.Descriptor
}

func newTestImage(t *testing.T) testImage {
	t.Helper()
	img := testImage{config: []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)}
	img.layer = []byte(strings.Repeat("layer bytes that a master cached; ", 3000))
	img.layerDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(img.layer), Size: int64(len(img.layer))}
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(img.config), Size: int64(len(img.config))},
		Layers:    []ocispec.Descriptor{img.layerDesc},
	}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	img.manifest = b
	return img
}

// corruptRegistry serves img as app:v1. Its copy of the layer is corrupt (same
// size, other bytes) unless corrupt returns false for the request; a request with
// "Cache-Control: no-cache" is one that asks it to verify its copy.
type corruptRegistry struct {
	img     testImage
	corrupt func(*http.Request) bool

	mu         sync.Mutex
	layerGets  int
	reverified int // layer GETs with Cache-Control: no-cache
}

func (f *corruptRegistry) serve(w http.ResponseWriter, r *http.Request) {
	send := func(mediaType string, b []byte) {
		w.Header().Set("Content-Type", mediaType)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(b).String())
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	}
	switch r.URL.Path {
	case "/v2/":
		w.WriteHeader(http.StatusOK)
	case "/v2/app/manifests/v1", "/v2/app/manifests/" + digest.FromBytes(f.img.manifest).String():
		send(ocispec.MediaTypeImageManifest, f.img.manifest)
	case "/v2/app/blobs/" + digest.FromBytes(f.img.config).String():
		send("application/octet-stream", f.img.config)
	case "/v2/app/blobs/" + f.img.layerDesc.Digest.String():
		b := f.img.layer
		if r.Method == http.MethodGet {
			f.mu.Lock()
			f.layerGets++
			if r.Header.Get("Cache-Control") == "no-cache" {
				f.reverified++
			}
			f.mu.Unlock()
			if f.corrupt(r) {
				b = []byte(strings.ToUpper(string(b)))
			}
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Header().Set("Docker-Content-Digest", f.img.layerDesc.Digest.String())
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	default:
		http.NotFound(w, r)
	}
}

func (f *corruptRegistry) counts() (gets, reverified int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.layerGets, f.reverified
}

// newDB is a real content store: containerd's local store, with metadata on bolt.
func newDB(t *testing.T) *metadata.DB {
	t.Helper()
	dir := t.TempDir()
	cs, err := contentlocal.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(filepath.Join(dir, "meta.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bdb.Close() })
	db := metadata.NewDB(bdb, cs, nil)
	if err := db.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db
}

// corruptFixture is containerd's local transfer service writing to a real content
// store, and Hosts whose image host is served by a corruptRegistry.
type corruptFixture struct {
	reg   *corruptRegistry
	db    *metadata.DB
	inner ctrtransfer.Transferrer
	hosts *Hosts
}

func newCorruptFixture(t *testing.T, corrupt func(*http.Request) bool, newRT RoundTripperFactory) *corruptFixture {
	t.Helper()
	reg := &corruptRegistry{img: newTestImage(t), corrupt: corrupt}
	srv := httptest.NewTLSServer(http.HandlerFunc(reg.serve))
	t.Cleanup(srv.Close)
	hosts, err := NewHosts(context.Background(), HostsConfig{
		Load:  Static(&conf.Node{Registries: []conf.Registry{registryConf(srv.URL, writeCA(t, srv))}}),
		NewRT: newRT,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	db := newDB(t)
	return &corruptFixture{
		reg:   reg,
		db:    db,
		inner: local.NewTransferService(db.ContentStore(), metadata.NewImageStore(db), local.TransferConfig{}),
		hosts: hosts,
	}
}

// layerIngests are the content store's ingests of the layer.
func (f *corruptFixture) layerIngests(t *testing.T, ctx context.Context) []content.Status {
	t.Helper()
	sts, err := f.db.ContentStore().ListStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []content.Status
	for _, st := range sts {
		if strings.HasSuffix(st.Ref, f.reg.img.layerDesc.Digest.String()) {
			out = append(out, st)
		}
	}
	return out
}

// pullContext is a pull's context: CRI's namespace.
func pullContext() context.Context {
	return namespaces.WithNamespace(context.Background(), "k8s.io")
}

const testRef = imageHost + "/app:v1"

func balanced() RoundTripperFactory { return Balanced(balance.NewMetrics(nil)) }

func notReverified(r *http.Request) bool { return r.Header.Get("Cache-Control") != "no-cache" }

// TestDigestErrorSurvivesTransferService shows what Transferrer relies on, with
// containerd's own transfer service, content store and the balancer: the balancer's
// *balance.DigestError reaches the caller of Transfer through containerd's wrapping;
// containerd keeps the ingest of the corrupt blob, whose Status has no Expected
// digest; and a pull again without aborting it never succeeds, even when the master
// is asked to verify its copy: it commits the bytes it kept.
func TestDigestErrorSurvivesTransferService(t *testing.T) {
	t.Parallel()
	f := newCorruptFixture(t, notReverified, balanced())
	ctx := pullContext()
	layer := f.reg.img.layerDesc

	err := f.inner.Transfer(ctx, newSource(testRef, f.hosts.lookup(imageHost)), image.NewStore(testRef))
	var de *balance.DigestError
	if !errors.As(err, &de) || de.Want != layer.Digest || !errdefs.IsDataLoss(err) {
		t.Fatalf("Transfer: %v; want a *balance.DigestError for %s", err, layer.Digest)
	}
	sts := f.layerIngests(t, ctx)
	if len(sts) != 1 || sts[0].Offset != layer.Size || sts[0].Expected != "" {
		t.Fatalf("ingests of the layer %+v; want one, complete, without Expected", sts)
	}

	err = f.inner.Transfer(balance.WithReverify(ctx, layer.Digest), newSource(testRef, f.hosts.lookup(imageHost)), image.NewStore(testRef))
	if gets, _ := f.reg.counts(); err == nil || gets != 1 {
		t.Fatalf("second Transfer: %v after %d layer GETs; want it to fail on the kept ingest without a GET", err, gets)
	}
}

func TestCorruptBlobFetchedAgain(t *testing.T) {
	t.Parallel()
	f := newCorruptFixture(t, notReverified, balanced())
	ctx := pullContext()
	layer := f.reg.img.layerDesc
	tr := Wrap(f.inner, f.hosts, f.db.ContentStore())

	if err := tr.Transfer(ctx, ociRegistry(t, testRef), image.NewStore(testRef)); err != nil {
		t.Fatalf("Transfer: %v", err)
	}
	if gets, reverified := f.reg.counts(); gets != 2 || reverified != 1 {
		t.Errorf("registry saw %d layer GETs, %d with no-cache; want the corrupt one and one re-verified", gets, reverified)
	}
	b, err := content.ReadBlob(ctx, f.db.ContentStore(), layer)
	if err != nil || digest.FromBytes(b) != layer.Digest {
		t.Errorf("stored layer: %v, digest %s; want %s", err, digest.FromBytes(b), layer.Digest)
	}
	if _, err := metadata.NewImageStore(f.db).Get(ctx, testRef); err != nil {
		t.Errorf("image %s: %v", testRef, err)
	}
	if sts := f.layerIngests(t, ctx); len(sts) != 0 {
		t.Errorf("ingests left: %+v", sts)
	}
}

// hashing is a RoundTripperFactory that verifies blob bodies as the balancer does,
// without its health decisions: every round of a pull gets a DigestError.
func hashing(r conf.Registry) (http.RoundTripper, error) {
	rt, err := FirstEndpoint(r)
	if err != nil {
		return nil, err
	}
	return hashingRT{rt}, nil
}

type hashingRT struct{ http.RoundTripper }

func (h hashingRT) Close() error { return h.RoundTripper.(io.Closer).Close() }

func (h hashingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := h.RoundTripper.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusOK || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") {
		return resp, err
	}
	want, err := digest.Parse(req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:])
	if err != nil {
		return resp, nil
	}
	resp.Body = &hashingBody{ReadCloser: resp.Body, want: want, d: digest.Canonical.Digester()}
	return resp, nil
}

type hashingBody struct {
	io.ReadCloser
	want digest.Digest
	d    digest.Digester
}

func (b *hashingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.d.Hash().Write(p[:n])
	if err == io.EOF && b.d.Digest() != b.want {
		return n, &balance.DigestError{Endpoint: "test", Want: b.want, Got: b.d.Digest()}
	}
	return n, err
}

func TestCorruptBlobGivesUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		ingests bool
		gets    int
	}{
		{"after the rounds", true, 1 + ReverifyRounds},
		{"at once without a content store", false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newCorruptFixture(t, func(*http.Request) bool { return true }, hashing)
			var cs content.IngestManager
			if tc.ingests {
				cs = f.db.ContentStore()
			}
			err := Wrap(f.inner, f.hosts, cs).Transfer(pullContext(), ociRegistry(t, testRef), image.NewStore(testRef))
			var de *balance.DigestError
			if !errors.As(err, &de) {
				t.Fatalf("Transfer: %v; want the DigestError", err)
			}
			if gets, _ := f.reg.counts(); gets != tc.gets {
				t.Errorf("%d layer GETs, want %d", gets, tc.gets)
			}
		})
	}
}
