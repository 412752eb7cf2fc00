package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	s, err := lab.GetMetrics(ctxFor(t, 30*time.Second), "http://"+lab.NodeMetricsAddr(l.Slot, 1)+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Sum("hopless_nri_setup_problems", nil); !ok || v != 1 {
		t.Errorf("hopless_nri_setup_problems = %g (found %v), want 1", v, ok)
	}
}
