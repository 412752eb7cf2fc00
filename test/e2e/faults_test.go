package e2e

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file put registryd under faults that it must find or route
// around by itself (issue 8, "registryd under faults"):
//   - TestFaultScrubFindsRot: one byte of a stored blob flips while its size, mtime
//     and inode stay the same, which is all a read checks of a blob verified before.
//     The background scrub (storage.scrub_interval 2s here) finds it and removes
//     it before anything is served from it, and the node's pull that follows gets
//     the blob fetched again from the upstream and does not fail.
//   - TestFaultTwoFrozenOwners: the owners of an image's blobs, master-1 and
//     master-2, are frozen (SIGSTOP: their sockets accept, nothing answers). A
//     client of master-3 still gets every blob: master-3's request to a frozen
//     owner is cut by the health probe it sends after 500 ms, the owner is ejected,
//     and master-3 fills from the upstream itself.
//
// They assert causes and counts: the upstream's and the masters' access logs, the
// masters' metrics and log records, the files in a master's store and the digests
// served. Nothing asserts how long anything took; every wait polls with a generous
// limit, and reaching it fails the test.

// TestFaultScrubFindsRot: a byte flipped in a stored blob, its metadata restored, is
// found by the scrub (counted as bad once, the file removed) with no request served
// from the rotten copy meanwhile; a node's pull afterwards succeeds, the master
// fetching that blob, and only that blob, from the upstream a second time.
func TestFaultScrubFindsRot(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotFaultScrubRot, 1, 1, inprocess(), func(o *lab.Options) { o.Registryd.ScrubInterval = "2s" })
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/scrub-rot"
	img := seed(t, l, repo, "v1", 2, 1<<20)
	blobs := clPullHTTP(t, c, l, 1, repo, "v1", img, nil) // the config, then the layers
	rotten := img.Layers[0]
	path, err := l.StoredBlobPath(1, rotten)
	if err != nil {
		t.Fatal(err)
	}
	var stored int64
	for _, d := range blobs {
		p, err := l.StoredBlobPath(1, d)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, waitLimit, "master-1 stores "+d, func() bool { return faFileDigest(p) == d })
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		stored += fi.Size()
	}
	// The scrub has hashed the stored blobs before the rot (its first pass ran on
	// an empty store): what it finds later is the change, not a blob it never
	// looked at.
	eventually(t, waitLimit, "master-1's scrub hashes the stored blobs", func() bool {
		return metric(t, l, 1, "hopless_registryd_scrubbed_bytes_total", nil) >= float64(stored)
	})
	if n := metric(t, l, 1, "hopless_registryd_scrub_bad_blobs_total", nil); n != 0 {
		t.Fatalf("the scrub counted %v bad blobs before any rot", n)
	}
	served := len(faMasterBlobGETs(t, l, "master-1", rotten))

	if err := l.CorruptStoredBlob(1, rotten); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLimit, "master-1's scrub finds the rotten "+rotten, func() bool {
		return metric(t, l, 1, "hopless_registryd_scrub_bad_blobs_total", nil) >= 1
	})
	if n := metric(t, l, 1, "hopless_registryd_scrub_bad_blobs_total", nil); n != 1 {
		t.Errorf("the scrub counted %v bad blobs, want 1 (one byte of one blob flipped)", n)
	}
	// The scrub's find counts as the store's verify failure, and it is the only one:
	// no read hashed the rotten copy.
	if n := metric(t, l, 1, "hopless_registryd_verify_failures_total", map[string]string{"where": "store"}); n != 1 {
		t.Errorf(`verify_failures_total{where="store"} = %v after the scrub, want 1`, n)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the rotten blob's file %s is still there after the scrub (stat: %v)", path, err)
	}
	var bad []map[string]any
	for _, rec := range masterLogLines(t, l, 1, "scrub pass done") {
		if rec["bad"] != float64(0) {
			bad = append(bad, rec)
		}
	}
	if len(bad) != 1 || bad[0]["bad"] != float64(1) || bad[0]["errors"] != float64(0) {
		t.Errorf("master-1's scrub passes that found bad blobs: %v; want one, with bad 1 and errors 0", bad)
	}
	// Nothing asked for the blob between the rot and its removal, so nothing was
	// served from the rotten copy; the upstream has not been asked again yet.
	if got := faMasterBlobGETs(t, l, "master-1", rotten); len(got) != served {
		t.Errorf("master-1 logged %d GETs of %s after its rot, before the scrub removed it, want none", len(got)-served, rotten)
	}
	if gets := upstreamGETs(t, l, rotten); len(gets) != 1 {
		t.Errorf("the upstream served %s %d times before the node's pull, want once (the first fill):%s", rotten, len(gets), describeEntries(gets))
	}

	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	for _, d := range blobs {
		want := 1
		if d == rotten {
			want = 2 // the first fill, and the refill of the copy the scrub removed
		}
		gets := upstreamGETs(t, l, d)
		if len(gets) != want {
			t.Errorf("the upstream served %s %d times, want %d:%s", d, len(gets), want, describeEntries(gets))
		}
		for _, e := range gets {
			if e.Status != http.StatusOK || e.Aborted || e.Range != "" {
				t.Errorf("upstream GET of %s was not one whole 200: %+v", d, e)
			}
		}
	}
	if got := faMasterBlobGETs(t, l, "master-1", rotten); len(got) <= served {
		t.Errorf("master-1 logged no GET of %s for the node's pull", rotten)
	} else if r := got[len(got)-1]; r.Status != http.StatusOK {
		t.Errorf("master-1 answered the node's GET of %s with %d", rotten, r.Status)
	}
	if n := olMetrics(t, l, 1).sum("hopless_plugin_digest_mismatches_total", nil); n != 0 {
		t.Errorf("node-1 counted %v digest mismatches: it was served rotten bytes", n)
	}
	if n := metric(t, l, 1, "hopless_registryd_verify_failures_total", nil); n != 1 {
		t.Errorf("master-1 counts %v verify failures after the pull, want still 1 (the scrub's)", n)
	}
	eventually(t, waitLimit, "master-1 stores "+rotten+" whole again", func() bool {
		return faFileDigest(path) == rotten
	})
	if n := metric(t, l, 1, "hopless_registryd_scrub_bad_blobs_total", nil); n != 1 {
		t.Errorf("the scrub counted %v bad blobs in the end, want 1", n)
	}
}

// faFileDigest is the sha256 digest of the file at path, or "" when it cannot be
// read.
func faFileDigest(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// faMasterBlobGETs lists master's logged GETs of blob d, in log order.
func faMasterBlobGETs(t *testing.T, l *lab.Lab, master, d string) []lab.Request {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	var out []lab.Request
	for _, r := range reqs {
		if r.Master == master && r.IsBlobGET() && strings.HasSuffix(r.Path, "/blobs/"+d) {
			out = append(out, r)
		}
	}
	return out
}

// faOwner is the master that owns digest d among the masters not in down, as
// registryd/peers computes it (see clOwner, which is faOwner with none down).
func faOwner(l *lab.Lab, d string, down map[string]bool) string {
	best, bestScore := "", math.Inf(-1)
	for i, m := range l.Masters {
		if down[m.Name] {
			continue
		}
		sum := sha256.Sum256([]byte(clMasterURL(l, i+1) + "\x00" + d))
		h := (float64(binary.BigEndian.Uint64(sum[:8])>>11) + 0.5) / (1 << 53)
		if sc := -1 / math.Log(h); sc > bestScore {
			best, bestScore = m.Name, sc
		}
	}
	return best
}

// faProbeCause is how registryd's peer client words a request to an owner cut by
// the health probe: the owner did not answer /healthz while the request waited.
const faProbeCause = "no answer to a health check while the request waited"

// TestFaultTwoFrozenOwners freezes master-1 and master-2, the owners of every layer
// of an image, and GETs the layers from master-3, which has never seen them. Each
// comes whole with its digest and no error. The cause is master-3's own: its
// request to a frozen owner is cut by the health probe (500 ms, then 500 ms for the
// check) well before the peer's response_header (5s), let alone the node's (10s);
// the owner is ejected once, and master-3 fetches each layer from the upstream
// itself, once. Health checks are made rare (peers.health_interval 1h), so that
// only the requests mark the owners down and the counts are exact.
func TestFaultTwoFrozenOwners(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotFaultTwoFrozenOwners, 3, 0, func(o *lab.Options) { o.Registryd.PeerHealthInterval = "1h" })
	clWaitPeersUp(t, l)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/two-frozen-owners"
	m1, m2 := l.Masters[0].Name, l.Masters[1].Name

	// An image whose layers master-1 and master-2 own, both of them, and a layer
	// of another image for each of them to warm master-3's connections with.
	var img lab.SeedResult
	warm := map[string]string{}
	for n := 1; img.Digest == "" || warm[m1] == "" || warm[m2] == ""; n++ {
		if n > 40 {
			t.Fatalf("seeded 40 images and found no image whose layers %s and %s own, both (or no layer of another image for each)", m1, m2)
		}
		s := seed(t, l, repo, fmt.Sprintf("s%d", n), 3, 64<<10)
		owners := map[string]int{}
		for _, d := range s.Layers {
			owners[clOwner(l, d)]++
		}
		if img.Digest == "" && owners[m1] > 0 && owners[m2] > 0 && owners[m1]+owners[m2] == len(s.Layers) {
			img = s
			continue
		}
		for _, d := range s.Layers {
			if o := clOwner(l, d); o != "master-3" && warm[o] == "" {
				warm[o] = d
			}
		}
	}
	// master-3 fills the warm-up layers from their owners: the owner model
	// matches the masters, and master-3 holds a connection to each owner, so that
	// its requests below wait for an answer on it (and the probe decides) rather
	// than in a TLS handshake.
	for _, m := range []string{m1, m2} {
		if err := clGetBlob(c, l, 3, repo, warm[m], nil); err != nil {
			t.Fatal(err)
		}
	}
	fills := func(peer, result string) float64 {
		return metric(t, l, 3, "hopless_registryd_peer_fills_total", map[string]string{"peer": peer, "result": result})
	}
	for i, m := range []string{m1, m2} {
		if n := fills(clMasterURL(l, i+1), "ok"); n != 1 {
			t.Fatalf("master-3 filled %v blobs from %s, want 1 (the warm-up layer %s it owns)", n, m, warm[m])
		}
	}
	for _, d := range img.Layers {
		if gets := upstreamGETs(t, l, d); len(gets) != 0 {
			t.Fatalf("the upstream served layer %s before the test asked for it:%s", d, describeEntries(gets))
		}
	}
	upBlobs := func() float64 {
		return metric(t, l, 3, "hopless_registryd_upstream_requests_total", map[string]string{"kind": "blob", "code": "200"})
	}
	upBefore := upBlobs()

	olFreeze(t, l, m1, m2) // thawed when the test ends

	// Whom master-3 asks for each layer, in order: the owner among the masters it
	// has not ejected yet, and nobody (master-3 itself) once both are out.
	down := map[string]bool{}
	asked := map[string][]string{}
	for _, d := range img.Layers {
		if o := faOwner(l, d, down); o != "master-3" {
			asked[o] = append(asked[o], d)
			down[o] = true
		}
		if err := clGetBlob(c, l, 3, repo, d, nil); err != nil {
			t.Errorf("master-3 with %s and %s frozen: %v", m1, m2, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// master-3 fetched each layer itself: the frozen masters could not have, and
	// master-3 counts one upstream blob GET per layer. A fill attempt that failed
	// (under load, the upstream's headers can miss upstream.response_header) is
	// retried, and master-3 says so in its log: each such retry is one more GET,
	// and none is allowed without it.
	retried := map[string]int{}
	for _, rec := range masterLogLines(t, l, 3, "fill attempt failed, retrying") {
		d, _ := rec["digest"].(string)
		retried[d]++
		t.Logf("master-3 retried a fill of %s: %v", d, rec["error"])
	}
	for _, d := range img.Layers {
		gets := upstreamGETs(t, l, d)
		whole := len(gets) == 1+retried[d]
		for _, g := range gets {
			whole = whole && g.Status == http.StatusOK && !g.Aborted && g.Range == ""
		}
		if !whole {
			t.Errorf("layer %s: want one whole upstream GET (master-3's) and one per failed attempt (%d), got:%s",
				d, retried[d], describeEntries(gets))
		}
	}
	if n := upBlobs() - upBefore; n != float64(len(img.Layers)) {
		t.Errorf("master-3 made %v upstream blob GETs answered 200 with %s and %s frozen, want %d (one per layer)", n, m1, m2, len(img.Layers))
	}
	for _, d := range img.Layers {
		if !clServedBlob(t, l, "master-3", d) {
			t.Errorf("master-3's log shows no 200 GET of layer %s", d)
		}
	}

	// Each frozen owner was asked once, failed by the probe, and ejected: the
	// requests that followed did not wait on it.
	ejected := map[string][]string{}
	for _, rec := range masterLogLines(t, l, 3, "peer ejected after a failed request") {
		p, _ := rec["peer"].(string)
		e, _ := rec["err"].(string)
		ejected[p] = append(ejected[p], e)
	}
	fellBack := map[string][]string{}
	for _, rec := range masterLogLines(t, l, 3, "peer fill failed, falling back to upstream") {
		p, _ := rec["peer"].(string)
		d, _ := rec["digest"].(string)
		fellBack[p] = append(fellBack[p], d)
	}
	for i, m := range []string{m1, m2} {
		u := clMasterURL(l, i+1)
		if len(asked[m]) != 1 {
			t.Fatalf("the owner model has master-3 ask %s %d times (%v), want once", m, len(asked[m]), asked[m])
		}
		if n := fills(u, "error"); n != 1 {
			t.Errorf("master-3 counts %v failed fills from the frozen %s, want 1", n, m)
		}
		if n := fills(u, "ok"); n != 1 {
			t.Errorf("master-3 counts %v fills from %s, want 1 (the warm-up before the freeze)", n, m)
		}
		if errs := ejected[u]; len(errs) != 1 || !strings.Contains(errs[0], faProbeCause) {
			t.Errorf("master-3 ejected the frozen %s with %q; want once, by the health probe (%q)", m, errs, faProbeCause)
		}
		if ds := fellBack[u]; len(ds) != 1 || ds[0] != asked[m][0] {
			t.Errorf("master-3 fell back to the upstream from %s for %v, want for %s only", m, ds, asked[m][0])
		}
	}
	t.Logf("master-3 asked the frozen owners for %v and ejected them with %v", asked, ejected)
	if len(ejected) != 2 {
		t.Errorf("master-3 ejected %d peers, want the 2 frozen ones: %v", len(ejected), ejected)
	}
}
