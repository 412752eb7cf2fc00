package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/test/lab"
)

const slotConformance = 77

// ocSummary is the conformance suite's console summary: the overall result, its
// counts (Pass, FAIL, Error, ...) and each API or data row's status. The suite's YAML
// report writer panics after a read-only run, before junit.xml is written; the
// summary before it is complete.
type ocSummary struct {
	result string
	counts map[string]int
	rows   map[string]string
}

// TestOCIConformance runs the OCI distribution-spec conformance suite (its
// read-only mode: content preloaded, no pushes or deletes) against a master and,
// as the baseline in the same run, against the lab's upstream (distribution),
// over TLS verified with the lab CA. The content is an image, a multi-platform
// index and a signature of the image kept under the referrers tag. Every test the
// suite runs on the master must pass; the upstream's failures are logged, not
// asserted.
func TestOCIConformance(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotConformance, 2, 0)
	repo := lab.UpstreamPath + "/conformance"
	img := seed(t, l, repo, "v1", 2, 16<<10)
	idx, err := l.Seed(ctxFor(t, time.Minute), repo, "multi", 1, 16<<10, true)
	if err != nil {
		t.Fatal(err)
	}
	c := clHTTP(t, l)
	opts := []remote.Option{remote.WithTransport(c.Transport), remote.WithContext(ctxFor(t, time.Minute))}
	ref, err := name.NewTag(l.Upstream + "/" + repo + ":v1")
	if err != nil {
		t.Fatal(err)
	}
	image, err := remote.Image(ref, opts...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := image.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	_, sigDigest := pushSignature(t, l, c, repo, image)
	data := map[string]string{
		"OCI_RO_DATA_TAGS":      "v1 multi sig",
		"OCI_RO_DATA_MANIFESTS": strings.Join([]string{img.Digest, idx.Digest, sigDigest.String()}, " "),
		"OCI_RO_DATA_BLOBS":     strings.Join(append(append([]string{}, img.Layers...), cfg.String()), " "),
		"OCI_RO_DATA_REFERRERS": img.Digest,
	}

	ours := ocRun(t, l, lab.MasterAddr(l.Slot, 1), clLocalName(repo), data)
	theirs := ocRun(t, l, l.Upstream, repo, data)
	if ours.result != "Pass" || ours.counts["FAIL"] != 0 || ours.counts["Error"] != 0 || ours.counts["Pass"] == 0 {
		t.Errorf("registryd: conformance result %q, counts %v", ours.result, ours.counts)
	}
	for _, row := range []string{"Ping", "Tag listing", "Blob get", "Blob head", "Manifest get by digest", "Manifest get by tag",
		"Manifest head by digest", "Manifest head by tag", "Referrers", "Invalid Manifest Digest", "Read Only Inputs"} {
		if got := ours.rows[row]; got != "Pass" {
			t.Errorf("registryd: %s: %q, want Pass", row, got)
		}
	}
	var differ []string
	for row, st := range theirs.rows {
		if st != ours.rows[row] {
			differ = append(differ, fmt.Sprintf("%s: distribution %s, registryd %s", row, st, ours.rows[row]))
		}
	}
	slices.Sort(differ)
	t.Logf("conformance: registryd %s %v; distribution (the upstream) %s %v; rows that differ: %s",
		ours.result, ours.counts, theirs.result, theirs.counts, strings.Join(differ, "; "))
}

// ocRun runs the conformance suite against registry's repository repo with the
// read-only data, and returns its console summary.
func ocRun(t *testing.T, l *lab.Lab, registry, repo string, data map[string]string) ocSummary {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(labOptions(t).ToolsDir, "conformance"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"SSL_CERT_FILE="+l.CA,
		"OCI_REGISTRY="+registry, "OCI_TLS=enabled", "OCI_REPO1="+repo, "OCI_REPO2="+repo,
		"OCI_RESULTS_DIR="+filepath.Join(dir, "results"), "OCI_VERSION=1.1",
		"OCI_API_PUSH=false", "OCI_API_BLOBS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false", "OCI_API_TAGS_DELETE=false",
		"OCI_DATA_SHA512=false")
	for k, v := range data {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, _ := cmd.Output()
	sum := ocSummary{counts: map[string]int{}, rows: map[string]string{}}
	for line := range strings.SplitSeq(string(out), "\n") {
		line = strings.TrimSpace(line)
		if r, ok := strings.CutPrefix(line, "OCI Conformance Result:"); ok {
			sum.result = strings.TrimSpace(r)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		k = strings.TrimRight(k, ".")
		if !ok || !strings.Contains(line, "..") || k == "" {
			continue
		}
		v = strings.TrimSpace(v)
		if n, err := strconv.Atoi(v); err == nil {
			sum.counts[k] = n
		} else {
			sum.rows[k] = v
		}
	}
	if sum.result == "" || len(sum.rows) == 0 {
		t.Fatalf("conformance against %s/%s printed no summary:\n%s", registry, repo, out)
	}
	return sum
}
