package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/lab"
)

const slotWrongCA = 73

// TestWrongCAOneNode gives three nodes (in-process, NRI, NGINX hop) a CA file of
// another CA, as a node whose trust bundle was mis-provisioned, and leaves a fourth
// (in-process) with the right one. The three fail their pull with an error that
// names the certificate, and nothing reaches the upstream for them; the failure
// stays on those nodes: the fourth pulls the same image at once, each layer
// fetched from the upstream once, and the masters stay in its rotation.
func TestWrongCAOneNode(t *testing.T) {
	t.Parallel()
	wrong, err := lab.NewCA(filepath.Join(t.TempDir(), "wrong-ca"))
	if err != nil {
		t.Fatal(err)
	}
	wrongFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(wrongFile, wrong.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	l := upLab(t, slotWrongCA, 3, 4, func(o *lab.Options) {
		o.NodeModes = []string{lab.ModeInprocess, lab.ModeNRI, lab.ModeNginx, lab.ModeInprocess}
		o.NodeCAs = map[string]string{"node-1": wrongFile, "node-2": wrongFile, "node-3": wrongFile}
	})
	repo := lab.UpstreamPath + "/wrong-ca"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	ref := l.PullRef(repo, "v1")

	for node, kind := range map[int]string{1: "in-process", 2: "NRI", 3: "NGINX-hop"} {
		_, err := plPull(l, node, ref)
		if err == nil {
			t.Errorf("the %s node with a wrong CA pulled %s", kind, ref)
			continue
		}
		if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("the %s node with a wrong CA: %v; want an error that names the certificate", kind, err)
		}
		t.Logf("%s node with a wrong CA: %v", kind, err)
	}
	for _, d := range img.Layers {
		if gets := upstreamGETs(t, l, d); len(gets) != 0 {
			t.Fatalf("layer %s reached the upstream for nodes that trust no master:%s", d, describeEntries(gets))
		}
	}

	if _, err := plPull(l, 4, ref); err != nil {
		t.Fatalf("the node with the right CA, beside three with a wrong one: %v", err)
	}
	plHasImage(t, l, 4, img.Digest)
	for _, d := range img.Layers {
		if gets := upstreamGETs(t, l, d); len(gets) != 1 {
			t.Errorf("layer %s: %d upstream GETs for one pull, want 1:%s", d, len(gets), describeEntries(gets))
		}
	}
	metrics := plNodeMetrics(t, l, 4)
	for _, m := range l.Masters {
		if n := sampleSum(t, metrics, "hopless_plugin_ejections_total", map[string]string{"endpoint": plEndpoint(m)}); n != 0 {
			t.Errorf("node-4 ejected %s %g times: the other nodes' TLS failures reached its balancer", m.Name, n)
		}
	}
}
