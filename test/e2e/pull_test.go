package e2e

import (
	"fmt"
	"syscall"
	"testing"

	"github.com/hopless/hopless/test/lab"
)

// TestPullPath walks one lab through the pull path: a cold pull, a second node served
// from the masters' cache, a pull with the upstream down, and pulls with a master
// killed. Its nodes are one of each: stock hosts.toml, in-process and NRI.
func TestPullPath(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPullPath, 3, 3, func(o *lab.Options) {
		o.NodeModes = []string{lab.ModeStock, lab.ModeInprocess, lab.ModeNRI}
	})
	repo := lab.UpstreamPath + "/e2e"
	img := seed(t, l, repo, "v1", 3, 2<<20)
	ref := l.PullRef(repo, "v1")

	t.Run("cold pull through the masters", func(t *testing.T) {
		pull(t, l, 1, ref, img.Digest)
		up := blobGETsUpstream(t, l)
		for _, d := range img.Layers {
			if up[d] == 0 {
				t.Errorf("layer %s never reached the upstream on a cold pull: %s", d, describe(up))
			}
		}
		if served := servedBy(t, l); len(served) == 0 {
			t.Errorf("no master logged a blob GET")
		}
	})

	t.Run("second node is served from the cache", func(t *testing.T) {
		before := blobGETsUpstream(t, l)
		pull(t, l, 2, ref, img.Digest)
		after := blobGETsUpstream(t, l)
		for d, n := range after {
			if n != before[d] {
				t.Errorf("blob %s was fetched from upstream again (%d -> %d)", d, before[d], n)
			}
		}
	})

	t.Run("cached image pulls with the upstream stopped", func(t *testing.T) {
		if err := l.Stop("upstream"); err != nil {
			t.Fatal(err)
		}
		pull(t, l, 3, ref, img.Digest)
		if err := l.Start(ctxFor(t, 30e9), "upstream"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pulls succeed with one master killed", func(t *testing.T) {
		imgs := map[int]lab.SeedResult{}
		for node := 1; node <= 3; node++ {
			imgs[node] = seed(t, l, repo, fmt.Sprintf("k%d", node), 2, 1<<20)
		}
		before := servedBy(t, l)
		if err := l.Signal("master-1", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for node := 1; node <= 3; node++ {
			pull(t, l, node, l.PullRef(repo, fmt.Sprintf("k%d", node)), imgs[node].Digest)
		}
		after := servedBy(t, l)
		if after["master-1"] != before["master-1"] {
			t.Errorf("killed master-1 served blobs: %s -> %s", describe(before), describe(after))
		}
		if after["master-2"]+after["master-3"] <= before["master-2"]+before["master-3"] {
			t.Errorf("no other master served the pulls: %s -> %s", describe(before), describe(after))
		}
	})
}
