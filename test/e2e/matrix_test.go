package e2e

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// slotMatrix is TestFaultMatrix's slot.
const slotMatrix = 72

// The matrix lab's nodes: ours in-process and on NRI, and today's setup, an NGINX
// stream hop to distribution's own proxies (one per master, each caching alone).
const (
	mxInprocess = 1
	mxNRI       = 2
	mxNginx     = 3
	// mxBound bounds every pull of the matrix; a pull cut there is FAILED.
	mxBound = 40 * time.Second
)

var mxNodeNames = map[int]string{mxInprocess: "in-process", mxNRI: "NRI", mxNginx: "NGINX + distribution's proxy"}

// mxOutcome is what one node's pull of one image came to.
type mxOutcome struct {
	err  error
	secs float64
	// upstream is the number of blob GETs of the image's layers that reached the
	// upstream, of layers.
	upstream, layers int
}

func (o mxOutcome) String() string {
	if o.err != nil {
		// crictl's error ends with the cause; its first line is enough.
		msg, _, _ := strings.Cut(o.err.Error(), "\n")
		msg = strings.ReplaceAll(msg, `\"`, `"`)
		if len(msg) > 110 {
			msg = "…" + msg[len(msg)-110:]
		}
		return fmt.Sprintf("FAILED after %.1f s (%s); upstream GETs %d/%d", o.secs, strings.TrimSpace(msg), o.upstream, o.layers)
	}
	return fmt.Sprintf("ok in %.1f s; upstream GETs %d/%d", o.secs, o.upstream, o.layers)
}

// mxRow is one fault of the matrix. fault injects it for the nodes (masters and
// proxies alike) and returns what undoes it; check asserts what ours must do.
type mxRow struct {
	name, expect string
	// fault gets the upstream repository of the image that bad rows fail; empty for
	// the other rows, whose upstream faults hit every image.
	fault func(t *testing.T, l *lab.Lab, badRepo string) (undo func())
	// bad is set for faults of one image's upstream repository: every node pulls
	// that image, and while it does, a healthy image of its own, which must pull.
	bad bool
	// warm pulls the image through each node's caches (not onto the nodes) before
	// the fault: over HTTP through the masters for ours; with warmNginx, also a
	// pull on the NGINX node, removed after, which leaves it in one proxy's cache.
	warm, warmNginx bool
	// damage, if set, is done to the masters' stored copies of the warm image's
	// first layer.
	damage func(t *testing.T, l *lab.Lab, digest string)
	// recovers: the healthy image need not pull while the fault is on, but must
	// once it is undone.
	recovers bool
	// only, if set, is the one node the fault applies to; the others are n/a.
	only int
	// bound, if set, bounds this row's pulls instead of mxBound.
	bound time.Duration
	// size is the layers' size; 0 is 256 KiB.
	size int64
	// during runs once the pulls have started; with it, every pull is made again
	// after undo (with killsNodes, once the nodes' containerd is started again),
	// and the second pull is the one checked; checkFirst, if set, checks the first.
	during     func(t *testing.T, l *lab.Lab, imgs map[int]lab.SeedResult)
	killsNodes bool
	checkFirst func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome)
	check      func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome)
}

// TestFaultMatrix runs each fault on an in-process node, an NRI node and an NGINX-hop
// node whose hop goes to distribution's stock proxies, in one lab, and logs the
// outcome of each as a table (RELIABILITY.md). What ours must do is asserted; the
// NGINX hop's outcome is recorded, as the baseline.
func TestFaultMatrix(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotMatrix, 3, 3, func(o *lab.Options) {
		o.NodeModes = []string{lab.ModeInprocess, lab.ModeNRI, lab.ModeNginx}
		o.Proxies, o.NginxToProxies = 3, true
		// A disk of its own per master and per proxy, which a row fills.
		o.Registryd.StorageTmpfs = "128m"
	})
	succeeds := func(t *testing.T, _ *lab.Lab, node int, _ lab.SeedResult, o mxOutcome) {
		if node != mxNginx && o.err != nil {
			t.Errorf("%s node: %v", mxNodeNames[node], o)
		}
	}
	onceEach := func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
		succeeds(t, l, node, img, o)
		if node != mxNginx && o.upstream != o.layers {
			t.Errorf("%s node: %d upstream GETs for %d layers, want each once: %s", mxNodeNames[node], o.upstream, o.layers, mxLayerGETs(l, img))
		}
	}
	fails := func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
		if node != mxNginx && o.err == nil {
			t.Errorf("%s node pulled an image whose upstream fails", mxNodeNames[node])
		}
	}
	both := func(names ...string) func(t *testing.T, l *lab.Lab, _ string) func() {
		return func(t *testing.T, l *lab.Lab, _ string) func() {
			for _, n := range names {
				mxSignal(t, l, n, syscall.SIGSTOP)
			}
			return func() {
				for _, n := range names {
					mxSignal(t, l, n, syscall.SIGCONT)
				}
			}
		}
	}
	faults := func(f lab.Faults) func(t *testing.T, l *lab.Lab, badRepo string) func() {
		return func(t *testing.T, l *lab.Lab, badRepo string) func() {
			f.Repo = badRepo
			plFaults(t, l, f)
			return func() { plFaults(t, l, lab.Faults{}) }
		}
	}
	rows := []mxRow{
		{name: "two of three masters killed (kill -9), restarted after", expect: "pulls from the master left; each layer fetched once",
			fault: func(t *testing.T, l *lab.Lab, _ string) func() {
				names := []string{"master-2", "master-3", "proxy-2", "proxy-3"}
				for _, n := range names {
					mxSignal(t, l, n, syscall.SIGKILL)
				}
				mxWaitNRIFirst(t, l, 1)
				return func() {
					for _, n := range names {
						mxRestart(t, l, n)
					}
				}
			}, check: onceEach},
		{name: "two of three masters frozen (SIGSTOP)", expect: "pulls from the master left", fault: func(t *testing.T, l *lab.Lab, _ string) func() {
			undo := both("master-2", "master-3", "proxy-2", "proxy-3")(t, l, "")
			mxWaitNRIFirst(t, l, 1)
			return undo
		}, check: succeeds},
		{name: "one master flapping (300 ms stopped, 300 ms running)", expect: "pulls", fault: func(t *testing.T, l *lab.Lab, _ string) func() {
			stops := []func() error{l.Flap("master-2", 300*time.Millisecond, 300*time.Millisecond), l.Flap("proxy-2", 300*time.Millisecond, 300*time.Millisecond)}
			return func() {
				for _, stop := range stops {
					if err := stop(); err != nil {
						t.Error(err)
					}
				}
			}
		}, check: succeeds},
		{name: "upstream answers 503 for one image", expect: "that image fails; another image pulls, fetched once", bad: true,
			fault: faults(lab.Faults{Status: 503}), check: fails},
		{name: "upstream answers 500 for one image", expect: "that image fails; another image pulls, fetched once", bad: true,
			fault: faults(lab.Faults{Status: 500}), check: fails},
		{name: "upstream hangs for one image", expect: "another image pulls while that one hangs", bad: true, bound: 15 * time.Second,
			fault: faults(lab.Faults{Hang: true}), check: func(*testing.T, *lab.Lab, int, lab.SeedResult, mxOutcome) {}},
		{name: "upstream serves other bytes for a digest", expect: "that image fails; nothing unverified is stored", bad: true,
			fault: faults(lab.Faults{Corrupt: true}), check: func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
				fails(t, l, node, img, o)
				for _, m := range l.Masters {
					blobs := clStoreBlobs(t, l, m.Name)
					for _, d := range img.Layers {
						if _, ok := blobs[d]; ok {
							t.Errorf("%s stored layer %s, whose upstream bytes do not match it", m.Name, d)
						}
					}
				}
			}},
		{name: "upstream cuts each blob once mid-body", expect: "pulls; the masters resume", fault: faults(lab.Faults{CutAfter: 100 << 10, CutTimes: 1}), check: succeeds},
		{name: "upstream slow, 1 MiB/s", expect: "pulls", fault: faults(lab.Faults{ThrottleBPS: 1 << 20}), check: onceEach},
		{name: "upstream down (killed) after the images were pulled through the caches, restarted after", expect: "pulls from the masters' caches; no GET reaches the upstream",
			warm: true, warmNginx: true, fault: func(t *testing.T, l *lab.Lab, _ string) func() {
				mxSignal(t, l, "upstream", syscall.SIGKILL)
				return func() { mxRestart(t, l, "upstream") }
			}, check: onceEach},
		{name: "a master's stored blob corrupted, size and times kept", expect: "in-process: pulls the right bytes (the plugin verifies and fetches again)", warm: true, damage: mxDamage("corrupt", (*lab.Lab).CorruptStoredBlob),
			fault: func(t *testing.T, l *lab.Lab, _ string) func() { return func() {} },
			check: func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
				if node == mxInprocess && o.err != nil {
					t.Errorf("in-process node: %v", o)
				}
			}},
		{name: "a master's stored blob truncated to half", expect: "pulls the right bytes: the master finds the size wrong and fetches the blob again", warm: true, damage: mxDamage("truncate", (*lab.Lab).TruncateStoredBlob),
			fault: func(t *testing.T, l *lab.Lab, _ string) func() { return func() {} }, check: succeeds},
		{name: "every master's and every proxy's disk full (their storage tmpfs filled)", expect: "pulls: the misses are streamed through, verified, not stored",
			fault: func(t *testing.T, l *lab.Lab, _ string) func() {
				var undo []func()
				for i := range l.Masters {
					for _, root := range []string{l.StorageRoot(i + 1), l.ProxyStorageRoot(i + 1)} {
						undo = append(undo, takeDisk(t, root, "mx-filler", freeSpace(t, root)-64<<10))
					}
				}
				return func() {
					for _, u := range undo {
						u()
					}
				}
			}, check: succeeds},
		{name: "the master filling a blob killed (kill -9) mid-fill (layers of 2 MiB at 2 MiB/s), restarted at once", expect: "in-process: the pull goes on; every pull of ours completes, again if the first broke",
			size: 2 << 20, fault: faults(lab.Faults{ThrottleBPS: 2 << 20}), during: func(t *testing.T, l *lab.Lab, imgs map[int]lab.SeedResult) {
				mxWaitFilling(t, l, imgs[mxInprocess], imgs[mxNRI])
				i := cmp.Or(mxFillingMaster(l, imgs[mxInprocess]), mxFillingMaster(l, imgs[mxNRI]))
				if i == 0 {
					t.Fatal("no master is filling a layer any more: the fill ended before the kill")
				}
				names := []string{fmt.Sprintf("master-%d", i), fmt.Sprintf("proxy-%d", i)}
				for _, n := range names {
					mxSignal(t, l, n, syscall.SIGKILL)
				}
				for _, n := range names {
					mxRestart(t, l, n)
				}
			}, checkFirst: func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
				if node == mxInprocess && o.err != nil {
					t.Errorf("in-process node, first pull: %v", o)
				}
			}, check: succeeds},
		{name: "the node's containerd killed (kill -9) mid-pull, restarted, pulled again", expect: "the second pull completes; each layer fetched from the upstream once",
			size: 2 << 20, fault: faults(lab.Faults{ThrottleBPS: 2 << 20}), killsNodes: true, during: func(t *testing.T, l *lab.Lab, imgs map[int]lab.SeedResult) {
				mxWaitFilling(t, l, imgs[mxInprocess], imgs[mxNRI])
				for node := mxInprocess; node <= mxNginx; node++ {
					mxSignal(t, l, fmt.Sprintf("node-%d", node), syscall.SIGKILL)
				}
			}, check: onceEach},
		{name: "the NRI plugin killed (kill -9), restarted after", expect: "pulls: hosts.toml stays as the plugin left it", only: mxNRI,
			fault: func(t *testing.T, l *lab.Lab, _ string) func() {
				mxSignal(t, l, "nri-2", syscall.SIGKILL)
				return func() { mxRestart(t, l, "nri-2") }
			}, check: succeeds},
		{name: "the NRI plugin frozen (SIGSTOP)", expect: "pulls: containerd does not wait on the plugin to pull", only: mxNRI,
			fault: both("nri-2"), check: succeeds},
		{name: "master-2's certificate expired (and proxy-2's), restarted with it", expect: "pulls from the other masters", fault: func(t *testing.T, l *lab.Lab, _ string) func() {
			names := []string{"master-2", "proxy-2"}
			for _, n := range names {
				mxReissue(t, l, n, lab.CertExpired)
			}
			mxWaitNRILast(t, l, 2)
			return func() {
				for _, n := range names {
					mxReissue(t, l, n, lab.CertRenewed)
				}
			}
		}, check: succeeds},
		{name: "every master's certificate replaced in place, during the pulls (layers of 2 MiB at 2 MiB/s); the proxies restarted for theirs", expect: "each master serves its new certificate without a restart; every pull of ours completes",
			size: 2 << 20, fault: faults(lab.Faults{ThrottleBPS: 2 << 20}), during: func(t *testing.T, l *lab.Lab, imgs map[int]lab.SeedResult) {
				mxWaitFilling(t, l, imgs[mxInprocess], imgs[mxNRI])
				for i, m := range l.Masters {
					der, err := l.ReplaceCert(m.Name)
					if err != nil {
						t.Fatal(err)
					}
					// distribution reads its certificate at start only.
					mxReissue(t, l, fmt.Sprintf("proxy-%d", i+1), lab.CertRenewed)
					if why := clPoll(plWait, func() string {
						got, err := lab.ServedCert(ctxFor(t, plWait), m.Addr)
						switch {
						case err != nil:
							return err.Error()
						case !bytes.Equal(got, der):
							return m.Name + " still serves its old certificate"
						}
						return ""
					}); why != "" {
						t.Error(why)
					}
				}
			}, checkFirst: func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
				if node == mxInprocess && o.err != nil {
					t.Errorf("in-process node, first pull: %v", o)
				}
			}, check: succeeds},
		// After this one the masters' peers and the nodes' balancers take a while to
		// trust each other again: only the 429 row, which waits for recovery, follows.
		{name: "the masters' certificates from a CA the nodes do not trust (a wrong CA on the nodes)", expect: "fails; the error names the certificate; nothing reaches the upstream",
			fault: func(t *testing.T, l *lab.Lab, _ string) func() {
				var names []string
				for i := range l.Masters {
					names = append(names, fmt.Sprintf("master-%d", i+1), fmt.Sprintf("proxy-%d", i+1))
				}
				for _, n := range names {
					mxReissue(t, l, n, lab.CertUntrusted)
				}
				return func() {
					for _, n := range names {
						mxReissue(t, l, n, lab.CertRenewed)
					}
				}
			}, check: func(t *testing.T, l *lab.Lab, node int, img lab.SeedResult, o mxOutcome) {
				if node == mxNginx {
					return
				}
				if o.err == nil || !strings.Contains(o.err.Error(), "certificate") {
					t.Errorf("%s node: %v; want a failure that names the certificate", mxNodeNames[node], o)
				}
				if o.upstream != 0 {
					t.Errorf("%s node: %d upstream GETs for a pull that no master answered", mxNodeNames[node], o.upstream)
				}
			}},
		// Last: registryd honours a 429's Retry-After for the whole upstream (a rate
		// limit is the upstream's, not one image's), so other images of that upstream
		// fail fast until it has passed; they must pull once it has.
		{name: "upstream answers 429, Retry-After 2, for one image", expect: "that image fails; other images of the upstream pull once Retry-After has passed", bad: true,
			fault: faults(lab.Faults{Status: 429, Headers: map[string]string{"Retry-After": "2"}}), check: fails, recovers: true},
	}
	var table []string
	for i, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			cells := map[int]string{}
			imgs := map[int]lab.SeedResult{}
			good := map[int]lab.SeedResult{}
			repos := map[int]string{}
			badRepo := fmt.Sprintf("%s/mx%02d-bad", lab.UpstreamPath, i)
			var bad lab.SeedResult
			if r.bad {
				bad = seed(t, l, badRepo, "v1", 2, 256<<10)
			}
			for node := mxInprocess; node <= mxNginx; node++ {
				repos[node] = fmt.Sprintf("%s/mx%02d-n%d", lab.UpstreamPath, i, node)
				imgs[node] = seed(t, l, repos[node], "v1", 2, cmp.Or(r.size, 256<<10))
				if r.bad {
					good[node], imgs[node], repos[node] = imgs[node], bad, badRepo
				}
				if r.warm {
					mxWarm(t, l, node, repos[node], imgs[node], r.warmNginx)
				}
			}
			if r.damage != nil {
				for node := mxInprocess; node <= mxNRI; node++ {
					r.damage(t, l, imgs[node].Layers[0])
				}
			}
			// The upstream's faults hit only the bad image when there is one, and
			// every image otherwise.
			scope := ""
			if r.bad {
				scope = badRepo
			}
			undo := r.fault(t, l, scope)
			type result struct {
				node int
				o    mxOutcome
			}
			applies := func(node int) bool { return r.only == 0 || r.only == node }
			results := make(chan result, 3)
			pulls := 0
			for node := mxInprocess; node <= mxNginx; node++ {
				if !applies(node) {
					cells[node] = "n/a"
					continue
				}
				pulls++
				go func() {
					results <- result{node, mxPullWithin(l, node, repos[node], imgs[node], cmp.Or(r.bound, mxBound))}
				}()
			}
			if r.during != nil {
				r.during(t, l, imgs)
			}
			if r.bad {
				// The healthy image pulls while the bad one is still in flight.
				for node := mxInprocess; node <= mxNginx; node++ {
					o := mxPull(l, node, fmt.Sprintf("%s/mx%02d-n%d", lab.UpstreamPath, i, node), good[node])
					cells[node] = "other image: " + o.String()
					if node != mxNginx && !r.recovers && (o.err != nil || o.upstream != o.layers) {
						t.Errorf("%s node: a healthy image beside the failing one: %v: %s", mxNodeNames[node], o, mxLayerGETs(l, good[node]))
					}
				}
			}
			first := map[int]mxOutcome{}
			for range pulls {
				res := <-results
				first[res.node] = res.o
				if r.during != nil {
					if r.checkFirst != nil {
						r.checkFirst(t, l, res.node, imgs[res.node], res.o)
					}
					continue
				}
				if c := cells[res.node]; c != "" {
					cells[res.node] = "this image: " + res.o.String() + "; " + c
				} else {
					cells[res.node] = res.o.String()
				}
				r.check(t, l, res.node, imgs[res.node], res.o)
			}
			undo()
			if r.during != nil {
				for node := mxInprocess; node <= mxNginx; node++ {
					if !applies(node) {
						continue
					}
					if r.killsNodes {
						mxRestart(t, l, fmt.Sprintf("node-%d", node))
					}
					o := mxPull(l, node, repos[node], imgs[node])
					cells[node] = "first pull: " + first[node].String() + "; again: " + o.String()
					r.check(t, l, node, imgs[node], o)
				}
			}
			if r.recovers {
				for node := mxInprocess; node <= mxNginx; node++ {
					var o mxOutcome
					if why := clPoll(mxBound, func() string {
						if o = mxPull(l, node, fmt.Sprintf("%s/mx%02d-n%d", lab.UpstreamPath, i, node), good[node]); o.err != nil {
							return o.String()
						}
						return ""
					}); why != "" && node != mxNginx {
						t.Errorf("%s node: the healthy image did not pull after the fault ended: %s", mxNodeNames[node], why)
					}
					cells[node] += "; after Retry-After: " + o.String()
				}
			}
			table = append(table, fmt.Sprintf("| %s | %s | %s | %s | %s |", r.name, r.expect, cells[mxInprocess], cells[mxNRI], cells[mxNginx]))
		})
	}
	t.Logf("fault matrix:\n| fault | expected (ours) | %s | %s | %s |\n|---|---|---|---|---|\n%s",
		mxNodeNames[mxInprocess], mxNodeNames[mxNRI], mxNodeNames[mxNginx], strings.Join(table, "\n"))
}

// mxPull pulls the image of repo on node (by the node's own name for it), bounded by
// mxBound, and counts the upstream's GETs of its layers.
func mxPull(l *lab.Lab, node int, repo string, img lab.SeedResult) mxOutcome {
	return mxPullWithin(l, node, repo, img, mxBound)
}

// mxPullWithin is mxPull bounded by bound.
func mxPullWithin(l *lab.Lab, node int, repo string, img lab.SeedResult, bound time.Duration) mxOutcome {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	_, err := l.Crictl(ctx, node, "pull", l.PullRefFor(node, repo, "v1"))
	o := mxOutcome{err: err, secs: time.Since(start).Seconds(), layers: len(img.Layers)}
	if entries, lerr := l.UpstreamLog(); lerr == nil {
		for _, e := range lab.BlobGETs(entries) {
			for _, d := range img.Layers {
				if e.Digest() == d {
					o.upstream++
				}
			}
		}
	}
	return o
}

func mxSignal(t *testing.T, l *lab.Lab, name string, sig syscall.Signal) {
	t.Helper()
	if err := l.Signal(name, sig); err != nil {
		t.Fatalf("signal %s %v: %v", name, sig, err)
	}
}

// mxRestart starts a killed process again once it is gone.
func mxRestart(t *testing.T, l *lab.Lab, name string) {
	t.Helper()
	if why := clPoll(plWait, func() string {
		for _, s := range l.Status() {
			if s.Name == name && s.Alive {
				return name + " still runs"
			}
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
	if err := l.Start(ctxFor(t, plWait), name); err != nil {
		t.Fatalf("starting %s again: %v", name, err)
	}
}

// mxWaitNRIFirst waits until the NRI node's hosts.toml lists master i first: its
// plugin has seen the others fail (a fault in place before the pull).
func mxWaitNRIFirst(t *testing.T, l *lab.Lab, i int) {
	t.Helper()
	mxWaitNRIOrder(t, l, i, "first", strings.Index)
}

// mxWaitFilling waits until a master is filling a layer of each of imgs (its
// spool holds part of it): those pulls are mid-blob.
func mxWaitFilling(t *testing.T, l *lab.Lab, imgs ...lab.SeedResult) {
	t.Helper()
	if why := clPoll(plWait, func() string {
		for _, img := range imgs {
			if !mxFilling(l, img) {
				return "no master is filling a layer of " + img.Ref
			}
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
}

func mxFilling(l *lab.Lab, img lab.SeedResult) bool { return mxFillingMaster(l, img) > 0 }

// mxFillingMaster is the index (1-based) of a master whose spool holds part of a
// layer of img, or 0.
func mxFillingMaster(l *lab.Lab, img lab.SeedResult) int {
	for i, m := range l.Masters {
		for _, d := range img.Layers {
			p := filepath.Join(l.MasterData(m.Name), "_spool", "sha256", strings.TrimPrefix(d, "sha256:")+".partial")
			if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
				return i + 1
			}
		}
	}
	return 0
}

// mxWarm pulls img through node's caches, without leaving it on the node: over HTTP
// from a master for ours; for the NGINX node, if nginx is set, by a pull on the node
// (which fills the one proxy its hop chose) and a removal.
func mxWarm(t *testing.T, l *lab.Lab, node int, repo string, img lab.SeedResult, nginx bool) {
	t.Helper()
	if node != mxNginx {
		clPullHTTP(t, clHTTP(t, l), l, 1, repo, "v1", img, nil)
		return
	}
	if !nginx {
		return
	}
	if o := mxPull(l, node, repo, img); o.err != nil {
		t.Fatalf("warming the NGINX node's proxies: %v", o)
	}
	ref := l.PullRefFor(node, repo, "v1")
	if out, err := l.Crictl(ctxFor(t, plWait), node, "rmi", ref); err != nil {
		t.Fatalf("crictl rmi %s: %v: %s", ref, err, out)
	}
}

// mxLayerGETs describes the upstream's GETs of img's layers, for a failure message.
func mxLayerGETs(l *lab.Lab, img lab.SeedResult) string {
	entries, err := l.UpstreamLog()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range lab.BlobGETs(entries) {
		for _, d := range img.Layers {
			if e.Digest() == d {
				out = append(out, fmt.Sprintf("%s %s from %s: %d, %d bytes, Range %q", e.Time.Format("15:04:05.000"), d[:19], e.Remote, e.Status, e.Bytes, e.Range))
			}
		}
	}
	// What the masters said of these layers and of their peers says why a layer
	// went to the upstream twice: the last few of their warnings.
	var said []string
	for _, m := range l.Masters {
		b, err := os.ReadFile(m.Log)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				for _, d := range img.Layers {
					if strings.Contains(line, d) || strings.Contains(line, "peer") {
						said = append(said, m.Name+": "+line)
						break
					}
				}
			}
		}
	}
	out = append(out, said[max(0, len(said)-20):]...)
	return strings.Join(out, "; ")
}

// mxReissue gives the named master or proxy a certificate of kind and restarts it.
func mxReissue(t *testing.T, l *lab.Lab, name string, kind lab.CertKind) {
	t.Helper()
	if err := l.ReissueCert(ctxFor(t, plWait), name, kind); err != nil {
		t.Fatal(err)
	}
}

// mxWaitNRILast waits until the NRI node's hosts.toml lists master i last: its
// plugin has seen it fail.
func mxWaitNRILast(t *testing.T, l *lab.Lab, i int) {
	t.Helper()
	mxWaitNRIOrder(t, l, i, "last", strings.LastIndex)
}

// mxWaitNRIOrder waits until the host that find picks in the NRI node's hosts.toml
// (the first or the last) is master i's.
func mxWaitNRIOrder(t *testing.T, l *lab.Lab, i int, where string, find func(s, sub string) int) {
	t.Helper()
	want := `[host."https://` + lab.MasterAddr(l.Slot, i) + `"]`
	path := l.Nodes[mxNRI-1].HostsToml(l.ImageHost)
	if why := clPoll(plWait, func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			return err.Error()
		}
		if j := find(string(b), `[host."`); j < 0 || !strings.HasPrefix(string(b[j:]), want) {
			return fmt.Sprintf("%s does not list master-%d %s:\n%s", path, i, where, b)
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
}

// mxDamage returns a row's damage: do, on every master that stores d.
func mxDamage(what string, do func(l *lab.Lab, master int, d string) error) func(t *testing.T, l *lab.Lab, d string) {
	return func(t *testing.T, l *lab.Lab, d string) {
		t.Helper()
		n := 0
		for i, m := range l.Masters {
			if _, ok := clStoreBlobs(t, l, m.Name)[d]; !ok {
				continue
			}
			if err := do(l, i+1, d); err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n == 0 {
			t.Fatalf("no master stores %s to %s", d, what)
		}
	}
}
