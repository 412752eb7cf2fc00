package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// TestS3SharedBucket runs the masters on one bucket of the lab's S3 server: a pull
// stores each blob in the bucket once, and after the masters that served it stop,
// another master serves the same image from the bucket without the upstream.
func TestS3SharedBucket(t *testing.T) {
	l := upLab(t, slotS3Pull, 3, 1, func(o *lab.Options) {
		o.Mode, o.Storage = lab.ModeInprocess, lab.StorageS3
		// Without peers a master's only source besides the upstream is the bucket.
		o.Registryd.NoPeers = true
		// Most of the first pull goes to master-1, so that a master that served
		// nothing is left when the ones that served are stopped.
		o.Weights = []int{20, 1, 1}
		// A hedge to a master without peers fills the blob from the upstream
		// again when the bucket does not hold it yet: that is the design, and not
		// what this test is about.
		o.RegistryExtra = "hedge = { budget_percent = 0 }"
	})
	repo := lab.UpstreamPath + "/s3"
	img := seed(t, l, repo, "v1", 3, 1<<20)
	ref := l.PullRef(repo, "v1")
	pull(t, l, 1, ref, img.Digest)

	before := blobGETsUpstream(t, l)
	for _, d := range img.Layers {
		if before[d] != 1 {
			t.Errorf("layer %s: the upstream served it %d times, want once; all: %s", d, before[d], describe(before))
		}
	}
	// A master commits a blob to the bucket after the client has its last byte (the
	// upload is not waited on by the pull): wait for the objects.
	var keys []string
	if why := clPoll(plWait, func() string {
		var err error
		if keys, err = l.S3Keys(ctxFor(t, 30*time.Second)); err != nil {
			return err.Error()
		}
		for _, d := range img.Layers {
			enc := strings.TrimPrefix(d, "sha256:")
			found := false
			for _, k := range keys {
				found = found || strings.HasSuffix(k, "/blobs/sha256/"+enc[:2]+"/"+enc)
			}
			if !found {
				return fmt.Sprintf("layer %s is not an object in bucket %s; it holds %q", d, lab.S3Bucket, keys)
			}
		}
		return ""
	}); why != "" {
		t.Error(why)
	}

	served := servedBy(t, l)
	var left []string
	for _, m := range l.Masters {
		if served[m.Name] == 0 {
			left = append(left, m.Name)
			continue
		}
		if err := l.Stop(m.Name); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("first pull served by %s; %d objects in the bucket; stopped the masters that served, left %v", describe(served), len(keys), left)
	if len(left) == 0 {
		t.Fatalf("every master served the first pull (%s); none is left that did not", describe(served))
	}
	if _, err := l.Crictl(ctxFor(t, time.Minute), 1, "rmi", ref); err != nil {
		t.Fatal(err)
	}
	pull(t, l, 1, ref, img.Digest)

	after := servedBy(t, l)
	again := 0
	for _, name := range left {
		again += after[name]
	}
	t.Logf("second pull: blob GETs served by %s", describe(after))
	if again < len(img.Layers) {
		t.Errorf("second pull: masters %v served %d blob GETs, want at least the %d layers; served: %s", left, again, len(img.Layers), describe(after))
	}
	if now := blobGETsUpstream(t, l); describe(now) != describe(before) {
		t.Errorf("second pull asked the upstream for blobs again: before %s, after %s", describe(before), describe(now))
	}
}
