package e2e

import (
	"slices"
	"strings"
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
// Then a signature of that image is listed by a master's referrers API.
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
	subject, err := partial.Descriptor(img)
	if err != nil {
		t.Fatal(err)
	}
	sig := mutate.Subject(mutate.ConfigMediaType(empty.Image, "application/vnd.example.sig"), *subject).(v1.Image)
	sigRef, err := name.NewTag(l.Upstream + "/" + repo + ":sig")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(sigRef, sig, remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute))); err != nil {
		t.Fatal(err)
	}
	sigDigest, err := sig.Digest()
	if err != nil {
		t.Fatal(err)
	}
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
}
