package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/lab"
)

const (
	slotLabDemo  = 58
	slotLabFlags = 59
)

// TestLabDemo runs what `make demo` runs: a lab up, an image seeded and pulled,
// who served what, and the lab down again, with nothing left running.
func TestLabDemo(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "demo")
	out, err := hoplessLab(t, "demo", "--dir", dir, "--slot", strconv.Itoa(slotLabDemo))
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{"== crictl pull ", "Image is up to date for sha256:", "== requests served by the masters", "== bringing the lab down"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	// 3 layers and a config, each fetched from the upstream once.
	m := regexp.MustCompile(`the pull made \d+ requests to the upstream, (\d+) of them blob GETs`).FindStringSubmatch(out)
	if m == nil || m[1] != "4" {
		t.Errorf("want 4 blob GETs at the upstream (3 layers and the config, once each), got %v:\n%s", m, out)
	}
	served := 0
	for _, m := range regexp.MustCompile(`master-\d served (\d+) requests`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		served += n
	}
	if served < 5 {
		t.Errorf("the masters served %d requests, want at least the manifest, its config and 3 layers:\n%s", served, out)
	}
	if left := processesMentioning(t, dir); len(left) > 0 {
		t.Errorf("processes still mention the demo's lab after it ended: %v", left)
	}
}

// TestLabCLIFlags drives `up --weights --fallback` and `signal`: the node's balancer
// reports the weights and its fallback (TestPluginWeights and TestPluginFallback
// test what they do), and each signal reaches the process
// named, by its PID, or is refused with an error that names what is wrong.
func TestLabCLIFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if out, err := hoplessLab(t, "up", "--dir", dir, "--slot", strconv.Itoa(slotLabFlags), "--masters", "3", "--nodes", "1",
		"--mode", "inprocess", "--weights", "3,1,1", "--fallback"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	l, err := lab.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down() })

	out, err := exec.Command(filepath.Join(l.BinDir, "containerd"), "hopless-status", "--debug-address", l.Nodes[0].Sock+".debug", "--json").Output()
	if err != nil {
		t.Fatalf("hopless-status: %v: %s", err, out)
	}
	var report struct {
		Hosts []struct {
			Fallback  bool `json:"fallback"`
			Endpoints []struct {
				URL    string `json:"url"`
				Weight int    `json:"weight"`
			} `json:"endpoints"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal(out, &report); err != nil || len(report.Hosts) != 1 || len(report.Hosts[0].Endpoints) != 3 {
		t.Fatalf("hopless-status --json: %v: %s", err, out)
	}
	h := report.Hosts[0]
	if !h.Fallback {
		t.Errorf("--fallback: the node's balancer has no fallback: %s", out)
	}
	for i, want := range []int{3, 1, 1} {
		if ep := h.Endpoints[i]; ep.URL != "https://"+lab.MasterAddr(l.Slot, i+1) || ep.Weight != want {
			t.Errorf("--weights 3,1,1: endpoint %d is %s with weight %d, want %s with %d", i, ep.URL, ep.Weight, lab.MasterAddr(l.Slot, i+1), want)
		}
	}

	state := func(name string) string {
		for _, s := range l.Status() {
			if s.Name == name {
				b, err := os.ReadFile("/proc/" + strconv.Itoa(s.PID) + "/stat")
				if err != nil {
					return "gone"
				}
				// The state follows the command name in parentheses.
				f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
				return f[0]
			}
		}
		t.Fatalf("no lab process %s", name)
		return ""
	}
	for _, step := range []struct{ sig, want string }{{"STOP", "T"}, {"CONT", "S"}} {
		if out, err := hoplessLab(t, "signal", "--dir", dir, "master-2", step.sig); err != nil {
			t.Fatalf("signal master-2 %s: %v: %s", step.sig, err, out)
		}
		got := ""
		if why := clPoll(plWait, func() string {
			if got = state("master-2"); (step.want == "T") != (got == "T") {
				return "state " + got
			}
			return ""
		}); why != "" {
			t.Errorf("after signal %s, master-2 is in state %s", step.sig, got)
		}
	}
	if out, err := hoplessLab(t, "signal", "--dir", dir, "master-3", "KILL"); err != nil {
		t.Fatalf("signal master-3 KILL: %v: %s", err, out)
	}
	if why := clPoll(plWait, func() string {
		for _, s := range l.Status() {
			if s.Name == "master-3" && s.Alive {
				return "master-3 still runs"
			}
		}
		return ""
	}); why != "" {
		t.Error(why)
	}
	if s := state("master-1"); s == "T" || s == "gone" {
		t.Errorf("master-1, never signalled, is %s", s)
	}
	for _, bad := range []struct{ name, sig, named string }{{"master-9", "STOP", "master-9"}, {"master-1", "HUP", "HUP"}} {
		out, err := hoplessLab(t, "signal", "--dir", dir, bad.name, bad.sig)
		if err == nil || !strings.Contains(out, bad.named) {
			t.Errorf("signal %s %s: want an error naming %s, got %v: %s", bad.name, bad.sig, bad.named, err, out)
		}
	}
}
