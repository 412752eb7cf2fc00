package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file run masters on one bucket with eviction on: the bucket is
// the masters' shared storage (storage.shared). They use slots 53 to 55.
const (
	slotS3Evict      = 53
	slotS3KillUpload = 54
	slotS3Peers      = 55
)

// s3Blobs lists the blob objects in the lab's bucket by digest, with their sizes.
func s3Blobs(t *testing.T, l *lab.Lab) map[string]int64 {
	t.Helper()
	objs, err := l.S3Objects(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for k, size := range objs {
		i := strings.Index(k, "/blobs/")
		if i < 0 {
			continue
		}
		parts := strings.Split(k[i+len("/blobs/"):], "/")
		out[parts[0]+":"+parts[len(parts)-1]] = size
	}
	return out
}

// s3Key finds the bucket key that ends with suffix.
func s3Key(t *testing.T, l *lab.Lab, suffix string) string {
	t.Helper()
	keys, err := l.S3Keys(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasSuffix(k, suffix) {
			return k
		}
	}
	t.Fatalf("no key in bucket %s ends with %s; it holds %q", lab.S3Bucket, suffix, keys)
	return ""
}

// TestS3SharedEviction: master-1 evicts (the smallest id among the live masters)
// over what every master uses and pins. An image that master-2 keeps reading and one
// that master-2 pins stay, through a kill -9 of master-2 and a torn index of its
// own; an image nobody uses goes, after the grace.
func TestS3SharedEviction(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotS3Evict, 2, 0, func(o *lab.Options) {
		o.Storage = lab.StorageS3
		// Without peers each master fills on its own and finds the others' blobs in
		// the bucket: master-2 knows the images only from reading them there.
		o.Registryd = lab.RegistrydOptions{NoPeers: true, TTL: "2m", EvictInterval: "1s", EvictGrace: "30s", PinTTL: "1h"}
	})
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/shared-evict"
	imgs := map[string]lab.SeedResult{}
	blobs := map[string][]string{}
	for _, tag := range []string{"used", "pinned", "idle"} {
		imgs[tag] = seed(t, l, repo, tag, 2, 1<<20)
		blobs[tag] = clPullHTTP(t, c, l, 1, repo, tag, imgs[tag], nil)
	}
	clPullHTTP(t, c, l, 2, repo, "used", imgs["used"], nil)
	clPullHTTP(t, c, l, 2, repo, "pinned", imgs["pinned"], nil)
	// Every blob is in the bucket before anything may be evicted (a master short of
	// local space streams misses through without storing them).
	waitFills(t, l, 1)
	stored := s3Blobs(t, l)
	for tag, ds := range blobs {
		if _, out := clPresent(stored, ds); len(out) > 0 {
			t.Fatalf("blobs %v of the %s image are not in the bucket after the pulls", out, tag)
		}
	}
	token, err := l.NodeToken("node-1")
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"source":"node-1","images":[{"image":%q,"digest":%q}]}`, clLocalName(repo)+":pinned", imgs["pinned"].Digest)
	if r := clMust(t, c, http.MethodPut, clMasterURL(l, 2)+"/hopless/v1/pins",
		map[string]string{"Authorization": "Bearer " + token, "Content-Type": "application/json"}, strings.NewReader(body)); r.Status != http.StatusOK {
		t.Fatalf("PUT pins on master-2: %d %s", r.Status, r.Body)
	}

	// master-2 dies and comes back with its index torn: it rebuilds from the bucket
	// and keeps its pins, which are a file of their own.
	if err := l.Signal("master-2", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := l.S3Put(ctxFor(t, 30*time.Second), s3Key(t, l, "/masters/master-2/index.json"), []byte(`{"version":1,"entr`)); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctxFor(t, time.Minute), "master-2"); err != nil {
		t.Fatal(err)
	}
	if n := clMetric(t, l, 2, "hopless_registryd_pin_sources"); n != 1 {
		t.Fatalf("master-2 counts %g pin sources after a restart on a torn index, want 1", n)
	}

	// master-2 keeps reading "used" while "idle" outlives the TTL and the grace.
	start := time.Now()
	if why := clPoll(5*time.Minute, func() string {
		for _, d := range blobs["used"] {
			if err := clGetBlob(c, l, 2, repo, d, nil); err != nil {
				return err.Error()
			}
		}
		stored = s3Blobs(t, l)
		if in, _ := clPresent(stored, blobs["idle"]); len(in) > 0 {
			return fmt.Sprintf("blobs %v of the idle image are still in the bucket", in)
		}
		return ""
	}); why != "" {
		t.Fatalf("after %s: %s", time.Since(start).Round(time.Second), why)
	}
	t.Logf("the idle image was evicted %s after the pulls", time.Since(start).Round(time.Second))
	for _, tag := range []string{"used", "pinned"} {
		if _, out := clPresent(stored, blobs[tag]); len(out) > 0 {
			t.Errorf("blobs %v of the %s image were evicted from the bucket", out, tag)
		}
	}
	if n := clMetric(t, l, 1, "hopless_registryd_evictor"); n != 1 {
		t.Errorf("master-1 evictor gauge = %g, want 1", n)
	}
	if n := clMetric(t, l, 2, "hopless_registryd_evictor"); n != 0 {
		t.Errorf("master-2 evictor gauge = %g, want 0", n)
	}
	if n := clMetric(t, l, 2, "hopless_registryd_evictions_total"); n != 0 {
		t.Errorf("master-2 evicted %g times, want 0: only master-1 evicts", n)
	}
	for _, tag := range []string{"used", "pinned"} {
		for _, d := range blobs[tag] {
			if err := clGetBlob(c, l, 2, repo, d, nil); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestS3KilledMidUpload kills master-1 with SIGKILL as soon as the upstream has sent
// a 96 MiB layer, while the master uploads it to the bucket: the bucket then holds
// the whole object or none, never part of one, and a pull after the restart gets
// the layer whole. Then a read of it survives the object's removal mid-stream.
func TestS3KilledMidUpload(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotS3KillUpload, 1, 0, func(o *lab.Options) {
		o.Storage = lab.StorageS3
	})
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/kill-upload"
	img := seed(t, l, repo, "v1", 1, 96<<20)
	layer := img.Layers[0]
	fetched := make(chan error, 1)
	go func() { fetched <- clGetBlob(c, l, 1, repo, layer, nil) }()
	// Kill it while its multipart upload is in progress; a machine fast enough to
	// finish the upload between two looks kills it after, which must be as safe.
	ctx := ctxFor(t, 2*time.Minute)
	uploading := false
	for !uploading && len(s3Blobs(t, l)) == 0 {
		n, err := l.S3Uploads(ctx)
		if err != nil {
			t.Fatal(err)
		}
		uploading = n > 0
	}
	if err := l.Signal("master-1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-fetched
	left, err := l.S3Uploads(ctxFor(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed with an upload in progress: %v; %d multipart uploads left unfinished; blobs in the bucket: %v", uploading, left, s3Blobs(t, l))
	checkBucketBlobs(t, l)

	if err := l.Start(ctxFor(t, time.Minute), "master-1"); err != nil {
		t.Fatal(err)
	}
	if err := clGetBlob(c, l, 1, repo, layer, nil); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	waitFills(t, l, 1)
	if blobs := s3Blobs(t, l); blobs[layer] == 0 {
		t.Fatalf("the layer is not in the bucket after the fill: %v", blobs)
	}
	checkBucketBlobs(t, l)
	if n := len(clUpstreamGETs(t, l)[layer]); n > 2 {
		t.Errorf("the upstream served the layer %d times, want at most 2 (once before the kill, once after)", n)
	}

	// A read in progress survives the object's removal (as by another master's
	// eviction): the master holds one stream from the object store.
	resp, err := c.Get(clBlobURL(l, 1, repo, layer))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	enc := strings.TrimPrefix(layer, "sha256:")
	if err := l.S3Delete(ctxFor(t, 30*time.Second), s3Key(t, l, "/blobs/sha256/"+enc[:2]+"/"+enc)); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the read in progress broke when the object was removed, after %d bytes: %v", len(head)+len(rest), err)
	}
	if got := clDigest(append(head, rest...)); got != layer {
		t.Errorf("the read in progress got %d bytes hashing to %s", len(head)+len(rest), got)
	}
}

// waitFills waits until master i runs no fill: a client has the blob's bytes before
// the fill commits them.
func waitFills(t *testing.T, l *lab.Lab, i int) {
	t.Helper()
	if why := clPoll(time.Minute, func() string {
		if n := clMetric(t, l, i, "hopless_registryd_fills_in_flight"); n != 0 {
			return fmt.Sprintf("master-%d has %g fills running", i, n)
		}
		return ""
	}); why != "" {
		t.Fatal(why)
	}
}

// checkBucketBlobs reads every blob object in the bucket and checks it hashes to the
// digest it is stored as.
func checkBucketBlobs(t *testing.T, l *lab.Lab) {
	t.Helper()
	for d := range s3Blobs(t, l) {
		enc := strings.TrimPrefix(d, "sha256:")
		key := s3Key(t, l, "/blobs/sha256/"+enc[:2]+"/"+enc)
		b, err := l.S3Get(ctxFor(t, time.Minute), key)
		if err != nil {
			t.Fatal(err)
		}
		if got := clDigest(b); got != d {
			t.Errorf("object %s (%d bytes) hashes to %s: a partial or corrupt object is visible", key, len(b), got)
		}
	}
}

// TestS3PeersShareUploads: with peers, a blob that master-2 fills from its owner is
// uploaded to the bucket once, by the owner, and hashed once for the cluster.
func TestS3PeersShareUploads(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotS3Peers, 2, 0, func(o *lab.Options) {
		o.Storage = lab.StorageS3
	})
	clWaitPeersUp(t, l)
	c := clHTTP(t, l)
	repo := lab.UpstreamPath + "/peers-share"
	// Layers owned by master-1, asked of master-2 first.
	ds, _ := clSeedUntil(t, l, repo, 2, func(d string) bool { return clOwner(l, d) == "master-1" })
	for _, d := range ds {
		if err := clGetBlob(c, l, 2, repo, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The fills end after the client has its bytes: once the owner's copy is there.
	waitFills(t, l, 2)
	if n := clMetric(t, l, 2, "hopless_registryd_fills_adopted_total"); n != float64(len(ds)) {
		t.Errorf("master-2 adopted %g fills from the owner, want %d; peer requests %v, peer fills %g", n, len(ds),
			clPeerRequests(t, l), clMetric(t, l, 2, "hopless_registryd_peer_fills_total"))
	}
	gets := clUpstreamGETs(t, l)
	for _, d := range ds {
		if n := len(gets[d]); n != 1 {
			t.Errorf("the upstream served %s %d times, want once", d, n)
		}
	}
	// master-2 serves them again from the bucket: it trusts master-1's hash.
	for _, d := range ds {
		if err := clGetBlob(c, l, 2, repo, d, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := clMetric(t, l, 2, "hopless_registryd_blob_hashes_total"); n != 0 {
		t.Errorf("master-2 hashed %g stored blobs, want 0: master-1 hashed them as it filled", n)
	}
	if n := clMetric(t, l, 2, "hopless_registryd_shared_verified_total"); n < float64(len(ds)) {
		t.Errorf("master-2 trusted %g recorded hashes, want at least %d", n, len(ds))
	}
	checkBucketBlobs(t, l)
}
