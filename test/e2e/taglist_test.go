package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/test/lab"
)

const slotTagList = 74

// TestTagListThroughMasters lists a repository's tags as go-containerregistry's
// remote (crane's client) does, through two masters and from the upstream itself,
// in pages of two: the lists are the same, each master asked the upstream for the
// list once, and an image pulled by a listed tag has the digest the upstream gives.
// Then a signature of that image is listed by a master's referrers API; and tags,
// an index, its images and the referrers are read through the lab's Service name,
// whose connections land on both masters.
func TestTagListThroughMasters(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotTagList, 2, 0)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/listed"
	digests := map[string]string{}
	for _, tag := range []string{"v2", "v1", "latest", "v10", "rc-1"} {
		digests[tag] = seed(t, l, repo, tag, 1, 4<<10).Digest
	}
	list := func(host, repo string) []string {
		t.Helper()
		r, err := name.NewRepository(host + "/" + repo)
		if err != nil {
			t.Fatal(err)
		}
		tags, err := remote.List(r, remote.WithTransport(c.Transport), remote.WithPageSize(2), remote.WithContext(ctxFor(t, time.Minute)))
		if err != nil {
			t.Fatalf("listing %s: %v", r, err)
		}
		return tags
	}
	want := list(l.Upstream, repo)
	if len(want) != len(digests) {
		t.Fatalf("the upstream lists %v, want the %d tags seeded", want, len(digests))
	}
	for i := 1; i <= 2; i++ {
		got := list(lab.MasterAddr(l.Slot, i), clLocalName(repo))
		if !slices.Equal(got, want) {
			t.Errorf("master-%d lists %v, the upstream %v", i, got, want)
		}
	}
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	lists := 0
	for _, e := range entries {
		if e.Method == "GET" && strings.HasSuffix(e.Path, "/"+repo+"/tags/list") {
			lists++
		}
	}
	// The upstream's own list above is paged by two: 3 pages. Each master lists
	// the whole repository at once.
	if lists != 3+2 {
		t.Errorf("the upstream answered %d tag lists, want 3 (the test's own, in pages of 2) + 1 per master", lists)
	}
	ref, err := name.NewTag(lab.MasterAddr(l.Slot, 2) + "/" + clLocalName(repo) + ":" + want[0])
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref, remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != digests[want[0]] {
		t.Errorf("%s resolves to %s, the upstream's is %s", ref, desc.Digest, digests[want[0]])
	}

	// A signature pushed for that image (the upstream, distribution, keeps it under
	// the referrers tag) is listed by the master's referrers API, and pulls.
	img, err := remote.Image(ref, remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	subject, sigDigest := pushSignature(t, l, c, repo, img)
	subjRef, err := name.NewDigest(lab.MasterAddr(l.Slot, 1) + "/" + clLocalName(repo) + "@" + subject.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Referrers(subjRef, remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute)),
		remote.WithFilter("artifactType", "application/vnd.example.sig"))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != sigDigest {
		t.Fatalf("master-1 lists the referrers %+v, want the signature %s", im.Manifests, sigDigest)
	}
	if _, err := remote.Get(subjRef.Context().Digest(sigDigest.String()), remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute))); err != nil {
		t.Errorf("the listed signature does not pull through master-1: %v", err)
	}

	// The same through the Service name, as in-cluster clients reach the masters:
	// each connection goes to the next master (the certificates name the Service),
	// so one client's requests land on both, which fill from each other.
	svc := svcTransport(t, l)
	sopts := []remote.Option{remote.WithTransport(svc), remote.WithContext(ctxFor(t, time.Minute))}
	srepo, err := name.NewRepository(lab.ServiceName + ":5001/" + clLocalName(repo))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := remote.List(srepo, sopts...); err != nil || !slices.Equal(got, want) {
		t.Errorf("the Service lists %v (%v), the upstream %v", got, err, want)
	}
	idxTag := "multi"
	multi, err := l.Seed(ctxFor(t, time.Minute), repo, idxTag, 1, 4<<10, true)
	if err != nil {
		t.Fatal(err)
	}
	ii, err := remote.Index(srepo.Tag(idxTag), sopts...)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := ii.Digest(); d.String() != multi.Digest {
		t.Errorf("the index by tag through the Service is %s, the upstream's %s", d, multi.Digest)
	}
	im2, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im2.Manifests {
		img, err := remote.Image(srepo.Digest(m.Digest.String()), sopts...)
		if err != nil {
			t.Fatalf("image %s of the index through the Service: %v", m.Digest, err)
		}
		if err := validateImage(img); err != nil {
			t.Errorf("image %s of the index through the Service: %v", m.Digest, err)
		}
	}
	sidx, err := remote.Referrers(srepo.Digest(subject.Digest.String()), sopts...)
	if err != nil {
		t.Fatal(err)
	}
	if sm, err := sidx.IndexManifest(); err != nil || len(sm.Manifests) != 1 || sm.Manifests[0].Digest != sigDigest {
		t.Errorf("referrers through the Service: %+v (%v), want the signature", sm, err)
	}
	for i, n := range svc.dials() {
		if n == 0 {
			t.Errorf("no connection through the Service reached master-%d", i+1)
		}
	}
}

// pushSignature pushes repo:sig to the upstream: an artifact of type
// application/vnd.example.sig whose subject is img. go-containerregistry keeps the
// referrers tag of a registry without the referrers API (distribution) up to date.
// It returns the subject's descriptor and the signature's digest.
func pushSignature(t *testing.T, l *lab.Lab, c *http.Client, repo string, img v1.Image) (*v1.Descriptor, v1.Hash) {
	t.Helper()
	subject, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	sig := mutate.Subject(mutate.ConfigMediaType(empty.Image, "application/vnd.example.sig"), *subject).(v1.Image)
	ref, err := name.NewTag(l.Upstream + "/" + repo + ":sig")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, sig, remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute))); err != nil {
		t.Fatal(err)
	}
	d, err := sig.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return subject, d
}

// validateImage reads every layer of img and checks it against its digest.
func validateImage(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, layer := range layers {
		rc, err := layer.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc) // go-containerregistry verifies the digest at EOF
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// serviceTransport reaches the masters by lab.ServiceName, as a headless Service's
// clients do: every connection dials the next master's address, and TLS verifies
// the Service name.
type serviceTransport struct {
	*http.Transport
	mu    sync.Mutex
	next  int
	count []int
}

func svcTransport(t *testing.T, l *lab.Lab) *serviceTransport {
	t.Helper()
	pool, err := lab.LoadPool(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	st := &serviceTransport{count: make([]int, len(l.Masters))}
	var d net.Dialer
	st.Transport = &http.Transport{
		Proxy:             nil,
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: lab.ServiceName, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != lab.ServiceName+":5001" {
				return nil, fmt.Errorf("dialing %s: only the Service name is reachable here", addr)
			}
			st.mu.Lock()
			i := st.next % len(st.count)
			st.next++
			st.count[i]++
			st.mu.Unlock()
			return d.DialContext(ctx, network, lab.MasterAddr(l.Slot, i+1))
		},
	}
	t.Cleanup(st.CloseIdleConnections)
	return st
}

// dials is how many connections went to each master, master-1 first.
func (st *serviceTransport) dials() []int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.count)
}
