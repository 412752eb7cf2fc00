package fill_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/space"
	"github.com/hopless/hopless/test/registrytest"
)

// resizeTmpfs changes the size of the tmpfs mounted on dir.
func resizeTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s with size %s: %v: %s", dir, size, err, out)
	}
}

// spaceCommitter is a committer that keeps disk space the way the store does, as far
// as a test wants: reserve decides each reservation, and every call is recorded.
type spaceCommitter struct {
	*committer
	reserve func(size, have int64) error

	mu       sync.Mutex
	holds    int // held now
	held     int // holds taken in all
	reserved [][2]int64
	full     []int64 // need of every SpoolFull
	fullErr  []error
}

func (c *spaceCommitter) HoldSpool(digest.Digest) func() {
	c.mu.Lock()
	c.holds++
	c.held++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.holds--
			c.mu.Unlock()
		})
	}
}

func (c *spaceCommitter) ReserveSpool(_ context.Context, _ digest.Digest, size, have int64) error {
	c.mu.Lock()
	c.reserved = append(c.reserved, [2]int64{size, have})
	c.mu.Unlock()
	if c.reserve != nil {
		return c.reserve(size, have)
	}
	return nil
}

func (c *spaceCommitter) SpoolFull(_ digest.Digest, need int64, err error) {
	c.mu.Lock()
	c.full = append(c.full, need)
	c.fullErr = append(c.fullErr, err)
	c.mu.Unlock()
}

func (c *spaceCommitter) snapshot() (holds, held int, reserved [][2]int64, full []int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holds, c.held, append([][2]int64(nil), c.reserved...), append([]int64(nil), c.full...)
}

func writeLeftover(t *testing.T, c fill.Committer, d digest.Digest, b []byte) string {
	t.Helper()
	spool := c.SpoolPath(d)
	if err := os.MkdirAll(filepath.Dir(spool), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(spool, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return spool
}

// TestLeftoverSurvives checks that a spool file left by a kill -9 is kept, whole,
// whatever the source does short of proving it bad: fails before answering (the
// upstream's 503, a refused connection), cuts or stalls without sending a byte, or
// cannot say that the offset is past the end. The next fill resumes from it.
func TestLeftoverSurvives(t *testing.T) {
	t.Parallel()
	const size = 4 * mib
	data := blob(size, 20)
	d := digest.FromBytes(data)
	have := int64(3 * mib)
	failure := upstreamFailure{fmt.Errorf("upstream answered 503: %w", errdefs.ErrUnavailable)}
	tests := []struct {
		name     string
		leftover []byte
		plan     func(int) call
		rangeErr error
		opens    []int64
	}{
		{
			name:     "upstream 503s",
			leftover: data[:have],
			plan:     func(int) call { return call{err: failure} },
			opens:    []int64{have}, // before the size: at once, no retries
		},
		{
			name:     "connection refused, again and again",
			leftover: data[:have],
			plan:     func(int) call { return call{err: errors.New("connection refused")} },
			opens:    []int64{have, have, have, have},
		},
		{
			name:     "answers but sends nothing",
			leftover: data[:have],
			plan:     func(int) call { return call{bytes: 0} },
			opens:    []int64{have, have, have, have},
		},
		{
			name:     "whole-length leftover, source fails at the end without saying out of range",
			leftover: blob(size, 21),
			rangeErr: errors.New("416 Requested Range Not Satisfiable"),
			opens:    []int64{size, size, size, size},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			spool := writeLeftover(t, c, d, tt.leftover)
			f, _ := newFiller(t, c, fill.WithRetries(3, time.Millisecond))
			src := &memSource{data: data, plan: tt.plan, rangeErr: tt.rangeErr}
			fl := f.Fill(d, "upstream", src.source)
			waitDone(t, fl)
			if fl.Err() == nil {
				t.Fatal("the fill succeeded against a failing source")
			}
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint(tt.opens) {
				t.Errorf("source offsets = %v, want %v", got, tt.opens)
			}
			got, err := os.ReadFile(spool)
			if err != nil || !bytes.Equal(got, tt.leftover) {
				t.Fatalf("leftover after the failed fill: %d bytes, %v; want the %d bytes kept unchanged", len(got), err, len(tt.leftover))
			}
			if len(tt.leftover) == size {
				return // a whole-length bad leftover needs a source that proves it bad
			}
			good := &memSource{data: data}
			again := f.Fill(d, "upstream", good.source)
			waitDone(t, again)
			if err := again.Err(); err != nil {
				t.Fatal(err)
			}
			if got := good.seen(); fmt.Sprint(got) != fmt.Sprint([]int64{have}) {
				t.Errorf("the next fill asked for %v, want a resume at the leftover's end [%d]", got, have)
			}
			checkCommitted(t, c, d, data)
		})
	}
}

// TestLeftoverProvenBad checks the answers that do prove a leftover bad, so that it
// is dropped and the fill starts over from byte 0: the blob is shorter than the
// leftover (out of range), and the finished blob does not verify.
func TestLeftoverProvenBad(t *testing.T) {
	t.Parallel()
	const size = 4 * mib
	data := blob(size, 22)
	d := digest.FromBytes(data)
	tests := []struct {
		name     string
		leftover []byte
		opens    []int64
	}{
		{"the upstream says the blob ends before the leftover", append(bytes.Clone(data), 9), []int64{size + 1, 0}},
		{"the resumed blob does not verify", blob(3*mib, 23), []int64{3 * mib, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			writeLeftover(t, c, d, tt.leftover)
			f, _ := newFiller(t, c)
			src := &memSource{data: data}
			fl := f.Fill(d, "upstream", src.source)
			waitDone(t, fl)
			if err := fl.Err(); err != nil {
				t.Fatal(err)
			}
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint(tt.opens) {
				t.Errorf("source offsets = %v, want %v", got, tt.opens)
			}
			checkCommitted(t, c, d, data)
		})
	}
}

// TestSpoolFullKeepsLeftover fills a blob larger than a real tmpfs: the write fails
// with ENOSPC, the fill fails at once (one source call, no retries, no restart from
// byte 0), reports it with the bytes still missing, and keeps the bytes written. With
// room again, the next fill resumes from them.
func TestSpoolFullKeepsLeftover(t *testing.T) {
	t.Parallel()
	dir := registrytest.Tmpfs(t, "1m")
	const size = 2 * mib
	data := blob(size, 24)
	d := digest.FromBytes(data)
	c := &spaceCommitter{committer: &committer{root: dir, commits: map[digest.Digest]int{}}}
	f, _ := newFiller(t, c)
	src := &memSource{data: data}
	fl := f.Fill(d, "upstream", src.source)
	ctx := testCtx(t)
	got, rerr := readFrom(ctx, fl, 0)
	waitDone(t, fl)
	err := fl.Err()
	if !space.Is(err) {
		t.Fatalf("fill error %v, want a lack of space", err)
	}
	if rerr == nil || len(got) >= size {
		t.Fatalf("a reader got %d bytes and %v from a fill that failed; want an error before the end", len(got), rerr)
	}
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatal("a reader got wrong bytes")
	}
	if got := src.seen(); fmt.Sprint(got) != "[0]" {
		t.Errorf("source offsets = %v, want [0]: a full disk is no reason to ask again", got)
	}
	left, err := os.ReadFile(c.SpoolPath(d))
	if err != nil || len(left) == 0 || !bytes.Equal(left, data[:len(left)]) {
		t.Fatalf("spool after ENOSPC: %d bytes, %v; want the good bytes written so far", len(left), err)
	}
	holds, held, reserved, full := c.snapshot()
	if holds != 0 || held != 1 {
		t.Errorf("holds now %d, taken %d; want 0 and 1", holds, held)
	}
	if fmt.Sprint(reserved) != fmt.Sprint([][2]int64{{size, 0}}) {
		t.Errorf("reservations %v, want one of the whole size", reserved)
	}
	if len(full) != 1 || full[0] <= 0 || full[0] > size-int64(len(left))+bufSizeSlack {
		t.Errorf("SpoolFull calls with need %v, want one with the bytes still missing (about %d)", full, size-len(left))
	}

	resizeTmpfs(t, dir, "4m")
	good := &memSource{data: data}
	again := f.Fill(d, "upstream", good.source)
	waitDone(t, again)
	if err := again.Err(); err != nil {
		t.Fatal(err)
	}
	if got := good.seen(); fmt.Sprint(got) != fmt.Sprint([]int64{int64(len(left))}) {
		t.Errorf("the fill after freeing space asked for %v, want a resume at the leftover's end [%d]", got, len(left))
	}
	checkCommitted(t, c.committer, d, data)
}

// bufSizeSlack allows for a write that landed partly before ENOSPC: one spool
// write is at most 128 KiB.
const bufSizeSlack = 128 * kib

// TestReservationRefused checks that a fill the store refuses for lack of room fails
// before anyone hears the size, with an error that says so, leaves no empty spool
// file and is not reported as a failed write; a leftover stays.
func TestReservationRefused(t *testing.T) {
	t.Parallel()
	const size = 2 * mib
	data := blob(size, 25)
	d := digest.FromBytes(data)
	refuse := func(int64, int64) error { return fmt.Errorf("blob needs room: %w", space.ErrNoSpace) }
	for _, have := range []int64{0, mib} {
		t.Run(fmt.Sprintf("leftover of %d bytes", have), func(t *testing.T) {
			t.Parallel()
			c := &spaceCommitter{committer: newCommitter(t), reserve: refuse}
			if have > 0 {
				writeLeftover(t, c, d, data[:have])
			}
			f, _ := newFiller(t, c)
			src := &memSource{data: data}
			fl := f.Fill(d, "upstream", src.source)
			if _, err := fl.Size(testCtx(t)); !errors.Is(err, space.ErrNoSpace) {
				t.Fatalf("Size: %v, want the refusal", err)
			}
			waitDone(t, fl)
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint([]int64{have}) {
				t.Errorf("source offsets = %v, want [%d]", got, have)
			}
			_, _, reserved, full := c.snapshot()
			if fmt.Sprint(reserved) != fmt.Sprint([][2]int64{{size, have}}) {
				t.Errorf("reservations %v, want [[%d %d]]", reserved, size, have)
			}
			if len(full) != 0 {
				t.Errorf("SpoolFull called %v for the store's own refusal", full)
			}
			st, err := os.Stat(c.SpoolPath(d))
			switch {
			case have == 0 && !errors.Is(err, os.ErrNotExist):
				t.Errorf("an empty spool file stays after a refusal: %v", err)
			case have > 0 && (err != nil || st.Size() != have):
				t.Errorf("leftover after a refusal: %v, %v; want %d bytes", st, err, have)
			}
		})
	}
}

// TestReservationGranted checks that a fill reserves once, at the first answer, and
// holds its spool file exactly while it runs.
func TestReservationGranted(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 1
	data := blob(size, 26)
	d := digest.FromBytes(data)
	c := &spaceCommitter{committer: newCommitter(t)}
	f, _ := newFiller(t, c)
	release := make(chan struct{})
	src := &memSource{data: data, pauseAt: mib, release: release, plan: func(i int) call {
		if i == 0 {
			return call{bytes: mib + kib}
		}
		return call{bytes: -1}
	}}
	fl := f.Fill(d, "upstream", src.source)
	if _, err := fl.Size(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if holds, _, _, _ := c.snapshot(); holds != 1 {
		t.Errorf("holds while the fill runs = %d, want 1", holds)
	}
	close(release)
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
	holds, held, reserved, _ := c.snapshot()
	if holds != 0 || held != 1 || fmt.Sprint(reserved) != fmt.Sprint([][2]int64{{size, 0}}) {
		t.Errorf("after the fill: holds %d, taken %d, reservations %v; want 0, 1, one of [%d 0] despite the resume", holds, held, reserved, size)
	}
	checkCommitted(t, c.committer, d, data)
}

func readDirect(t *testing.T, f *fill.Filler, d digest.Digest, src fill.Source) ([]byte, int64, error) {
	t.Helper()
	r, err := f.Direct(testCtx(t), d, src)
	if err != nil {
		return nil, 0, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return b, r.Size(), err
}

// TestDirect streams blobs without a spool: whole and verified, resumed after cuts,
// and never complete when the content is wrong.
func TestDirect(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 7
	data := blob(size, 27)
	d := digest.FromBytes(data)
	corrupt := bytes.Clone(data)
	corrupt[size-1] ^= 1
	tests := []struct {
		name   string
		served []byte
		plan   func(int) call
		want   func(error) bool
		opens  []int64
	}{
		{name: "whole", served: data, opens: []int64{0}},
		{
			name: "cut twice, resumed", served: data,
			plan: func(i int) call {
				if i < 2 {
					return call{bytes: mib - 3}
				}
				return call{bytes: -1}
			},
			opens: []int64{0, mib - 3, 2 * (mib - 3)},
		},
		{
			name: "size changes on resume", served: data,
			plan: func(i int) call {
				if i == 0 {
					return call{bytes: mib}
				}
				return call{bytes: -1, size: size + 1}
			},
			want: errdefs.IsDataLoss, opens: []int64{0, mib},
		},
		{
			name: "retries exhausted", served: data,
			plan: func(i int) call {
				if i == 0 {
					return call{bytes: mib}
				}
				return call{err: errors.New("connection refused")}
			},
			// The cut and two failed opens, then a third: 3 retries without progress.
			want: errdefs.IsUnavailable, opens: []int64{0, mib, mib, mib},
		},
		{name: "wrong last byte", served: corrupt, want: errdefs.IsDataLoss, opens: []int64{0}},
		{
			name: "not found", served: data,
			plan: func(int) call { return call{err: fmt.Errorf("blob unknown: %w", errdefs.ErrNotFound)} },
			want: errdefs.IsNotFound, opens: []int64{0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			f, m := newFiller(t, c, fill.WithRetries(3, time.Millisecond))
			src := &memSource{data: tt.served, plan: tt.plan}
			got, n, err := readDirect(t, f, d, src.source)
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint(tt.opens) {
				t.Errorf("source offsets = %v, want %v", got, tt.opens)
			}
			if tt.want == nil {
				if err != nil || n != size || !bytes.Equal(got, data) {
					t.Fatalf("got %d of %d bytes, %v; want the whole blob", len(got), n, err)
				}
				return
			}
			if !tt.want(err) {
				t.Fatalf("error %v, not of the expected class", err)
			}
			if int64(len(got)) > (size-1)/holdback*holdback {
				t.Fatalf("a failed direct read returned %d bytes, past the held-back tail", len(got))
			}
			if !bytes.Equal(got, data[:len(got)]) {
				t.Fatal("a failed direct read returned wrong bytes")
			}
			if tt.name == "wrong last byte" && value(t, m.VerifyFailures.WithLabelValues("fill")) != 1 {
				t.Error("a digest mismatch was not counted")
			}
			if entries, _ := os.ReadDir(c.root); len(entries) != 0 {
				t.Errorf("a direct read wrote to the store's directory: %v", entries)
			}
		})
	}
}

// TestDirectSmallAndEmpty covers blobs within the held-back tail and the empty blob.
func TestDirectSmallAndEmpty(t *testing.T) {
	t.Parallel()
	f, _ := newFiller(t, newCommitter(t))
	for _, size := range []int{0, 1, holdback, holdback + 1} {
		data := blob(size, uint64(30+size))
		d := digest.FromBytes(data)
		src := &memSource{data: data}
		got, n, err := readDirect(t, f, d, src.source)
		if err != nil || n != int64(size) || !bytes.Equal(got, data) {
			t.Errorf("size %d: got %d bytes of %d, %v", size, len(got), n, err)
		}
	}
	// A small wrong blob sends nothing at all.
	data := blob(10*kib, 40)
	bad := bytes.Clone(data)
	bad[0] ^= 1
	src := &memSource{data: bad}
	got, _, err := readDirect(t, f, digest.FromBytes(data), src.source)
	if !errdefs.IsDataLoss(err) || len(got) != 0 {
		t.Errorf("wrong small blob: %d bytes, %v; want none and data loss", len(got), err)
	}
}
