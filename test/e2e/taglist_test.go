package e2e

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/test/lab"
)

const slotTagList = 74

// TestTagListThroughMasters lists a repository's tags as go-containerregistry's
// remote (crane's client) does, through two masters and from the upstream itself,
// in pages of two: the lists are the same, each master asked the upstream for the
// list once, and an image pulled by a listed tag has the digest the upstream gives.
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
}
