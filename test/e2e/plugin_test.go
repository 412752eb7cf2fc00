package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file run our containerd build (lab.ModeInprocess): CRI pulls of
// the lab's image host go through the hopless plugin, which balances them over the
// masters by weight and health inside containerd. They pull with crictl, as kubelet
// would, and judge by what the masters and the upstream logged, by the node's
// containerd metrics, and by the digest of the image the node ends up with.

const (
	// plWait bounds every poll and every pull; reaching it fails the test.
	plWait = time.Minute
	// plFrozenBound is the bound on what one frozen master may add to a
	// pull. Stock hosts.toml pays containerd's 30 s response-header timeout per
	// request there (150 s for a 4-layer pull).
	plFrozenBound = 2 * time.Second
)

// inprocess runs the lab's nodes on bin/containerd with the hopless plugin; weights
// are the masters' weights (none: 1 each).
func inprocess(weights ...int) func(*lab.Options) {
	return func(o *lab.Options) {
		o.Mode = lab.ModeInprocess
		o.Weights = weights
	}
}

// withFallback lets the nodes fall back to the image host's hosts.toml (the
// upstream) when every master is down.
func withFallback(o *lab.Options) { o.Fallback = true }

// plPull pulls ref on node with crictl and reports how long it took. The error
// holds crictl's output.
func plPull(l *lab.Lab, node int, ref string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), plWait)
	defer cancel()
	start := time.Now()
	_, err := l.Crictl(ctx, node, "pull", ref)
	return time.Since(start), err
}

// plHasImage checks that node has an image whose repo digest is digest.
func plHasImage(t *testing.T, l *lab.Lab, node int, digest string) {
	t.Helper()
	out, err := l.Crictl(ctxFor(t, plWait), node, "images", "--digests", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "@"+digest+`"`) {
		t.Errorf("node-%d has no image with digest %s: %s", node, digest, out)
	}
}

// plFaults makes the upstream inject f into the requests that start from now on.
func plFaults(t *testing.T, l *lab.Lab, f lab.Faults) {
	t.Helper()
	if err := lab.WriteFaults(l.FaultsFile(), f); err != nil {
		t.Fatal(err)
	}
}

// plEndpoint is the endpoint label of a master in the node's hopless metrics.
func plEndpoint(m lab.Master) string { return "https://" + m.Addr }

// plNodeMetrics reads node's containerd metrics (/v1/metrics on the metrics
// address of an inprocess node).
func plNodeMetrics(t *testing.T, l *lab.Lab, node int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "http://" + lab.NodeMetricsAddr(l.Slot, node) + "/v1/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", u, resp.Status, err)
	}
	return string(body)
}

// plRegistryRE matches the registry API requests that the balancer spreads: the
// manifests and blobs of a repository. The API base /v2/ (the health checks) and
// /hopless/v1/peer (masters filling from each other) do not match.
var plRegistryRE = regexp.MustCompile(`^/v2/.+/(manifests|blobs)/[^/]+$`)

// plServed counts, per master, the manifest and blob GETs and HEADs whose path
// contains part.
func plServed(t *testing.T, l *lab.Lab, part string) map[string]int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range reqs {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && plRegistryRE.MatchString(r.Path) && strings.Contains(r.Path, part) {
			n[r.Master]++
		}
	}
	return n
}

// plSeedMany pushes repo:<prefix>NN for NN in 00..n-1, each with its own random
// layers, a few at a time, and returns them by tag.
func plSeedMany(t *testing.T, l *lab.Lab, repo, prefix string, n, layers int, size int64) map[string]lab.SeedResult {
	t.Helper()
	ctx := ctxFor(t, plWait)
	var (
		mu   sync.Mutex
		out  = map[string]lab.SeedResult{}
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 4)
	)
	for i := range n {
		tag := fmt.Sprintf("%s%02d", prefix, i)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			res, err := l.Seed(ctx, repo, tag, layers, size, false)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("seed %s:%s: %w", repo, tag, err))
				return
			}
			out[tag] = res
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	return out
}

// plWarm makes every master hold repo:tag: its manifest by tag and by digest, its
// config and its layers, each fetched straight from each master.
func plWarm(t *testing.T, l *lab.Lab, repo, tag string) {
	t.Helper()
	c := labHTTP(t, l)
	ctx := ctxFor(t, plWait)
	for i := range l.Masters {
		m, err := fetchManifest(ctx, c, l, i+1, localName(repo), tag, "")
		if err != nil || m.Status != http.StatusOK {
			t.Fatalf("warming %s:%s on %s: manifest: %v %v", repo, tag, l.Masters[i].Name, m, err)
		}
		if byDigest, err := fetchManifest(ctx, c, l, i+1, localName(repo), m.Digest, ""); err != nil || byDigest.Status != http.StatusOK {
			t.Fatalf("warming %s@%s on %s: manifest: %v %v", repo, m.Digest, l.Masters[i].Name, byDigest, err)
		}
		var man struct {
			Config struct {
				Digest string `json:"digest"`
			} `json:"config"`
			Layers []struct {
				Digest string `json:"digest"`
			} `json:"layers"`
		}
		if err := json.Unmarshal(m.Body, &man); err != nil || man.Config.Digest == "" {
			t.Fatalf("warming %s:%s: manifest is not an image manifest (%v): %s", repo, tag, err, m)
		}
		blobs := []string{man.Config.Digest}
		for _, ly := range man.Layers {
			blobs = append(blobs, ly.Digest)
		}
		for _, d := range blobs {
			if r := getBlob(ctx, c, l, i+1, repo, d, ""); !r.complete() || r.Status != http.StatusOK || sha(r.Body) != d {
				t.Fatalf("warming blob %s on %s: %s", d, l.Masters[i].Name, r)
			}
		}
	}
}

// TestPluginWeights checks that the plugin spreads a node's requests over the
// masters by their weights: 3:1:1 gives 60/20/20 % of the manifest and blob
// requests over 30 pulls.
func TestPluginWeights(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginWeights, 3, 1, inprocess(3, 1, 1))
	repo := lab.UpstreamPath + "/weights"
	// Distinct images: a layer the node already has is not fetched again.
	imgs := plSeedMany(t, l, repo, "t", 30, 3, 64<<10)
	for tag, img := range imgs {
		if _, err := plPull(l, 1, l.PullRef(repo, tag)); err != nil {
			t.Fatal(err)
		}
		plHasImage(t, l, 1, img.Digest)
	}

	// HEADs count too: containerd resolves a tag with a HEAD, always the first
	// request of a pull, and SWRR spreads it like any other request. Counting GETs
	// only would drop one fixed position of the weighted sequence per pull.
	served := plServed(t, l, "/weights/")
	total := 0
	for _, n := range served {
		total += n
	}
	// Each pull is at least a manifest HEAD, the manifest, the config and 3 layers.
	if total < 30*6 {
		t.Fatalf("the masters logged %d manifest and blob requests for 30 pulls of 3 layers, want >= 180: %v", total, served)
	}
	// Smooth weighted round robin over 3:1:1 repeats m1 m2 m1 m3 m1: after any
	// number of picks each master is within one of its exact share. An attempt
	// beyond the first of a request (a hedge, a retry elsewhere) is one more pick,
	// which can move each count by one more; the node's metrics say how many there
	// were. 2:1:1 would be 22 requests away from 3:1:1 at 180.
	metrics := plNodeMetrics(t, l, 1)
	attempts := sampleSum(t, metrics, "hopless_plugin_requests_total", nil)
	client := sampleSum(t, metrics, "hopless_plugin_client_requests_total", map[string]string{"class": "manifest"}) +
		sampleSum(t, metrics, "hopless_plugin_client_requests_total", map[string]string{"class": "blob"})
	extra := attempts - client
	if extra < 0 || attempts != float64(total) {
		t.Fatalf("the node counted %v attempts for %v requests, the masters logged %d: %v", attempts, client, total, served)
	}
	for m, w := range map[string]float64{"master-1": 3, "master-2": 1, "master-3": 1} {
		exact := float64(total) * w / 5
		if d := math.Abs(float64(served[m]) - exact); d > 1+extra {
			t.Errorf("%s served %d of %d requests, want %.1f ± %.0f (weights 3:1:1, %.0f attempts beyond the first): %v",
				m, served[m], total, exact, 1+extra, extra, served)
		}
	}
	t.Logf("requests per master over 30 pulls: %v; attempts beyond the first: %.0f", served, extra)
}

// TestPluginMasterKilledMidPull kills a master with SIGKILL while it streams a layer
// to the node: the balancer resumes the body on another master and the pull
// completes with the right image.
func TestPluginMasterKilledMidPull(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginKillMidPull, 3, 1, inprocess())
	repo := lab.UpstreamPath + "/killed"
	img := seed(t, l, repo, "v1", 3, 8<<20)
	// A cold layer streams to the node as fast as the upstream delivers it: at
	// 2 MiB/s (at most) each 8 MiB layer takes 4 s or more, long enough to kill a
	// master in it.
	plFaults(t, l, lab.Faults{ThrottleBPS: 2 << 20})

	done := make(chan error, 1)
	go func() {
		_, err := plPull(l, 1, l.PullRef(repo, "v1"))
		done <- err
	}()
	// The node's hopless_plugin_bytes_total counts body bytes as containerd reads
	// them. A master whose count grew since the previous look is sending a body;
	// one that has sent between 1 and 5 MiB has ended no layer (a layer is 8 MiB),
	// so every body it sends has 3 MiB or more to go. Without these bounds a
	// master whose layers had ended (or were about to) was killed now and then,
	// under load, and the pull needed no resume.
	var victim lab.Master
	prev := map[string]float64{}
	deadline := time.Now().Add(plWait)
	for victim.Name == "" {
		select {
		case err := <-done:
			t.Fatalf("the pull ended (error %v) before any master was seen sending between 1 and 5 MiB: %v", err, prev)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no master was seen sending between 1 and 5 MiB within %s: %v", plWait, prev)
		}
		metrics := plNodeMetrics(t, l, 1)
		for _, m := range l.Masters {
			n := sampleSum(t, metrics, "hopless_plugin_bytes_total", map[string]string{"endpoint": plEndpoint(m)})
			if n >= 1<<20 && n <= 5<<20 && n > prev[m.Name] && prev[m.Name] > 0 {
				victim = m
				break
			}
			prev[m.Name] = n
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Signal(victim.Name, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s in the middle of a layer", victim.Name)
	plFaults(t, l, lab.Faults{})

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pull with %s killed mid-stream: %v", victim.Name, err)
		}
	case <-time.After(plWait):
		t.Fatalf("pull with %s killed mid-stream did not end within %s", victim.Name, plWait)
	}
	plHasImage(t, l, 1, img.Digest)
	if n := sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_resumes_total", nil); n < 1 {
		t.Errorf("hopless_plugin_resumes_total is %v: the cut body was not resumed on another master", n)
	}
}

// TestPluginFrozenMasterBeforePull freezes a master with SIGSTOP just before a pull
// of an image every master has cached, and compares the pull's wall time with a
// pull of a same-size cached image on another fresh node with every master up.
// A frozen master still completes TCP handshakes, so only response deadlines,
// hedging and health checks get the pull past it.
func TestPluginFrozenMasterBeforePull(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginFrozenBefore, 3, 2, inprocess())
	repo := lab.UpstreamPath + "/frozen"
	base := seed(t, l, repo, "base", 4, 1<<20)
	img := seed(t, l, repo, "v1", 4, 1<<20)
	plWarm(t, l, repo, "base")
	plWarm(t, l, repo, "v1")

	baseline, err := plPull(l, 1, l.PullRef(repo, "base"))
	if err != nil {
		t.Fatal(err)
	}
	plHasImage(t, l, 1, base.Digest)

	if err := l.Signal("master-1", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Signal("master-1", syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT master-1: %v", err)
		}
	})
	frozen, err := plPull(l, 2, l.PullRef(repo, "v1"))
	if err != nil {
		t.Fatalf("pull with master-1 frozen: %v", err)
	}
	plHasImage(t, l, 2, img.Digest)
	t.Logf("4 x 1 MiB warm pull: %s with every master up, %s with master-1 frozen", baseline.Round(time.Millisecond), frozen.Round(time.Millisecond))
	added := frozen - baseline
	// A request overtaken by a hedge keeps its master out of rotation until it
	// answers, so only the first request to the frozen master pays a hedge delay
	// (hedge_max = 1 s on a fresh node).
	if added > plFrozenBound {
		t.Errorf("master-1 frozen added %s to the pull (%s against %s), over the bound of %s",
			added.Round(time.Millisecond), frozen, baseline, plFrozenBound)
	}
}

// TestPluginFrozenMidBlob freezes a master with SIGSTOP in the middle of the one
// 64 MiB layer it streams to the node: the balancer's stall detection aborts the
// body and resumes it on the other master with a Range request.
//
// To freeze the master that streams the layer, while it streams, the test makes
// that master known and slow:
//   - Weights 100:1. SWRR then sends the first 50 requests of the node to master-1,
//     so the manifest, the config and the layer of the only pull go there.
//   - Peers off, and the layer cold on master-1 only, with the upstream throttled:
//     master-1 fills from the upstream itself and streams the layer to the node as
//     the upstream delivers it (a warm master would send 64 MiB from its disk before
//     a signal could land). With peers, master-1 could fill from master-2 at full
//     speed.
//   - master-2 holds the layer already (a direct GET warmed it), so the resume is
//     served at once from its disk.
//
// The node's hopless_plugin_bytes_total shows master-1's progress while the body is
// read; the master's own access log is written only when a response ends.
func TestPluginFrozenMidBlob(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginFrozenMidBlob, 2, 1, inprocess(100, 1), func(o *lab.Options) { o.Registryd.NoPeers = true })
	repo := lab.UpstreamPath + "/midblob"
	img := seed(t, l, repo, "v1", 1, 64<<20)
	layer := img.Layers[0]
	c := labHTTP(t, l)
	if r := getBlob(ctxFor(t, plWait), c, l, 2, repo, layer, ""); !r.complete() || sha(r.Body) != layer {
		t.Fatalf("warming %s on master-2: %s", layer, r)
	}
	// 16 MiB/s: master-1 needs 4 s for the layer.
	plFaults(t, l, lab.Faults{ThrottleBPS: 16 << 20})

	done := make(chan error, 1)
	go func() {
		_, err := plPull(l, 1, l.PullRef(repo, "v1"))
		done <- err
	}()
	m1 := map[string]string{"endpoint": plEndpoint(l.Masters[0])}
	deadline := time.Now().Add(plWait)
	for {
		select {
		case err := <-done:
			t.Fatalf("the pull ended (error %v) before master-1 had sent 8 MiB of the layer; node metrics:\n%s", err,
				plHopless(plNodeMetrics(t, l, 1)))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("master-1 did not send 8 MiB of the layer within %s", plWait)
		}
		if sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_bytes_total", m1) >= 8<<20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Signal("master-1", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Signal("master-1", syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT master-1: %v", err)
		}
	})
	frozenAt := time.Now()

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pull with master-1 frozen mid-layer: %v", err)
		}
	case <-time.After(plWait):
		t.Fatalf("pull with master-1 frozen mid-layer did not end within %s", plWait)
	}
	t.Logf("the pull ended %s after master-1 froze", time.Since(frozenAt).Round(time.Millisecond))
	plHasImage(t, l, 1, img.Digest)
	if n := sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_errors_total", map[string]string{"endpoint": m1["endpoint"], "kind": "stall"}); n < 1 {
		t.Errorf("the node counted no stall of master-1 (hopless_plugin_errors_total{kind=\"stall\"} is %v)", n)
	}

	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	var resumed []lab.Request
	for _, r := range reqs {
		// master-2's warming GET has no Range.
		if r.Master == "master-2" && r.IsBlobGET() && strings.HasSuffix(r.Path, "/blobs/"+layer) && r.Range != "" {
			resumed = append(resumed, r)
		}
	}
	if len(resumed) != 1 {
		t.Fatalf("want one Range GET of the layer on master-2, got %+v", resumed)
	}
	r := resumed[0]
	from, _, ok := strings.Cut(strings.TrimPrefix(r.Range, "bytes="), "-")
	n, err := strconv.ParseInt(from, 10, 64)
	if !ok || err != nil || !strings.HasPrefix(r.Range, "bytes=") || n <= 0 || n >= img.Bytes {
		t.Errorf("master-2's resume: Range %q, want bytes=N- with 0 < N < %d", r.Range, img.Bytes)
	}
	if r.Status != http.StatusPartialContent || r.Bytes != img.Bytes-n {
		t.Errorf("master-2's resume from byte %d: status %d, %d bytes; want 206 and %d bytes", n, r.Status, r.Bytes, img.Bytes-n)
	}
}

// plHopless keeps the hopless_ lines of a metrics text, for failure messages.
func plHopless(text string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(line, "hopless_") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// plKillMasters kills every master with SIGKILL and waits until they are gone.
func plKillMasters(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, m := range l.Masters {
		if err := l.Signal(m.Name, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "every master is gone after SIGKILL", func() bool {
		for _, s := range l.Status() {
			if strings.HasPrefix(s.Name, "master-") && s.Alive {
				return false
			}
		}
		return true
	})
}

// plUpstreamLog reads the upstream's access log.
func plUpstreamLog(t *testing.T, l *lab.Lab) []lab.AccessEntry {
	t.Helper()
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// plUpstreamReads returns the manifest and blob GETs and HEADs of repo that the
// upstream logged after the first since entries.
func plUpstreamReads(t *testing.T, l *lab.Lab, since int, repo string) []lab.AccessEntry {
	t.Helper()
	entries := plUpstreamLog(t, l)
	var out []lab.AccessEntry
	for _, e := range entries[min(since, len(entries)):] {
		if (e.Method == http.MethodGet || e.Method == http.MethodHead) && strings.HasPrefix(e.Path, "/v2/"+repo+"/") && plRegistryRE.MatchString(e.Path) {
			out = append(out, e)
		}
	}
	return out
}

// TestPluginAllDownFallback kills every master: with fallback set, the node pulls
// from the image host through its own hosts.toml, which points at the upstream.
func TestPluginAllDownFallback(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginFallback, 3, 1, inprocess(), withFallback)
	// The fallback asks the upstream by the image's own name, so the image is named
	// as the upstream knows it, not through the masters' system/deckhouse alias.
	repo := lab.UpstreamPath + "/fallback"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	plKillMasters(t, l)
	since := len(plUpstreamLog(t, l))

	if _, err := plPull(l, 1, l.ImageHost+"/"+repo+":v1"); err != nil {
		t.Fatalf("pull with every master down and fallback set: %v", err)
	}
	plHasImage(t, l, 1, img.Digest)
	reads := plUpstreamReads(t, l, since, repo)
	got := map[string]bool{}
	manifests := 0
	for _, e := range reads {
		if strings.Contains(e.Path, "/manifests/") {
			manifests++
		}
		if e.Method == http.MethodGet && e.Status == http.StatusOK {
			got[e.Digest()] = true
		}
	}
	if manifests == 0 {
		t.Errorf("the upstream logged no manifest request of the fallback pull: %+v", reads)
	}
	for _, d := range img.Layers {
		if !got[d] {
			t.Errorf("the upstream logged no GET of layer %s in the fallback pull: %+v", d, reads)
		}
	}
}

// TestPluginAllDownNoFallback kills every master: without fallback the pull fails,
// and the error names every master and what went wrong with it.
func TestPluginAllDownNoFallback(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginNoFallback, 3, 1, inprocess())
	repo := lab.UpstreamPath + "/nofallback"
	seed(t, l, repo, "v1", 2, 256<<10)
	plKillMasters(t, l)
	since := len(plUpstreamLog(t, l))

	took, err := plPull(l, 1, l.PullRef(repo, "v1"))
	if err == nil {
		t.Fatal("pull with every master down and no fallback succeeded")
	}
	t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
	for _, m := range l.Masters {
		if !strings.Contains(err.Error(), m.Addr) {
			t.Errorf("the error does not name %s (%s): %v", m.Name, m.Addr, err)
		}
	}
	if reads := plUpstreamReads(t, l, since, repo); len(reads) > 0 {
		t.Errorf("the pull went to the upstream without fallback: %+v", reads)
	}
}

// TestPluginUnconfiguredHost pulls from a registry the plugin is not configured for
// (the upstream, by its own address): containerd pulls it as stock containerd
// would, and no master sees it.
func TestPluginUnconfiguredHost(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginUnconfigured, 2, 1, inprocess())
	repo := lab.UpstreamPath + "/direct"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	since := len(plUpstreamLog(t, l))

	if _, err := plPull(l, 1, l.Upstream+"/"+repo+":v1"); err != nil {
		t.Fatalf("direct pull from %s: %v", l.Upstream, err)
	}
	plHasImage(t, l, 1, img.Digest)
	if served := plServed(t, l, "/direct/"); len(served) > 0 {
		t.Errorf("masters served a pull of an unconfigured host: %v", served)
	}
	got := map[string]bool{}
	for _, e := range plUpstreamReads(t, l, since, repo) {
		got[e.Digest()] = true
	}
	for _, d := range img.Layers {
		if !got[d] {
			t.Errorf("the upstream logged no GET of layer %s in the direct pull", d)
		}
	}
	if n := sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_requests_total", nil); n != 0 {
		t.Errorf("the plugin counted %v requests for a pull it is not configured for", n)
	}
}

// TestPluginMetricsAndVersion checks what an operator sees of the plugin: its
// counters on containerd's metrics endpoint, and the version of the build.
func TestPluginMetricsAndVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(filepath.Join(root(t), "bin", "containerd"), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("bin/containerd --version: %v: %s", err, out)
	}
	for _, want := range []string{"2.4.2", "hopless"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bin/containerd --version says %q, want it to contain %q", strings.TrimSpace(string(out)), want)
		}
	}

	l := upLab(t, slotPluginMetrics, 3, 1, inprocess())
	repo := lab.UpstreamPath + "/metrics"
	// A manifest HEAD and GET, the config and 2 layers: 5 requests, so equal
	// weights reach all 3 masters.
	img := seed(t, l, repo, "v1", 2, 64<<10)
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)

	metrics := plNodeMetrics(t, l, 1)
	for _, m := range l.Masters {
		ep := map[string]string{"endpoint": plEndpoint(m)}
		if n := sampleSum(t, metrics, "hopless_plugin_requests_total", ep); n < 1 {
			t.Errorf("hopless_plugin_requests_total{endpoint=%q} is %v after a pull, want >= 1:\n%s", plEndpoint(m), n, plHopless(metrics))
		}
		if n := sampleSum(t, metrics, "hopless_plugin_endpoint_healthy", ep); n != 1 {
			t.Errorf("hopless_plugin_endpoint_healthy{endpoint=%q} is %v, want 1:\n%s", plEndpoint(m), n, plHopless(metrics))
		}
	}
	if n := sampleSum(t, metrics, "hopless_plugin_bytes_total", nil); n < float64(img.Bytes) {
		t.Errorf("hopless_plugin_bytes_total is %v, want >= the %d layer bytes pulled", n, img.Bytes)
	}
}

// TestPluginStatus checks what an operator sees of the balancer without reading
// metrics: `containerd hopless-status` over the node's debug socket names each
// master's state, and a frozen master as unhealthy with the reason.
func TestPluginStatus(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotPluginStatus, 3, 1, inprocess())
	repo := lab.UpstreamPath + "/status"
	img := seed(t, l, repo, "v1", 2, 64<<10)
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)

	if err := l.Signal("master-2", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Signal("master-2", syscall.SIGCONT); err != nil {
			t.Errorf("SIGCONT master-2: %v", err)
		}
	})
	// An idle node checks its masters only every health_idle_interval; a pull makes
	// it active, and it checks them at once.
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	bin := filepath.Join(root(t), "bin", "containerd")
	sock := l.Nodes[0].Sock + ".debug"
	var report struct {
		Hosts []struct {
			Host      string `json:"host"`
			Endpoints []struct {
				URL    string  `json:"url"`
				State  string  `json:"state"`
				Reason string  `json:"reason"`
				Share  float64 `json:"share"`
			} `json:"endpoints"`
		} `json:"hosts"`
	}
	states := func() map[string]string {
		out, err := exec.Command(bin, "hopless-status", "--debug-address", sock, "--json").Output()
		if err != nil {
			t.Fatalf("hopless-status --json: %v: %s", err, out)
		}
		if err := json.Unmarshal(out, &report); err != nil || len(report.Hosts) != 1 {
			t.Fatalf("hopless-status --json printed %s (%v), want one host", out, err)
		}
		m := map[string]string{}
		for _, e := range report.Hosts[0].Endpoints {
			m[e.URL] = e.State
		}
		return m
	}
	m2 := plEndpoint(l.Masters[1])
	eventually(t, 10*time.Second, "master-2 reported unhealthy", func() bool { return states()[m2] == "unhealthy" })
	for _, m := range []lab.Master{l.Masters[0], l.Masters[2]} {
		if s := states()[plEndpoint(m)]; s != "up" {
			t.Errorf("%s is %q, want up", m.Name, s)
		}
	}
	if h := report.Hosts[0]; h.Host != l.ImageHost {
		t.Errorf("host %q, want %s", h.Host, l.ImageHost)
	}
	for _, e := range report.Hosts[0].Endpoints {
		if e.URL == m2 && !strings.Contains(e.Reason, "active check") {
			t.Errorf("master-2's reason %q does not name the failed active check", e.Reason)
		}
	}
	out, err := exec.Command(bin, "hopless-status", "--debug-address", sock).CombinedOutput()
	if err != nil {
		t.Fatalf("hopless-status: %v: %s", err, out)
	}
	for _, want := range []string{l.ImageHost, m2, "unhealthy", "up"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("hopless-status table does not show %q:\n%s", want, out)
		}
	}
}
