package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The test in this file checks pins as leases across masters: a node reports its
// images to one master, which sends the lease to its peer; the peer keeps the
// image through an eviction, and lets it go once the lease lapses. It uses slot 81.
const slotPinLeases = 81

// plPinTTL is the masters' api.pin_ttl, the shortest allowed.
const plPinTTL = 10 * time.Second

// plWaitMaster2 polls until master-2's blobs take at most limit bytes and cond holds.
func plWaitMaster2(t *testing.T, l *lab.Lab, limit int64, what string, cond func(map[string]int64) string) map[string]int64 {
	t.Helper()
	var blobs map[string]int64
	if why := clPoll(60*time.Second, func() string {
		blobs = clStoreBlobs(t, l, "master-2")
		if n := clTotal(blobs); n > limit {
			return fmt.Sprintf("master-2 holds %d bytes of blobs, over %d", n, limit)
		}
		return cond(blobs)
	}); why != "" {
		t.Fatalf("%s: %s", what, why)
	}
	return blobs
}

// TestPinLeases pins an image on master-1 with node-1's token and evicts on
// master-2: the image stays there while the lease holds, and goes once the lease
// lapsed without a renewal.
func TestPinLeases(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPinLeases, 2, 0, func(o *lab.Options) {
		o.Registryd = lab.RegistrydOptions{MaxBytes: "24MiB", EvictInterval: "1s", PinTTL: plPinTTL.String()}
	})
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/leases"
	token, err := l.NodeToken("node-1")
	if err != nil {
		t.Fatal(err)
	}

	img1 := seed(t, l, repo, "v1", 2, 8<<20)
	pinned := clPullHTTP(t, c, l, 2, repo, "v1", img1, nil)

	// The report goes to master-1 only.
	body := fmt.Sprintf(`{"source":"node-1","images":[{"image":%q,"digest":%q}]}`, clLocalName(repo)+":v1", img1.Digest)
	r := clMust(t, c, http.MethodPut, clMasterURL(l, 1)+"/hopless/v1/pins",
		map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}, strings.NewReader(body))
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"ttl_seconds":10`) {
		t.Fatalf("PUT pins on master-1: %d %s, want 200 with a 10s lease", r.Status, r.Body)
	}
	// master-1 counts a batch once master-2's answer is back, which may be after
	// master-2 counts the source: both are waited for.
	if why := clPoll(30*time.Second, func() string {
		if n := clMetric(t, l, 2, "hopless_registryd_pin_sources"); n != 1 {
			return fmt.Sprintf("master-2 counts %g pin sources, want 1", n)
		}
		if n := clMetric(t, l, 1, `hopless_registryd_pin_forwards_total{result="ok"}`); n < 1 {
			return fmt.Sprintf("master-1 counts %g pin batches sent, want at least 1", n)
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}

	// Two more images through master-2: 24 MiB of 48 must go, and not the pinned.
	var unpinned [][]string
	for i := 2; i <= 3; i++ {
		tag := fmt.Sprintf("v%d", i)
		img := seed(t, l, repo, tag, 2, 8<<20)
		unpinned = append(unpinned, clPullHTTP(t, c, l, 2, repo, tag, img, nil))
	}
	stored := plWaitMaster2(t, l, clTightMax, "after two more images", func(b map[string]int64) string {
		if in, _ := clPresent(b, unpinned[0]); len(in) > 0 {
			return fmt.Sprintf("blobs %v of the unpinned image v2 are still on master-2", in)
		}
		return ""
	})
	if _, out := clPresent(stored, pinned); len(out) > 0 {
		t.Fatalf("blobs %v of the image pinned on master-1 were evicted on master-2 (held %v)", out, stored)
	}

	// No renewal: once the lease lapsed, master-2 lets v1 go to make room for v4.
	if why := clPoll(60*time.Second, func() string {
		if n := clMetric(t, l, 2, "hopless_registryd_pin_leases_lapsed_total"); n != 1 {
			return fmt.Sprintf("master-2 counts %g lapsed leases, want 1", n)
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
	if n := clMetric(t, l, 2, "hopless_registryd_pin_sources"); n != 0 {
		t.Errorf("master-2 counts %g pin sources after the lapse, want 0", n)
	}
	img4 := seed(t, l, repo, "v4", 2, 8<<20)
	clPullHTTP(t, c, l, 2, repo, "v4", img4, nil)
	plWaitMaster2(t, l, clTightMax, "after the lease lapsed and v4 was pulled", func(b map[string]int64) string {
		if in, _ := clPresent(b, pinned); len(in) > 0 {
			return fmt.Sprintf("blobs %v of v1 are still on master-2 although its lease lapsed", in)
		}
		return ""
	})
}
