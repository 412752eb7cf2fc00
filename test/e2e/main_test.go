// Package e2e runs hopless end to end on real labs: real containerd, real crictl, and
// registryd serving real HTTPS. The labs use fixed loopback addresses, so the tests
// in this package run one after another.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// root finds the module root, where make puts bin/ and .tools/bin/.
func root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("module root not found")
		}
		dir = parent
	}
}

func labOptions(t testing.TB) lab.Options {
	r := root(t)
	return lab.Options{BinDir: filepath.Join(r, "bin"), ToolsDir: filepath.Join(r, ".tools", "bin"), Mode: lab.ModeStock}
}

// Each test that starts a lab owns a slot, a loopback network of its own, so tests
// run in parallel. Keep these unique.
const (
	slotLabCLI = iota
	slotBusyPort
	slotPullPath
	// Slots 100 and up belong to the benchmarks that TestBenchHarness runs
	// (bench_test.go), one each.
	// Slots 10..19 belong to the cache tests (cache_test.go).
	slotCacheSingleFlight = 10
	slotCacheStreaming    = 11
	slotCacheDisconnect   = 12
	slotCacheResume       = 13
	slotCacheKill         = 14
	slotCacheRange        = 15
	slotCacheCorrupt      = 16
	slotCacheTags         = 17
	slotCacheManifests    = 18
	slotCacheIndexPull    = 19
	// Slots 20..29 belong to the cluster tests (cluster_test.go).
	slotClusterPeerFill  = 20
	slotClusterOwnerDown = 21
	slotClusterPeerAuth  = 22
	slotClusterNoLoop    = 23
	slotClusterEvict     = 24
	slotClusterPins      = 25
	slotClusterPrefetch  = 26
	slotClusterReadOnly  = 27
	slotClusterAuth      = 28
	slotClusterBadInput  = 29
	// Slots 30..39 belong to the plugin tests (plugin_test.go).
	slotPluginWeights       = 30
	slotPluginKillMidPull   = 31
	slotPluginFrozenBefore  = 32
	slotPluginFrozenMidBlob = 33
	slotPluginFallback      = 34
	slotPluginNoFallback    = 35
	slotPluginUnconfigured  = 36
	slotPluginMetrics       = 37
	slotPluginStatus        = 38
	// 38 and 39 are spare.
	// Slots 40..59 belong to the failure-policy tests (outlier_test.go).
	slotOutlierUpstream503      = 40
	slotOutlierUpstream429      = 41
	slotOutlierUpstreamHang     = 42
	slotOutlierFrozenEarly      = 43
	slotOutlierFrozenJustBefore = 44
	slotOutlierTwoFrozenCold    = 45
	slotOutlierFlapping         = 46
	slotOutlierTrickle          = 47
	slotOutlierSingleMaster     = 48
	slotOutlierCorruptAll       = 49
	slotOutlierCRIRefuse        = 50
	slotOutlierCRIWarn          = 51
	slotOutlierRotateCA         = 52
	// 53..59 are spare.
	// Slots 85..89 belong to the tests of registryd under faults (faults_test.go).
	slotFaultScrubRot        = 85
	slotFaultTwoFrozenOwners = 86
	slotHostRoot             = 87
	// 88, 89 and 95..97 belong to the installer's tests (install_test.go).
	slotInstallKilled    = 88
	slotInstallInprocess = 89
	slotInstallNRI       = 95
	slotInstallRollback  = 96
	slotInstallRefuses   = 97
	// slotFleet is the simulated fleet's (fleet_test.go).
	slotFleet = 99
	// 98 is the masters' shared S3 bucket (s3_test.go); 53..55 are eviction, a kill
	// mid-upload and peers on it (s3_evict_test.go).
	slotS3Pull = 98
)

// upLab starts a lab in slot that is brought down when the test ends; tune adjusts
// the options first.
func upLab(t *testing.T, slot, masters, nodes int, tune ...func(*lab.Options)) *lab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the e2e tests run containerd and need root")
	}
	o := labOptions(t)
	o.Dir, o.Slot, o.Masters, o.Nodes = t.TempDir(), slot, masters, nodes
	for _, f := range tune {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := lab.Up(ctx, o)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		for _, p := range l.Procs {
			if p.Alive() {
				t.Errorf("%s (pid %d) still runs after down", p.Name, p.PID)
			}
		}
	})
	return l
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pull pulls ref on node with crictl and checks that the node now has the image with
// the expected manifest digest.
func pull(t *testing.T, l *lab.Lab, node int, ref, digest string) {
	t.Helper()
	ctx := ctxFor(t, 2*time.Minute)
	if _, err := l.Crictl(ctx, node, "pull", ref); err != nil {
		t.Fatalf("pull %s on node-%d: %v", ref, node, err)
	}
	out, err := l.Crictl(ctx, node, "images", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var imgs struct {
		Images []struct {
			RepoTags    []string `json:"repoTags"`
			RepoDigests []string `json:"repoDigests"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(out), &imgs); err != nil {
		t.Fatalf("crictl images: %v: %s", err, out)
	}
	for _, im := range imgs.Images {
		for _, d := range im.RepoDigests {
			if strings.HasSuffix(d, "@"+digest) {
				return
			}
		}
	}
	t.Fatalf("node-%d has no image with digest %s after pulling %s: %s", node, digest, ref, out)
}

// blobGETsUpstream counts blob GETs in the upstream's access log.
func blobGETsUpstream(t *testing.T, l *lab.Lab) map[string]int {
	t.Helper()
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, e := range lab.BlobGETs(entries) {
		n[e.Digest()]++
	}
	return n
}

// servedBy counts the blob GETs each master answered with 200 or 206.
func servedBy(t *testing.T, l *lab.Lab) map[string]int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range reqs {
		if r.IsBlobGET() && (r.Status == 200 || r.Status == 206) {
			n[r.Master]++
		}
	}
	return n
}

func seed(t *testing.T, l *lab.Lab, repo, tag string, layers int, size int64) lab.SeedResult {
	t.Helper()
	res, err := l.Seed(ctxFor(t, time.Minute), repo, tag, layers, size, false)
	if err != nil {
		t.Fatalf("seed %s:%s: %v", repo, tag, err)
	}
	return res
}

func describe(m map[string]int) string { return fmt.Sprint(m) }
