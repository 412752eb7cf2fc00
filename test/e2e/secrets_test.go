package e2e

import (
	"bytes"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// noSecrets fails the test when any of secrets (by what it is) shows in what the lab
// lets anyone see: every log file under the lab directory, every master's /metrics,
// every in-process node's metrics and `containerd hopless-status` (text and JSON).
// The files that hold the secrets on purpose (credentials, htpasswd, tokens, keys)
// are not logs and are not read.
//
// The lab's own secrets (DIR/secrets: the API and peer tokens, the node key, S3
// keys) are added to the ones given.
func noSecrets(t *testing.T, l *lab.Lab, secrets map[string]string) {
	t.Helper()
	files, err := os.ReadDir(filepath.Join(l.Dir, "secrets"))
	if err != nil {
		t.Fatalf("listing the lab's secrets: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(l.Dir, "secrets", f.Name()))
		if err != nil {
			t.Fatal(err)
		}
		secrets["lab secret "+f.Name()] = strings.TrimSpace(string(b))
	}
	seen := map[string][]byte{}
	err = filepath.WalkDir(l.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.Type().IsRegular() && (d.Name() == "log" || strings.HasSuffix(d.Name(), ".log")) {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			seen[p] = b
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the lab's logs: %v", err)
	}
	c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
	get := func(u string) {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d, %v", u, resp.StatusCode, err)
		}
		seen[u] = b
	}
	for i := range l.Masters {
		get("http://" + lab.MasterMetricsAddr(l.Slot, i+1) + "/metrics")
	}
	for i, n := range l.Nodes {
		if l.Mode != lab.ModeInprocess {
			continue
		}
		get("http://" + lab.NodeMetricsAddr(l.Slot, i+1) + "/v1/metrics")
		for _, args := range [][]string{{"hopless-status", "--debug-address", n.Sock + ".debug"}, {"hopless-status", "--debug-address", n.Sock + ".debug", "--json"}} {
			out, err := exec.Command(filepath.Join(l.BinDir, "containerd"), args...).CombinedOutput()
			if err != nil {
				t.Fatalf("containerd %s: %v: %s", strings.Join(args, " "), err, out)
			}
			seen["containerd "+strings.Join(args, " ")] = out
		}
	}
	if len(seen) == 0 {
		t.Fatal("nothing to search for secrets")
	}
	for what, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("secret %s is too short to search for: %q", what, s)
		}
		for where, b := range seen {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds the %s", where, what)
			}
		}
	}
	t.Logf("searched %d logs, metrics pages and status outputs for %d secrets", len(seen), len(secrets))
}
