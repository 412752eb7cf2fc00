package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file run stock containerd with NRI on and hopless-nri keeping
// the image host's hosts.toml (lab mode nri), as an external plugin on the node's NRI
// socket and as a plugin that containerd launches itself. They assert what the node
// does: which master served the pulls (the masters' access logs), the order in the
// hosts.toml the plugin wrote, and what the plugin and containerd logged. They use
// slots 90..92.
const (
	slotNRIExternal     = 90
	slotNRIPreinstalled = 91
	slotNRIConfigPath   = 92
)

func nriLab(t *testing.T, slot int, plugin string, tune ...func(*lab.Options)) *lab.Lab {
	t.Helper()
	return upLab(t, slot, 3, 1, append([]func(*lab.Options){func(o *lab.Options) {
		o.Mode, o.NRIPlugin = lab.ModeNRI, plugin
	}}, tune...)...)
}

// nriMirrors returns the masters that node-1's hosts.toml lists, in order, and
// fails unless hopless-nri wrote it.
func nriMirrors(t *testing.T, l *lab.Lab) []string {
	t.Helper()
	b, err := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("# managed by hopless-nri")) {
		t.Fatalf("hosts.toml is not hopless-nri's:\n%s", b)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, `[host."https://`); ok && !strings.Contains(rest, "].") {
			out = append(out, rest[:strings.Index(rest, `"`)])
		}
	}
	return out
}

// nriMasterName is the lab name of the master at addr.
func nriMasterName(t *testing.T, l *lab.Lab, addr string) string {
	t.Helper()
	for _, m := range l.Masters {
		if m.Addr == addr {
			return m.Name
		}
	}
	t.Fatalf("no master at %s", addr)
	return ""
}

// nriWaitLast polls until node-1's hosts.toml lists addr last.
func nriWaitLast(t *testing.T, l *lab.Lab, addr, why string) []string {
	t.Helper()
	var got []string
	if msg := clPoll(30*time.Second, func() string {
		got = nriMirrors(t, l)
		if len(got) != len(l.Masters) {
			return fmt.Sprintf("hosts.toml lists %v, want all %d masters", got, len(l.Masters))
		}
		if got[len(got)-1] != addr {
			return fmt.Sprintf("hosts.toml lists %v, want %s last", got, addr)
		}
		return ""
	}); msg != "" {
		t.Fatalf("%s: %s", why, msg)
	}
	return got
}

// nriServed counts, per master, the node's blob GETs for the blobs of img.
func nriServed(t *testing.T, l *lab.Lab, img lab.SeedResult) map[string]int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, d := range img.Layers {
		want[d] = true
	}
	n := map[string]int{}
	for _, r := range reqs {
		if !r.IsBlobGET() || !strings.HasPrefix(r.Path, "/v2/") {
			continue
		}
		d := r.Path[strings.LastIndex(r.Path, "/")+1:]
		if want[d] && (r.Status == 200 || r.Status == 206) {
			n[r.Master]++
		}
	}
	return n
}

// nriLog returns node-1's plugin log.
func nriLog(t *testing.T, l *lab.Lab) string {
	t.Helper()
	b, err := os.ReadFile(l.Nodes[0].NRILog())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNRIExternal runs hopless-nri beside the node: pulls go to the node's first
// master; a killed and then a frozen master move to the end of hosts.toml and the
// next pulls are served by the others; a containerd restart is followed by a new
// connection and resync; uninstall restores the node's own hosts.toml byte for byte.
func TestNRIExternal(t *testing.T) {
	t.Parallel()
	l := nriLab(t, slotNRIExternal, lab.NRIExternal)
	repo := lab.UpstreamPath + "/nri"
	backup, err := os.ReadFile(filepath.Join(l.Nodes[0].NRIStateDir(), "backups", l.ImageHost+".hosts.toml"))
	if err != nil {
		t.Fatalf("the node's own hosts.toml was not backed up: %v", err)
	}

	order := nriMirrors(t, l)
	if len(order) != 3 {
		t.Fatalf("hosts.toml lists %v, want the 3 masters", order)
	}
	img1 := seed(t, l, repo, "v1", 2, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v1"), img1.Digest)
	first := nriMasterName(t, l, order[0])
	if got := nriServed(t, l, img1); got[first] != len(img1.Layers) || len(got) != 1 {
		t.Fatalf("blob GETs by master %v, want all %d from %s, the first in hosts.toml", got, len(img1.Layers), first)
	}

	// Killed: it goes last, and the next pull is served by the new first master.
	clKill(t, l, first)
	order = nriWaitLast(t, l, order[0], "after "+first+" was killed")
	img2 := seed(t, l, repo, "v2", 2, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v2"), img2.Digest)
	second := nriMasterName(t, l, order[0])
	if got := nriServed(t, l, img2); got[second] != len(img2.Layers) {
		t.Fatalf("blob GETs by master %v, want all %d from %s, now first", got, len(img2.Layers), second)
	}

	// Frozen: it accepts connections and answers nothing; it goes last too, so the
	// next pull never waits on it.
	olFreeze(t, l, second)
	order = nriWaitLast(t, l, l.Masters[masterIndex(t, l, second)].Addr, "after "+second+" froze")
	third := nriMasterName(t, l, order[0])
	if third == first || third == second {
		t.Fatalf("hosts.toml lists %v: the first master is %s, which is down", order, third)
	}
	img3 := seed(t, l, repo, "v3", 2, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v3"), img3.Digest)
	if got := nriServed(t, l, img3); got[third] != len(img3.Layers) {
		t.Fatalf("blob GETs by master %v, want all %d from %s", got, len(img3.Layers), third)
	}
	if log := nriLog(t, l); !strings.Contains(log, `"last_because_unhealthy"`) || strings.Count(log, "hosts.toml written") < 3 {
		t.Errorf("the plugin's log does not record the reorderings:\n%s", log)
	}

	// containerd restarts: the plugin connects again and resynchronizes.
	before := strings.Count(nriLog(t, l), `"msg":"synchronized"`)
	if err := l.Stop("node-1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctxFor(t, time.Minute), "node-1"); err != nil {
		t.Fatal(err)
	}
	if msg := clPoll(60*time.Second, func() string {
		if n := strings.Count(nriLog(t, l), `"msg":"synchronized"`); n <= before {
			return fmt.Sprintf("%d synchronizations, as before the restart", n)
		}
		return ""
	}); msg != "" {
		t.Fatalf("after containerd restarted: %s", msg)
	}
	img4 := seed(t, l, repo, "v4", 1, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v4"), img4.Digest)

	// Uninstall: the node's own file comes back byte for byte.
	if err := l.Stop("nri-1"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctxFor(t, time.Minute), filepath.Join(root(t), "bin", "hopless-nri"), "uninstall",
		"--config", l.Nodes[0].NRIConfig()).CombinedOutput()
	if err != nil {
		t.Fatalf("hopless-nri uninstall: %v: %s", err, out)
	}
	restored, err := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(restored, backup) || !bytes.HasPrefix(restored, []byte("# hopless lab: the node's own hosts.toml")) {
		t.Errorf("after uninstall hosts.toml is\n%s\nwant the node's own\n%s", restored, backup)
	}
}

func masterIndex(t *testing.T, l *lab.Lab, name string) int {
	t.Helper()
	for i, m := range l.Masters {
		if m.Name == name {
			return i
		}
	}
	t.Fatalf("no master %s", name)
	return -1
}

// TestNRIPreinstalled lets containerd launch hopless-nri from its plugin directory:
// hosts.toml is written and pulls go to the masters. Then the plugin's config is
// broken and containerd restarted: containerd logs the plugin's error naming the
// field and keeps serving, and pulls go on with hosts.toml as last written.
func TestNRIPreinstalled(t *testing.T) {
	t.Parallel()
	l := nriLab(t, slotNRIPreinstalled, lab.NRIPreinstalled)
	repo := lab.UpstreamPath + "/nri-pre"
	n := l.Nodes[0]
	order := nriMirrors(t, l)
	img1 := seed(t, l, repo, "v1", 2, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v1"), img1.Digest)
	if got := nriServed(t, l, img1); got[nriMasterName(t, l, order[0])] != len(img1.Layers) {
		t.Fatalf("blob GETs by master %v, want all from %s", got, order[0])
	}
	nriPluginDirHolds(t, n, lab.NRIPluginName)

	written, err := os.ReadFile(n.HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(n.NRIConfDir(), lab.NRIPluginName+".conf")
	if err := os.WriteFile(conf, []byte("node_config = \"/nonexistent\"\nhosts = \"sometimes\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.Stop("node-1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctxFor(t, time.Minute), "node-1"); err != nil {
		t.Fatalf("containerd with a broken plugin config: %v", err)
	}
	if msg := clPoll(30*time.Second, func() string {
		b, err := os.ReadFile(filepath.Join(n.Dir, "log"))
		if err != nil {
			return err.Error()
		}
		if !strings.Contains(string(b), "hosts: must be one of auto, manage, off") {
			return "containerd's log does not carry the plugin's configuration error"
		}
		return ""
	}); msg != "" {
		t.Fatal(msg)
	}
	img2 := seed(t, l, repo, "v2", 1, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v2"), img2.Digest)
	if now, _ := os.ReadFile(n.HostsToml(l.ImageHost)); !bytes.Equal(now, written) {
		t.Errorf("hosts.toml changed while the plugin could not start:\n%s", now)
	}
	nriPluginDirHolds(t, n, lab.NRIPluginName)
}

// nriPluginDirHolds checks that node's NRI plugin directory holds exactly names: a
// stray file there would make containerd fail NRI, and CRI with it, at its next start.
func nriPluginDirHolds(t *testing.T, n lab.Node, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(n.NRIPluginDir())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("%s holds %v, want %v", n.NRIPluginDir(), got, names)
	}
}

// TestNRIConfigPathReported runs the node with a two-directory config_path, which
// the transfer service reads as one path: the plugin reports that its hosts.toml
// would be ignored, in its log and its metrics.
func TestNRIConfigPathReported(t *testing.T) {
	t.Parallel()
	l := nriLab(t, slotNRIConfigPath, lab.NRIExternal, func(o *lab.Options) {
		o.CRIConfigPath = "{{dir}}/certs.d:/etc/docker/certs.d"
	})
	if msg := clPoll(30*time.Second, func() string {
		if !strings.Contains(nriLog(t, l), "containerd would ignore the hosts.toml") {
			return "the plugin's log does not report the config_path"
		}
		return ""
	}); msg != "" {
		t.Fatal(msg)
	}
	if log := nriLog(t, l); !strings.Contains(log, "2 directories") {
		t.Errorf("the report does not say why:\n%s", log)
	}
	s, err := lab.GetMetrics(ctxFor(t, 30*time.Second), "http://"+lab.NRIMetricsAddr(l.Slot, 1)+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Sum("hopless_nri_setup_problems", nil); !ok || v != 1 {
		t.Errorf("hopless_nri_setup_problems = %g (found %v), want 1", v, ok)
	}
}

// slotNRIPins is TestNRIPins's slot.
const slotNRIPins = 93

// TestNRIPins runs a pod and creates a container on an NRI node: the plugin learns
// the container's image from containerd (its name, resolved to a digest through
// CRI), reports it with node-1's token, and the master that served the node keeps
// the image through an eviction that takes an unused one; once the container is
// removed, the plugin reports the empty set and the image may go.
func TestNRIPins(t *testing.T) {
	t.Parallel()
	l := nriLab(t, slotNRIPins, lab.NRIExternal, func(o *lab.Options) {
		o.Containers = true
		o.Registryd = lab.RegistrydOptions{MaxBytes: "24MiB", EvictInterval: "1s"}
	})
	repo := lab.UpstreamPath + "/nri-pins"
	first := nriMasterName(t, l, nriMirrors(t, l)[0])
	mi := masterIndex(t, l, first) + 1

	img1 := seed(t, l, repo, "v1", 2, 8<<20)
	pull(t, l, 1, l.PullRef(repo, "v1"), img1.Digest)
	ctx := ctxFor(t, 2*time.Minute)
	pod, podConfig, err := l.RunPod(ctx, 1, "pinned")
	if err != nil {
		t.Fatalf("running a pod: %v", err)
	}
	ctr, err := l.CreateContainer(ctx, 1, pod, podConfig, "app", l.PullRef(repo, "v1"))
	if err != nil {
		t.Fatalf("creating a container: %v", err)
	}
	// Every master holds node-1's lease: the one it reported to sent it on.
	if msg := clPoll(60*time.Second, func() string {
		for i := 1; i <= len(l.Masters); i++ {
			if n := clMetric(t, l, i, "hopless_registryd_pin_sources"); n != 1 {
				return fmt.Sprintf("master-%d counts %g pin sources, want 1", i, n)
			}
		}
		return ""
	}); msg != "" {
		t.Fatalf("after creating container %s: %s; the plugin's log:\n%s", ctr, msg, nriLog(t, l))
	}
	if log := nriLog(t, l); !strings.Contains(log, `"msg":"pins reported"`) || !strings.Contains(log, `"images":1`) {
		t.Errorf("the plugin's log has no report of one image:\n%s", log)
	}

	// containerd restarts: the plugin resynchronizes, finds the same container, and
	// the pins stay as they were.
	syncs := strings.Count(nriLog(t, l), `"msg":"synchronized"`)
	if err := l.Stop("node-1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	if msg := clPoll(60*time.Second, func() string {
		log := nriLog(t, l)
		if strings.Count(log, `"msg":"synchronized"`) <= syncs {
			return "no synchronization since containerd restarted"
		}
		if !strings.Contains(log[strings.LastIndex(log, `"msg":"synchronized"`):], `"with_images":1`) {
			return "the last synchronization did not find the container's image"
		}
		return ""
	}); msg != "" {
		t.Fatalf("after containerd restarted: %s:\n%s", msg, nriLog(t, l))
	}
	for i := 1; i <= len(l.Masters); i++ {
		if n := clMetric(t, l, i, "hopless_registryd_pin_sources"); n != 1 {
			t.Errorf("after containerd restarted, master-%d counts %g pin sources, want 1", i, n)
		}
	}

	// Two more images through the same master: 48 MiB for 24, and the one in use stays.
	var unused [][]string
	for i := 2; i <= 3; i++ {
		tag := fmt.Sprintf("v%d", i)
		img := seed(t, l, repo, tag, 2, 8<<20)
		pull(t, l, 1, l.PullRef(repo, tag), img.Digest)
		unused = append(unused, img.Layers)
	}
	stored := nriWaitStore(t, l, first, "after two more images", func(b map[string]int64) string {
		if in, _ := clPresent(b, unused[0]); len(in) > 0 {
			return fmt.Sprintf("blobs %v of the unused image v2 are still stored", in)
		}
		return ""
	})
	if _, out := clPresent(stored, img1.Layers); len(out) > 0 {
		t.Fatalf("layers %v of the image in use were evicted from %s (master %d)", out, first, mi)
	}

	// The container goes: the node reports no images, and v1 may be evicted.
	if _, err := l.Crictl(ctx, 1, "rm", ctr); err != nil {
		t.Fatal(err)
	}
	if msg := clPoll(60*time.Second, func() string {
		if n := clMetric(t, l, mi, "hopless_registryd_pin_sources"); n != 0 {
			return fmt.Sprintf("%s counts %g pin sources, want 0", first, n)
		}
		return ""
	}); msg != "" {
		t.Fatalf("after removing the container: %s", msg)
	}
	img4 := seed(t, l, repo, "v4", 2, 8<<20)
	pull(t, l, 1, l.PullRef(repo, "v4"), img4.Digest)
	nriWaitStore(t, l, first, "after the container was removed and v4 pulled", func(b map[string]int64) string {
		if in, _ := clPresent(b, img1.Layers); len(in) > 0 {
			return fmt.Sprintf("layers %v of v1 are still stored although nothing uses it", in)
		}
		return ""
	})

	// A plugin that hangs (SIGSTOP), then one that is gone (kill -9): pods still
	// start, containers are still created, and pulls still work with hosts.toml as
	// last written.
	written, err := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGSTOP, syscall.SIGKILL} {
		if err := l.Signal("nri-1", sig); err != nil {
			t.Fatal(err)
		}
		tag := "hung"
		if sig == syscall.SIGKILL {
			tag = "killed"
		}
		img := seed(t, l, repo, tag, 1, 1<<20)
		pull(t, l, 1, l.PullRef(repo, tag), img.Digest)
		pod, podConfig, err := l.RunPod(ctx, 1, "with-plugin-"+tag)
		if err != nil {
			t.Fatalf("running a pod with the plugin %s: %v", tag, err)
		}
		if _, err := l.CreateContainer(ctx, 1, pod, podConfig, "app-"+tag, l.PullRef(repo, tag)); err != nil {
			t.Fatalf("creating a container with the plugin %s: %v", tag, err)
		}
		if now, _ := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost)); !bytes.Equal(now, written) {
			t.Errorf("hosts.toml changed with the plugin %s:\n%s", tag, now)
		}
		if sig == syscall.SIGSTOP {
			if err := l.Signal("nri-1", syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// nriWaitStore polls until master's blobs take at most 24 MiB and cond holds.
func nriWaitStore(t *testing.T, l *lab.Lab, master, what string, cond func(map[string]int64) string) map[string]int64 {
	t.Helper()
	var blobs map[string]int64
	if msg := clPoll(60*time.Second, func() string {
		blobs = clStoreBlobs(t, l, master)
		if n := clTotal(blobs); n > clTightMax {
			return fmt.Sprintf("%s holds %d bytes of blobs, over %d", master, n, clTightMax)
		}
		return cond(blobs)
	}); msg != "" {
		t.Fatalf("%s: %s", what, msg)
	}
	return blobs
}

// slotNRIBesideInprocess is TestNRIBesideInprocess's slot.
const slotNRIBesideInprocess = 94

// TestNRIBesideInprocess runs hopless-nri (hosts = "auto") beside our containerd
// build: it finds the hopless plugin, leaves hosts.toml alone, and still reports
// pins; pulls go through the in-process plugin.
func TestNRIBesideInprocess(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotNRIBesideInprocess, 3, 1, inprocess(), func(o *lab.Options) { o.NRIPlugin = lab.NRIExternal })
	before, err := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	if msg := clPoll(30*time.Second, func() string {
		log := nriLog(t, l)
		if !strings.Contains(log, "containerd is hopless's own build") {
			return "the plugin did not notice hopless's own build"
		}
		if !strings.Contains(log, `"msg":"pins reported"`) {
			return "the plugin reported no pins"
		}
		return ""
	}); msg != "" {
		t.Fatalf("%s:\n%s", msg, nriLog(t, l))
	}
	repo := lab.UpstreamPath + "/nri-inprocess"
	img := seed(t, l, repo, "v1", 2, 1<<20)
	pull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	after, err := os.ReadFile(l.Nodes[0].HostsToml(l.ImageHost))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("hosts.toml changed beside the in-process plugin:\n%s", after)
	}
	if log := nriLog(t, l); strings.Contains(log, "hosts.toml written") {
		t.Errorf("the plugin wrote hosts.toml beside the in-process plugin:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(l.Nodes[0].NRIStateDir(), "backups")); err == nil {
		t.Errorf("the plugin took over hosts.toml files (%s exists)", l.Nodes[0].NRIStateDir())
	}
}
