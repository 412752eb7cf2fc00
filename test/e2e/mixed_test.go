package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// slotMixedLab is TestMixedLab's slot.
const slotMixedLab = 57

// mixedServed counts the blob GETs for each of digests that the masters answered
// with 200 or 206, and every request of theirs whose path names repo (under
// either name) at all.
func mixedServed(t *testing.T, l *lab.Lab, repo string, digests []string) (blobs map[string]int, total int) {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	blobs = map[string]int{}
	for _, r := range reqs {
		if !mixedNames(r.Path, repo) {
			continue
		}
		total++
		for _, d := range digests {
			if r.IsBlobGET() && strings.HasSuffix(r.Path, "/blobs/"+d) && (r.Status == 200 || r.Status == 206) {
				blobs[d]++
			}
		}
	}
	return blobs, total
}

// mixedProxied is mixedServed for the stock proxies' access logs.
func mixedProxied(t *testing.T, l *lab.Lab, repo string, digests []string) (blobs map[string]int, total int) {
	t.Helper()
	blobs = map[string]int{}
	for _, p := range l.Proxies() {
		entries, err := lab.ReadAccessLog(p.AccessLog)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if !mixedNames(e.Path, repo) {
				continue
			}
			total++
			if e.Method != "GET" || !strings.Contains(e.Path, "/blobs/") || (e.Status != 200 && e.Status != 206) {
				continue
			}
			for _, d := range digests {
				if e.Digest() == d {
					blobs[d]++
				}
			}
		}
	}
	return blobs, total
}

// mixedNames reports whether a request path names the upstream repository repo,
// by its upstream name or through the local prefix.
func mixedNames(path, repo string) bool {
	local := lab.LocalPrefix + "/" + strings.TrimPrefix(repo, lab.UpstreamPath+"/")
	return strings.Contains(path, "/v2/"+repo+"/") || strings.Contains(path, "/v2/"+local+"/")
}

// TestMixedLab runs three nodes in one lab, each in its own mode, as the clusters
// that hopless replaces run side by side with it: node-1 inprocess (the hopless
// plugin), node-2 nri (stock containerd, hosts.toml kept by hopless-nri) and node-3
// nginx, whose NGINX hop goes to distribution's stock proxies. Each pulls the same
// image by its own reference; node-1's and node-2's pulls are served by the
// masters, node-3's by the proxies alone.
func TestMixedLab(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	modes := []string{lab.ModeInprocess, lab.ModeNRI, lab.ModeNginx}
	l := upLab(t, slotMixedLab, 3, len(modes), func(o *lab.Options) {
		o.NodeModes, o.Proxies, o.NginxToProxies = modes, 3, true
	})
	for i, m := range modes {
		if got := l.NodeMode(i + 1); got != m {
			t.Fatalf("node-%d's mode is %q, want %q", i+1, got, m)
		}
	}
	if again, err := lab.Open(l.Dir); err != nil {
		t.Fatal(err)
	} else if got := again.NodeMode(3); got != lab.ModeNginx || !again.NginxToProxies {
		t.Errorf("lab.json: node-3's mode %q, nginx to proxies %v; want nginx, true", got, again.NginxToProxies)
	}
	t.Logf("lab up in %.1fs", time.Since(t0).Seconds())

	const repo, tag = lab.UpstreamPath + "/mixed", "v1"
	img := seed(t, l, repo, tag, 2, 256<<10)
	if ref := l.PullRefFor(3, repo, tag); ref != l.ImageHost+"/"+repo+":"+tag {
		t.Fatalf("node-3 pulls %s, want the upstream name %s", ref, l.ImageHost+"/"+repo+":"+tag)
	}

	for node := 1; node <= 2; node++ {
		before, _ := mixedServed(t, l, repo, img.Layers)
		ref := l.PullRefFor(node, repo, tag)
		if ref != l.PullRef(repo, tag) {
			t.Fatalf("node-%d (%s) pulls %s, want %s", node, modes[node-1], ref, l.PullRef(repo, tag))
		}
		if err := olPull(l, node, ref); err != nil {
			t.Fatalf("pull %s on node-%d (%s): %v", ref, node, modes[node-1], err)
		}
		plHasImage(t, l, node, img.Digest)
		after, _ := mixedServed(t, l, repo, img.Layers)
		for _, d := range img.Layers {
			if after[d] <= before[d] {
				t.Errorf("node-%d (%s): the masters served layer %s %d times before its pull and %d after; want more", node, modes[node-1], d, before[d], after[d])
			}
		}
		if _, n := mixedProxied(t, l, repo, img.Layers); n != 0 {
			t.Errorf("node-%d (%s): the stock proxies logged %d requests for %s; want none", node, modes[node-1], n, repo)
		}
	}

	_, mastersBefore := mixedServed(t, l, repo, img.Layers)
	ref := l.PullRefFor(3, repo, tag)
	if err := olPull(l, 3, ref); err != nil {
		t.Fatalf("pull %s on node-3 (nginx to the stock proxies): %v", ref, err)
	}
	plHasImage(t, l, 3, img.Digest)
	if _, n := mixedServed(t, l, repo, img.Layers); n != mastersBefore {
		t.Errorf("node-3 (nginx to the stock proxies): the masters logged %d requests for %s before its pull and %d after; want none of it", mastersBefore, repo, n)
	}
	proxied, _ := mixedProxied(t, l, repo, img.Layers)
	for _, d := range img.Layers {
		if proxied[d] == 0 {
			t.Errorf("node-3 (nginx to the stock proxies): no stock proxy served layer %s: %v", d, proxied)
		}
	}
	t.Logf("three pulls in three modes in %.1fs in all", time.Since(t0).Seconds())
}
