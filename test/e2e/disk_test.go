package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file check that a full disk degrades a master and never breaks
// it, and that a spool file survives an outage. Slots 75..79 belong to them.
const (
	slotDiskFull     = 75
	slotDiskLeftover = 76
)

// freeSpace is what the filesystem holding dir has left for an unprivileged writer.
func freeSpace(t *testing.T, dir string) int64 {
	t.Helper()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Bavail) * int64(fs.Bsize)
}

// takeDisk writes a file of n bytes named name into dir, as another user of the
// disk would; the returned func removes it (and so does the end of the test).
func takeDisk(t *testing.T, dir, name string, n int64) func() {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, make([]byte, n), 0o600); err != nil {
		t.Fatalf("taking %d bytes of %s: %v", n, dir, err)
	}
	remove := func() {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			t.Error(err)
		}
	}
	t.Cleanup(remove)
	return remove
}

// readyz GETs master i's /readyz, which must answer 200, and returns its body.
func readyz(t *testing.T, ctx context.Context, c *http.Client, l *lab.Lab, master int) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+l.Masters[master-1].Addr+"/readyz", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz of master-%d: %d %s; want 200: a master that serves its cache stays ready", master, resp.StatusCode, b)
	}
	return string(b)
}

func spoolFiles(t *testing.T, root string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(root, "_spool", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDiskFullStreamsThrough runs a master whose storage is a 24 MiB tmpfs, of which
// other files take most. A blob larger than the room left is streamed whole and
// right from the upstream without caching (its fill refused before the client heard
// anything), the spool stays clean, /readyz says why, and cached content is still
// served from the store. Below storage.min_free no fill even starts. Once the room is
// back, the next fill caches the blob.
func TestDiskFullStreamsThrough(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotDiskFull, 1, 0, func(o *lab.Options) {
		o.Registryd = lab.RegistrydOptions{NoPeers: true, StorageTmpfs: "24m"}
	})
	root := l.StorageRoot(1)
	small := lab.UpstreamPath + "/disk-small"
	big := lab.UpstreamPath + "/disk-big"
	mid := lab.UpstreamPath + "/disk-mid"
	smallLayers, smallSize := seedBlobs(t, l, small, "v1", 1, 256<<10)
	bigLayers, bigSize := seedBlobs(t, l, big, "v1", 1, layerFile)
	midLayers, midSize := seedBlobs(t, l, mid, "v1", 1, 256<<10)
	s, b, m := smallLayers[0], bigLayers[0], midLayers[0]
	c := labHTTP(t, l)
	ctx := ctxFor(t, 3*time.Minute)

	// A cached blob.
	checkWhole(t, "small blob, first GET", getBlob(ctx, c, l, 1, small, s, ""), s, smallSize)
	eventually(t, waitLimit, "the small blob is served from the store", func() bool {
		r := getBlob(ctx, c, l, 1, small, s, "")
		return r.complete() && r.Header.Get("Hopless-Cache") == "hit"
	})

	// Leave 4 MiB: less than the 8 MiB blob needs, even if the small blob went.
	takeDisk(t, root, "filler-1", freeSpace(t, root)-4<<20)
	r := getBlob(ctx, c, l, 1, big, b, "")
	checkWhole(t, "big blob on a full disk", r, b, bigSize)
	if got := r.Header.Get("Hopless-Cache"); got != "miss" {
		t.Errorf("big blob on a full disk: Hopless-Cache %q, want miss", got)
	}
	var gets []lab.AccessEntry
	eventually(t, waitLimit, "the upstream has logged the refused fill and the stream", func() bool {
		gets = upstreamGETs(t, l, b)
		return len(gets) >= 2
	})
	whole := 0
	for _, g := range gets {
		if g.Range == "" && g.Status == http.StatusOK && g.Bytes == bigSize {
			whole++
		}
	}
	if len(gets) != 2 || whole != 1 {
		t.Fatalf("want 2 upstream GETs of the big blob, one refused fill closed after its headers and one whole stream, got:%s", describeEntries(gets))
	}
	if files := spoolFiles(t, root); len(files) != 0 {
		t.Errorf("spool files after a refused fill: %v", files)
	}
	if body := readyz(t, ctx, c, l, 1); !strings.Contains(body, "the last write failed for lack of space") || !strings.Contains(body, b) {
		t.Errorf("/readyz after the refusal: %q, want it to say that the big blob found no room", body)
	}
	if v := metric(t, l, 1, "hopless_registryd_storage_writable", nil); v != 0 {
		t.Errorf("hopless_registryd_storage_writable = %v, want 0", v)
	}

	// Cached content is still served; the big blob streams again at once.
	before := len(upstreamGETs(t, l, s))
	r = getBlob(ctx, c, l, 1, small, s, "")
	checkWhole(t, "small blob on a full disk", r, s, smallSize)
	if got := r.Header.Get("Hopless-Cache"); got != "hit" || len(upstreamGETs(t, l, s)) != before {
		t.Errorf("small blob on a full disk: Hopless-Cache %q, upstream GETs %d -> %d; want a hit", got, before, len(upstreamGETs(t, l, s)))
	}
	checkWhole(t, "big blob again", getBlob(ctx, c, l, 1, big, b, ""), b, bigSize)
	eventually(t, waitLimit, "the upstream has logged the second stream", func() bool { return len(upstreamGETs(t, l, b)) >= 3 })
	if gets := upstreamGETs(t, l, b); len(gets) != 3 || gets[2].Bytes != bigSize {
		t.Errorf("want one more whole upstream GET for the second request (no refused fill first), got:%s", describeEntries(gets))
	}

	// Below the floor (5% of 24 MiB): no fill starts, misses stream through.
	takeDisk(t, root, "filler-2", freeSpace(t, root)-100<<10)
	checkWhole(t, "another blob below the floor", getBlob(ctx, c, l, 1, mid, m, ""), m, midSize)
	eventually(t, waitLimit, "the upstream has logged the stream", func() bool { return len(upstreamGETs(t, l, m)) >= 1 })
	if gets := upstreamGETs(t, l, m); len(gets) != 1 || gets[0].Bytes != midSize {
		t.Errorf("want exactly one whole upstream GET below the floor, got:%s", describeEntries(gets))
	}
	if body := readyz(t, ctx, c, l, 1); !strings.Contains(body, "below storage.min_free 5%") {
		t.Errorf("/readyz below the floor: %q, want the reason", body)
	}
	if r := getBlob(ctx, c, l, 1, small, s, ""); !r.complete() || r.Header.Get("Hopless-Cache") != "hit" {
		t.Errorf("small blob below the floor: %s, Hopless-Cache %q; want a hit", r, r.Header.Get("Hopless-Cache"))
	}
	if n := metric(t, l, 1, "hopless_registryd_blob_passthrough_total", map[string]string{"result": "ok"}); n != 3 {
		t.Errorf("hopless_registryd_blob_passthrough_total{result=ok} = %v, want 3", n)
	}

	// Room again: the next fill caches the big blob.
	for _, f := range []string{"filler-1", "filler-2"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
	checkWhole(t, "big blob with room again", getBlob(ctx, c, l, 1, big, b, ""), b, bigSize)
	eventually(t, waitLimit, "the big blob is served from the store", func() bool {
		r := getBlob(ctx, c, l, 1, big, b, "")
		return r.complete() && r.Header.Get("Hopless-Cache") == "hit"
	})
	if gets := upstreamGETs(t, l, b); len(gets) != 4 {
		t.Errorf("want 4 upstream GETs of the big blob (refused, streamed, streamed, filled), got:%s", describeEntries(gets))
	}
	if body := readyz(t, ctx, c, l, 1); body != "ok\n" {
		t.Errorf("/readyz with room again: %q, want ok", body)
	}
	if v := metric(t, l, 1, "hopless_registryd_storage_writable", nil); v != 1 {
		t.Errorf("hopless_registryd_storage_writable with room again = %v, want 1", v)
	}
}

// rangeFrom is N of a "bytes=N-" Range header, or -1.
func rangeFrom(h string) int64 {
	s, ok := strings.CutPrefix(h, "bytes=")
	s, ok2 := strings.CutSuffix(s, "-")
	n, err := strconv.ParseInt(s, 10, 64)
	if !ok || !ok2 || err != nil {
		return -1
	}
	return n
}

// TestDiskLeftoverSurvivesOutage kills a master with SIGKILL in the middle of a fill,
// starts it again while the upstream answers 503, and then heals the upstream: every
// fill after the restart asks for the rest of the blob from where the spool file
// left by the kill ends, the 503s leave that file as it was, and the last fill
// completes the blob from it.
func TestDiskLeftoverSurvivesOutage(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotDiskLeftover, 1, 0, func(o *lab.Options) { o.Registryd = lab.RegistrydOptions{NoPeers: true} })
	repo := lab.UpstreamPath + "/leftover"
	layers, size := seedBlobs(t, l, repo, "v1", 1, layerFile)
	d := layers[0]
	setFaults(t, l, lab.Faults{ThrottleBPS: throttle})
	c := labHTTP(t, l)
	ctx := ctxFor(t, 3*time.Minute)

	resp, err := openBlob(ctx, c, l, 1, repo, d, "")
	if err != nil {
		t.Fatal(err)
	}
	const read = 3 << 20
	if _, err := io.ReadFull(resp.Body, make([]byte, read)); err != nil {
		t.Fatalf("reading the first 3 MiB of %s: %v", d, err)
	}
	if gets := upstreamGETs(t, l, d); len(gets) != 0 {
		t.Fatalf("the fill ended before the kill, so this run tests nothing:%s", describeEntries(gets))
	}
	if err := l.Signal("master-1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	eventually(t, waitLimit, "master-1 has exited after SIGKILL", func() bool {
		for _, s := range l.Status() {
			if s.Name == "master-1" {
				return !s.Alive
			}
		}
		return true
	})
	spool := filepath.Join(l.StorageRoot(1), "_spool", "sha256", strings.TrimPrefix(d, "sha256:")+".partial")
	fi, err := os.Stat(spool)
	if err != nil || fi.Size() < read || fi.Size() >= size {
		t.Fatalf("spool file left by the kill: %v, %v; want at least the %d bytes a client read, and less than the blob", fi, err, read)
	}
	left := fi.Size()

	setFaults(t, l, lab.Faults{Status: http.StatusServiceUnavailable})
	if err := l.Start(ctx, "master-1"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		r := getBlob(ctx, c, l, 1, repo, d, "")
		if r.Status != http.StatusBadGateway || r.Header.Get("Hopless-Upstream-Error") == "" {
			t.Fatalf("GET %d while the upstream answers 503: %s; want 502 with Hopless-Upstream-Error", i, r)
		}
	}
	if fi, err := os.Stat(spool); err != nil || fi.Size() != left {
		t.Fatalf("spool file after the upstream's 503s: %v, %v; want the %d-byte leftover kept as it was", fi, err, left)
	}

	setFaults(t, l, lab.Faults{})
	checkWhole(t, "GET with the upstream healthy again", getBlob(ctx, c, l, 1, repo, d, ""), d, size)
	var gets []lab.AccessEntry
	eventually(t, waitLimit, "the upstream has logged every GET", func() bool {
		gets = upstreamGETs(t, l, d)
		return len(gets) >= 5
	})
	if len(gets) != 5 {
		t.Fatalf("want 5 upstream GETs (the one the kill cut, three 503s, the resume), got:%s", describeEntries(gets))
	}
	if gets[0].Range != "" || gets[0].Bytes >= size {
		t.Errorf("want the first upstream GET whole-blob and cut by the kill, got:%s", describeEntries(gets))
	}
	for _, g := range gets[1:4] {
		if rangeFrom(g.Range) != left || g.Status != http.StatusServiceUnavailable {
			t.Errorf("want every fill during the outage to ask for bytes=%d- and get 503, got:%s", left, describeEntries(gets))
			break
		}
	}
	if g := gets[4]; rangeFrom(g.Range) != left || g.Status != http.StatusPartialContent || g.Bytes != size-left {
		t.Errorf("want the last fill to resume from the leftover with bytes=%d- answered whole (%d bytes), got:%s", left, size-left, describeEntries(gets))
	}
	// The client has the verified blob before the spool's fsync and the commit,
	// which then move the spool file into the store.
	eventually(t, waitLimit, "the fill has committed its spool file", func() bool {
		_, err := os.Stat(spool)
		return os.IsNotExist(err)
	})
}
