package fill_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/metrics"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	// holdback mirrors the package's unverified-tail granularity.
	holdback = 64 * kib
	// testTimeout bounds every wait in these tests.
	testTimeout = 20 * time.Second
)

// TestMain fails the run if a goroutine of the package outlives the tests: every
// test closes its Filler, which must leave nothing running.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(5 * time.Second)
		for leaked := leakedGoroutines(); leaked != ""; leaked = leakedGoroutines() {
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "leaked goroutines:\n%s\n", leaked)
				code = 1
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	os.Exit(code)
}

func leakedGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var leaked []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "registryd/fill.(") {
			leaked = append(leaked, g)
		}
	}
	return strings.Join(leaked, "\n\n")
}

// committer is an in-memory-ish store: it renames spool files into its blobs directory
// and counts commits.
type committer struct {
	root string

	mu      sync.Mutex
	commits map[digest.Digest]int
}

func newCommitter(t *testing.T) *committer {
	return &committer{root: t.TempDir(), commits: make(map[digest.Digest]int)}
}

func (c *committer) SpoolPath(d digest.Digest) string {
	return filepath.Join(c.root, "spool", d.Algorithm().String(), d.Encoded())
}

func (c *committer) blobPath(d digest.Digest) string {
	return filepath.Join(c.root, "blobs", d.Encoded())
}

func (c *committer) CommitBlob(_ context.Context, d digest.Digest, spool string) error {
	if err := os.MkdirAll(filepath.Dir(c.blobPath(d)), 0o755); err != nil {
		return err
	}
	if err := os.Rename(spool, c.blobPath(d)); err != nil {
		return err
	}
	c.mu.Lock()
	c.commits[d]++
	c.mu.Unlock()
	return nil
}

func (c *committer) count(d digest.Digest) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.commits[d]
}

// call is how one Source call behaves.
type call struct {
	err   error // returned by the open
	bytes int64 // bytes served before the cut; <0 serves to the end
	stall bool  // at the cut, block until ctx is done instead of failing
	hang  bool  // the open itself blocks until ctx is done
	size  int64 // size to report instead of the real one, when > 0
}

// memSource serves data from memory and records the offsets it is asked for.
type memSource struct {
	data []byte
	plan func(i int) call // nil: every call serves to the end
	// The body blocks at byte pauseAt until release is closed (if release is not nil).
	pauseAt int64
	release chan struct{}
	// opened, if not nil, gets every open's offset.
	opened chan int64
	// rangeErr, if not nil, replaces the errdefs.ErrOutOfRange given for an offset at
	// or past the end.
	rangeErr error

	mu      sync.Mutex
	offsets []int64
}

func (s *memSource) source(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
	s.mu.Lock()
	i := len(s.offsets)
	s.offsets = append(s.offsets, off)
	s.mu.Unlock()
	if s.opened != nil {
		s.opened <- off
	}
	c := call{bytes: -1}
	if s.plan != nil {
		c = s.plan(i)
	}
	if c.err != nil {
		return nil, 0, c.err
	}
	if c.hang {
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}
	size := int64(len(s.data))
	if c.size > 0 {
		size = c.size
	}
	if off > 0 && off >= int64(len(s.data)) {
		if s.rangeErr != nil {
			return nil, 0, s.rangeErr
		}
		return nil, 0, fmt.Errorf("offset %d of %d: %w", off, len(s.data), errdefs.ErrOutOfRange)
	}
	end := int64(len(s.data))
	if c.bytes >= 0 {
		end = min(end, off+c.bytes)
	}
	return &memBody{s: s, ctx: ctx, pos: off, end: end, stall: c.stall}, size, nil
}

func (s *memSource) seen() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.offsets...)
}

type memBody struct {
	s     *memSource
	ctx   context.Context
	pos   int64
	end   int64
	stall bool
}

func (b *memBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	s := b.s
	if s.release != nil && b.pos == s.pauseAt {
		select {
		case <-s.release:
		case <-b.ctx.Done():
			return 0, b.ctx.Err()
		}
	}
	if b.pos >= b.end {
		if b.end == int64(len(s.data)) {
			return 0, io.EOF
		}
		if b.stall {
			<-b.ctx.Done()
			return 0, b.ctx.Err()
		}
		return 0, io.ErrUnexpectedEOF
	}
	stop := b.end
	if s.release != nil && b.pos < s.pauseAt {
		stop = min(stop, s.pauseAt)
	}
	n := copy(p[:min(int64(len(p)), 32*kib, stop-b.pos)], s.data[b.pos:stop])
	b.pos += int64(n)
	return n, nil
}

func (b *memBody) Close() error { return nil }

// value reads a counter or gauge, or a histogram's sample count.
func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	var sum float64
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			t.Fatal(err)
		}
		switch {
		case pb.Counter != nil:
			sum += pb.Counter.GetValue()
		case pb.Gauge != nil:
			sum += pb.Gauge.GetValue()
		case pb.Histogram != nil:
			sum += float64(pb.Histogram.GetSampleCount())
		}
	}
	return sum
}

func blob(size int, seed uint64) []byte {
	b := make([]byte, size)
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newFiller(t *testing.T, c fill.Committer, opts ...fill.Option) (*fill.Filler, *metrics.Metrics) {
	m := metrics.New()
	f := fill.New(c, append([]fill.Option{fill.WithMetrics(m), fill.WithRetries(5, time.Millisecond)}, opts...)...)
	t.Cleanup(f.Close)
	return f, m
}

func waitDone(t *testing.T, fl *fill.Fill) {
	t.Helper()
	select {
	case <-fl.Done():
	case <-time.After(testTimeout):
		t.Fatal("fill did not finish in time")
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// readFrom reads the whole rest of the blob from offset.
func readFrom(ctx context.Context, fl *fill.Fill, offset int64) ([]byte, error) {
	r, err := fl.Reader(ctx, offset)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func checkCommitted(t *testing.T, c *committer, d digest.Digest, want []byte) {
	t.Helper()
	if n := c.count(d); n != 1 {
		t.Fatalf("commits = %d, want 1", n)
	}
	got, err := os.ReadFile(c.blobPath(d))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("committed blob differs from the source's")
	}
	if _, err := os.Stat(c.SpoolPath(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool file still there after commit: %v", err)
	}
}

// httpBlob serves data with Range support; cut(i) is how many bytes request i sends
// before the connection is dropped (<0: all). Every request waits for gate, if set.
type httpBlob struct {
	data []byte
	cut  func(i int) int64
	gate chan struct{}

	mu      sync.Mutex
	offsets []int64
}

func (h *httpBlob) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var off int64
	if rg := r.Header.Get("Range"); rg != "" {
		v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		off = v
	}
	h.mu.Lock()
	i := len(h.offsets)
	h.offsets = append(h.offsets, off)
	h.mu.Unlock()
	size := int64(len(h.data))
	if off >= size && off > 0 {
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	if h.gate != nil {
		select {
		case <-h.gate:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Length", strconv.FormatInt(size-off, 10))
	status := http.StatusOK
	if off > 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, size-1, size))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	end := size
	if h.cut != nil {
		if n := h.cut(i); n >= 0 {
			end = min(end, off+n)
		}
	}
	_, _ = w.Write(h.data[off:end])
	if end < size {
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
}

func (h *httpBlob) seen() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int64(nil), h.offsets...)
}

// httpSource is a Source over an HTTP blob URL, as an upstream client would build it.
func httpSource(client *http.Client, url string) fill.Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, 0, err
		}
		if off > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, 0, err
		}
		switch resp.StatusCode {
		case http.StatusOK:
			if off == 0 {
				return resp.Body, resp.ContentLength, nil
			}
		case http.StatusPartialContent:
			_, total, _ := strings.Cut(resp.Header.Get("Content-Range"), "/")
			size, err := strconv.ParseInt(total, 10, 64)
			if err == nil {
				return resp.Body, size, nil
			}
		case http.StatusRequestedRangeNotSatisfiable:
			resp.Body.Close()
			return nil, 0, fmt.Errorf("range from %d: %w", off, errdefs.ErrOutOfRange)
		}
		resp.Body.Close()
		return nil, 0, fmt.Errorf("unexpected status %s", resp.Status)
	}
}

func TestConcurrentReadersShareOneFetch(t *testing.T) {
	t.Parallel()
	data := blob(8*mib, 1)
	d := digest.FromBytes(data)
	hb := &httpBlob{data: data, gate: make(chan struct{})}
	srv := httptest.NewServer(hb)
	t.Cleanup(srv.Close)
	c := newCommitter(t)
	f, m := newFiller(t, c)
	ctx := testCtx(t)
	src := httpSource(srv.Client(), srv.URL)

	const clients = 16
	fills := make([]*fill.Fill, clients)
	results := make([][]byte, clients)
	errs := make([]error, clients)
	var joined, finished sync.WaitGroup
	for i := range clients {
		joined.Add(1)
		finished.Add(1)
		go func() {
			defer finished.Done()
			fills[i] = f.Fill(d, "upstream", src)
			joined.Done()
			results[i], errs[i] = readFrom(ctx, fills[i], 0)
		}()
	}
	joined.Wait()
	close(hb.gate)
	finished.Wait()

	for i := range clients {
		if errs[i] != nil {
			t.Fatalf("client %d: %v", i, errs[i])
		}
		if !bytes.Equal(results[i], data) {
			t.Fatalf("client %d got %d bytes that differ from the blob", i, len(results[i]))
		}
		if fills[i] != fills[0] {
			t.Fatalf("client %d got a different fill", i)
		}
	}
	waitDone(t, fills[0])
	if err := fills[0].Err(); err != nil {
		t.Fatal(err)
	}
	if got := hb.seen(); len(got) != 1 {
		t.Fatalf("upstream requests = %v, want exactly one", got)
	}
	checkCommitted(t, c, d, data)
	if v := value(t, m.FillsInFlight); v != 0 {
		t.Errorf("fills in flight = %v after the fill", v)
	}
	if n := value(t, m.FillDuration.WithLabelValues("upstream", "ok").(prometheus.Histogram)); n != 1 {
		t.Errorf("ok fill durations observed = %v, want 1", n)
	}
}

func TestReaderOffsets(t *testing.T) {
	t.Parallel()
	const size = mib + 123
	data := blob(size, 2)
	d := digest.FromBytes(data)
	tests := []struct {
		name   string
		offset int64
	}{
		{"start", 0},
		{"second byte", 1},
		{"before a boundary", holdback - 1},
		{"at a boundary", holdback},
		{"at the pause", size / 2},
		{"past the pause", size/2 + 1000},
		{"inside the tail", size - 100},
		{"last byte", size - 1},
		{"end", size},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			f, _ := newFiller(t, c)
			src := &memSource{data: data, pauseAt: size / 2, release: make(chan struct{})}
			fl := f.Fill(d, "upstream", src.source)
			ctx := testCtx(t)
			if _, err := fl.Size(ctx); err != nil {
				t.Fatal(err)
			}
			type result struct {
				b   []byte
				err error
			}
			done := make(chan result, 1)
			go func() {
				b, err := readFrom(ctx, fl, tt.offset)
				done <- result{b, err}
			}()
			close(src.release)
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			if !bytes.Equal(r.b, data[tt.offset:]) {
				t.Fatalf("got %d bytes from %d that differ from the blob's", len(r.b), tt.offset)
			}
		})
	}
}

func TestReaderBadOffsets(t *testing.T) {
	t.Parallel()
	data := blob(100*kib, 3)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	// The open blocks until opened is read, so the size is unknown at first.
	src := &memSource{data: data, opened: make(chan int64)}
	fl := f.Fill(d, "upstream", src.source)
	ctx := testCtx(t)

	if _, err := fl.Reader(ctx, -1); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative offset: err = %v, want invalid argument", err)
	}
	early, err := fl.Reader(ctx, int64(len(data))+1)
	if err != nil {
		t.Fatalf("reader past the end before the size is known: %v", err)
	}
	defer early.Close()
	<-src.opened
	if _, err := io.ReadAll(early); !errdefs.IsOutOfRange(err) {
		t.Errorf("read past the end: err = %v, want out of range", err)
	}
	if _, err := fl.Reader(ctx, int64(len(data))+1); !errdefs.IsOutOfRange(err) {
		t.Errorf("reader past the end: err = %v, want out of range", err)
	}
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestReaderStreamsBeforeCompletion(t *testing.T) {
	t.Parallel()
	data := blob(8*mib, 4)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	const pause = 4 * mib
	src := &memSource{data: data, pauseAt: pause, release: make(chan struct{})}
	fl := f.Fill(d, "upstream", src.source)
	ctx := testCtx(t)

	r, err := fl.Reader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Everything up to the pause is readable while the source is held.
	head := make([]byte, pause)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, data[:pause]) {
		t.Fatal("streamed head differs from the blob's")
	}
	select {
	case <-fl.Done():
		t.Fatal("fill finished while its source was paused")
	default:
	}
	if n := c.count(d); n != 0 {
		t.Fatalf("commits = %d while the source is paused", n)
	}
	close(src.release)
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(head, rest...), data) {
		t.Fatal("streamed blob differs from the source's")
	}
	waitDone(t, fl)
	checkCommitted(t, c, d, data)
}

func TestReaderGoneFillGoesOn(t *testing.T) {
	t.Parallel()
	data := blob(2*mib, 5)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	src := &memSource{data: data, pauseAt: mib, release: make(chan struct{})}
	fl := f.Fill(d, "upstream", src.source)

	ctx, cancel := context.WithCancel(testCtx(t))
	r, err := fl.Reader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 512*kib)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(r); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: err = %v, want context.Canceled", err)
	}
	r.Close()

	closed, err := fl.Reader(testCtx(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(closed, make([]byte, kib)); err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if _, err := closed.Read(make([]byte, kib)); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after close: err = %v, want os.ErrClosed", err)
	}

	close(src.release)
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
	checkCommitted(t, c, d, data)
}

func TestResume(t *testing.T) {
	t.Parallel()
	const size = 4*mib + 7
	data := blob(size, 6)
	d := digest.FromBytes(data)
	cuts := func(n ...int64) func(int) call {
		return func(i int) call {
			if i < len(n) {
				return call{bytes: n[i]}
			}
			return call{bytes: -1}
		}
	}
	tests := []struct {
		name    string
		plan    func(int) call
		retries int
		want    []int64
	}{
		{"one cut", cuts(mib), 5, []int64{0, mib}},
		{"cut after one byte", cuts(1), 5, []int64{0, 1}},
		{"cut before the last byte", cuts(size - 1), 5, []int64{0, size - 1}},
		{"several cuts", cuts(100, 200*kib, 3*mib), 5, []int64{0, 100, 100 + 200*kib, 100 + 200*kib + 3*mib}},
		{"cut without progress", cuts(mib, 0, 0), 5, []int64{0, mib, mib, mib}},
		{
			"more cuts than retries, each with progress",
			cuts(512*kib, 512*kib, 512*kib, 512*kib, 512*kib),
			1,
			[]int64{0, 512 * kib, 1024 * kib, 1536 * kib, 2048 * kib, 2560 * kib},
		},
		{
			"open errors",
			func(i int) call {
				if i < 2 {
					return call{err: fmt.Errorf("upstream down: %w", errdefs.ErrUnavailable)}
				}
				return call{bytes: -1}
			},
			5,
			[]int64{0, 0, 0},
		},
		{
			"open hangs",
			func(i int) call { return call{bytes: -1, hang: i == 0} },
			5,
			[]int64{0, 0},
		},
		{
			"stall",
			func(i int) call {
				if i == 0 {
					return call{bytes: mib, stall: true}
				}
				return call{bytes: -1}
			},
			5,
			[]int64{0, mib},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			// The stall timeout is long enough that only the plan's stalls reach it: a
			// source that is merely slow on a busy machine must not add a resume.
			f, m := newFiller(t, c, fill.WithRetries(tt.retries, time.Millisecond), fill.WithStallTimeout(time.Second))
			src := &memSource{data: data, plan: tt.plan}
			fl := f.Fill(d, "upstream", src.source)
			got, err := readFrom(testCtx(t), fl, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read blob differs from the source's")
			}
			waitDone(t, fl)
			if err := fl.Err(); err != nil {
				t.Fatal(err)
			}
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("source offsets = %v, want %v", got, tt.want)
			}
			resumes := 0
			for _, o := range tt.want {
				if o > 0 {
					resumes++
				}
			}
			if v := value(t, m.FillResumes); int(v) != resumes {
				t.Errorf("resumes = %v, want %d", v, resumes)
			}
			checkCommitted(t, c, d, data)
		})
	}
}

func TestResumeOverHTTP(t *testing.T) {
	t.Parallel()
	data := blob(3*mib, 7)
	d := digest.FromBytes(data)
	const cut = mib + 17
	hb := &httpBlob{data: data, cut: func(i int) int64 {
		if i == 0 {
			return cut
		}
		return -1
	}}
	srv := httptest.NewServer(hb)
	t.Cleanup(srv.Close)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	fl := f.Fill(d, "upstream", httpSource(srv.Client(), srv.URL))
	got, err := readFrom(testCtx(t), fl, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read blob differs from the source's")
	}
	waitDone(t, fl)
	offs := hb.seen()
	if len(offs) != 2 || offs[0] != 0 || offs[1] <= 0 || offs[1] > cut {
		t.Fatalf("request offsets = %v, want [0 n] with 0 < n <= %d", offs, cut)
	}
	checkCommitted(t, c, d, data)
}

func TestFailures(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 5
	data := blob(size, 8)
	d := digest.FromBytes(data)
	corrupt := func(at int) []byte {
		b := bytes.Clone(data)
		b[at] ^= 0xff
		return b
	}
	tests := []struct {
		name    string
		served  []byte
		plan    func(int) call
		check   func(error) bool
		opens   int
		spool   int64 // bytes left in the spool file for a resume; -1: no spool file
		verifyF float64
	}{
		{
			name:   "retries exhausted after progress",
			served: data,
			plan: func(i int) call {
				if i == 0 {
					return call{bytes: mib}
				}
				return call{err: errors.New("connection refused")}
			},
			check: errdefs.IsUnavailable,
			opens: 4, // the first call, then 3 retries without progress
			spool: mib,
		},
		{
			name:   "retries exhausted without progress",
			served: data,
			plan:   func(int) call { return call{bytes: 0} },
			check:  errdefs.IsUnavailable,
			opens:  4,
			spool:  -1,
		},
		{
			name:   "not found",
			served: data,
			plan:   func(int) call { return call{err: fmt.Errorf("blob unknown: %w", errdefs.ErrNotFound)} },
			check:  errdefs.IsNotFound,
			opens:  1,
			spool:  -1,
		},
		{
			name:   "size changes between calls",
			served: data,
			plan: func(i int) call {
				if i == 0 {
					return call{bytes: mib}
				}
				return call{bytes: -1, size: size + 1}
			},
			check: errdefs.IsDataLoss,
			opens: 2,
			spool: -1,
		},
		{"wrong first byte", corrupt(0), nil, errdefs.IsDataLoss, 1, -1, 1},
		{"wrong middle byte", corrupt(size / 2), nil, errdefs.IsDataLoss, 1, -1, 1},
		{"wrong last byte", corrupt(size - 1), nil, errdefs.IsDataLoss, 1, -1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			f, m := newFiller(t, c, fill.WithRetries(3, time.Millisecond))
			src := &memSource{data: tt.served, plan: tt.plan}
			fl := f.Fill(d, "upstream", src.source)
			ctx := testCtx(t)

			type result struct {
				n   int
				err error
			}
			const readers = 4
			results := make(chan result, readers)
			for i := range readers {
				go func() {
					b, err := readFrom(ctx, fl, int64(i*holdback))
					results <- result{len(b) + i*holdback, err}
				}()
			}
			waitDone(t, fl)
			err := fl.Err()
			if !tt.check(err) {
				t.Fatalf("fill error = %v, not of the expected class", err)
			}
			for range readers {
				r := <-results
				if r.err == nil {
					t.Fatalf("a reader ended without error after %d bytes", r.n)
				}
				if r.n >= size {
					t.Fatalf("a reader received %d bytes of a failed %d-byte blob", r.n, size)
				}
			}
			if _, err := readFrom(ctx, fl, 0); err == nil {
				t.Fatal("a reader of the failed fill ended without error")
			}
			if n := c.count(d); n != 0 {
				t.Fatalf("commits = %d after a failed fill", n)
			}
			if got := src.seen(); len(got) != tt.opens {
				t.Errorf("source calls = %v, want %d", got, tt.opens)
			}
			if v := value(t, m.VerifyFailures.WithLabelValues("fill")); v != tt.verifyF {
				t.Errorf("verify failures = %v, want %v", v, tt.verifyF)
			}
			st, err := os.Stat(c.SpoolPath(d))
			switch {
			case tt.spool < 0 && !errors.Is(err, os.ErrNotExist):
				t.Fatalf("spool file left behind: %v", err)
			case tt.spool >= 0 && (err != nil || st.Size() != tt.spool):
				t.Fatalf("spool file = %v, %v; want %d bytes", st, err, tt.spool)
			}
			if tt.spool < 0 {
				return
			}
			// A later fill resumes from what the failed one wrote.
			good := &memSource{data: data}
			again := f.Fill(d, "upstream", good.source)
			if again == fl {
				t.Fatal("a failed fill was joined instead of started afresh")
			}
			waitDone(t, again)
			if err := again.Err(); err != nil {
				t.Fatal(err)
			}
			if got := good.seen(); fmt.Sprint(got) != fmt.Sprint([]int64{tt.spool}) {
				t.Errorf("resumed source offsets = %v, want [%d]", got, tt.spool)
			}
			checkCommitted(t, c, d, data)
		})
	}
}

func TestWrongSmallBlobSendsNothing(t *testing.T) {
	t.Parallel()
	data := blob(10*kib, 9)
	d := digest.FromBytes(data)
	bad := bytes.Clone(data)
	bad[0] ^= 1
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	src := &memSource{data: bad}
	fl := f.Fill(d, "upstream", src.source)
	got, err := readFrom(testCtx(t), fl, 0)
	if !errdefs.IsDataLoss(err) || len(got) != 0 {
		t.Fatalf("read %d bytes, err %v; want none and data loss", len(got), err)
	}
}

func TestCrashResume(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 99
	data := blob(size, 10)
	d := digest.FromBytes(data)
	half := int64(size / 2)
	tests := []struct {
		name     string
		leftover []byte
		rangeErr error
		want     []int64
	}{
		{"empty", []byte{}, nil, []int64{0}},
		{"first half", data[:half], nil, []int64{half}},
		{"whole blob", data, nil, nil},
		{"corrupt half", blob(int(half), 11), nil, []int64{half, 0}},
		{"corrupt whole", blob(size, 12), nil, []int64{size, 0}},
		{"longer than the blob", append(bytes.Clone(data), 1, 2, 3), nil, []int64{size + 3, 0}},
		{
			// A source that answers an offset at the end with ErrOutOfRange proves
			// the leftover bad; one that just fails does not (TestLeftoverSurvives).
			"corrupt whole, out of range given as data loss",
			blob(size, 13),
			fmt.Errorf("416 Requested Range Not Satisfiable: %w", errdefs.ErrDataLoss),
			[]int64{size, 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newCommitter(t)
			spool := c.SpoolPath(d)
			if err := os.MkdirAll(filepath.Dir(spool), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(spool, tt.leftover, 0o644); err != nil {
				t.Fatal(err)
			}
			f, _ := newFiller(t, c, fill.WithRetries(3, time.Millisecond))
			src := &memSource{data: data, rangeErr: tt.rangeErr}
			fl := f.Fill(d, "upstream", src.source)
			ctx := testCtx(t)

			// A reader that follows a spool which then starts over may fail, but it
			// must never get a wrong blob.
			got, err := readFrom(ctx, fl, 0)
			if err == nil && !bytes.Equal(got, data) {
				t.Fatal("a reader got a wrong blob")
			}
			if err != nil && !errdefs.IsAborted(err) {
				t.Fatalf("reader: %v", err)
			}
			waitDone(t, fl)
			if err := fl.Err(); err != nil {
				t.Fatal(err)
			}
			if got := src.seen(); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("source offsets = %v, want %v", got, tt.want)
			}
			if n, err := fl.Size(ctx); err != nil || n != size {
				t.Errorf("size = %d, %v; want %d", n, err, size)
			}
			checkCommitted(t, c, d, data)
		})
	}
}

func TestEmptyBlobNeedsNoSource(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes(nil)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	src := &memSource{}
	fl := f.Fill(d, "upstream", src.source)
	got, err := readFrom(testCtx(t), fl, 0)
	if err != nil || len(got) != 0 {
		t.Fatalf("read %d bytes, %v; want none", len(got), err)
	}
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
	if got := src.seen(); len(got) != 0 {
		t.Errorf("source called at %v", got)
	}
	checkCommitted(t, c, d, nil)
}

func TestCloseStopsStalledFill(t *testing.T) {
	t.Parallel()
	data := blob(mib, 13)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	m := metrics.New()
	f := fill.New(c, fill.WithMetrics(m)) // the default 30 s stall timeout
	opened := make(chan int64, 1)
	src := &memSource{data: data, opened: opened, plan: func(int) call { return call{bytes: 300 * kib, stall: true} }}
	fl := f.Fill(d, "upstream", src.source)
	ctx := testCtx(t)
	r, err := fl.Reader(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 256*kib)); err != nil {
		t.Fatal(err)
	}
	<-opened
	// The source has sent its 300 KiB and stalls; wait until the fill has spooled
	// them all, so that Close, not the timing of the last write, decides what stays.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if st, err := os.Stat(c.SpoolPath(d)); err == nil && st.Size() == 300*kib {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fill did not spool the 300 KiB the source sent")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// Close ends the fill itself: it returns well before the 30 s stall timeout could
	// have ended it.
	closed := make(chan struct{})
	go func() {
		f.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return before the stall timeout")
	}
	waitDone(t, fl)
	if err := fl.Err(); !errdefs.IsCanceled(err) {
		t.Fatalf("fill error = %v, want canceled", err)
	}
	if _, err := io.ReadAll(r); err == nil {
		t.Fatal("reader ended without error after Close")
	}
	if st, err := os.Stat(c.SpoolPath(d)); err != nil || st.Size() != 300*kib {
		t.Errorf("spool file = %v, %v; want it kept with 300 KiB for a resume", st, err)
	}
	if v := value(t, m.FillsInFlight); v != 0 {
		t.Errorf("fills in flight = %v after Close", v)
	}
	if err := f.Fill(d, "upstream", src.source).Err(); !errdefs.IsUnavailable(err) {
		t.Errorf("fill after Close: err = %v, want unavailable", err)
	}
}

func TestFillAfterCommit(t *testing.T) {
	t.Parallel()
	data := blob(300*kib, 14)
	d := digest.FromBytes(data)
	c := newCommitter(t)
	f, _ := newFiller(t, c)
	src := &memSource{data: data}
	fl := f.Fill(d, "upstream", src.source)
	waitDone(t, fl)
	if err := fl.Err(); err != nil {
		t.Fatal(err)
	}
	// A reader taken after the commit still reads the blob (the renamed spool).
	got, err := readFrom(testCtx(t), fl, 1000)
	if err != nil || !bytes.Equal(got, data[1000:]) {
		t.Fatalf("reader after commit: %d bytes, %v", len(got), err)
	}
	again := f.Fill(d, "upstream", src.source)
	if again == fl {
		t.Fatal("a committed fill was joined")
	}
	waitDone(t, again)
	if got := src.seen(); len(got) != 2 {
		t.Errorf("source calls = %v, want a fresh one for the second fill", got)
	}
}

func TestInvalidDigest(t *testing.T) {
	t.Parallel()
	tests := []digest.Digest{"", "sha256:xyz", "nope:abc", "sha256:" + digest.Digest(strings.Repeat("a", 63))}
	for _, d := range tests {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			f, _ := newFiller(t, newCommitter(t))
			fl := f.Fill(d, "upstream", (&memSource{}).source)
			waitDone(t, fl)
			if err := fl.Err(); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
			if _, err := fl.Size(testCtx(t)); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("size err = %v, want invalid argument", err)
			}
		})
	}
}

// upstreamFailure is an upstream's own failure, as registryd/upstream reports one.
type upstreamFailure struct{ error }

func (u upstreamFailure) Unwrap() error { return u.error }

func (upstreamFailure) Failure() upstreamerr.Failure {
	return upstreamerr.Failure{Upstream: "upstream.example", Status: 503, Reason: upstreamerr.ReasonStatus}
}

// TestUpstreamFailure checks that the upstream failing before any answer gave the size
// fails the fill at once, with that failure, for everyone waiting, while the same
// failure is retried once the size is known, and a leftover spool file is kept.
func TestUpstreamFailure(t *testing.T) {
	t.Parallel()
	const size = 2*mib + 3
	data := blob(size, 14)
	d := digest.FromBytes(data)
	failure := upstreamFailure{fmt.Errorf("upstream answered 503: %w", errdefs.ErrUnavailable)}

	t.Run("before the size", func(t *testing.T) {
		t.Parallel()
		c := newCommitter(t)
		f, _ := newFiller(t, c, fill.WithRetries(5, time.Millisecond))
		src := &memSource{data: data, plan: func(int) call { return call{err: failure} }}
		fl := f.Fill(d, "upstream", src.source)
		if _, err := fl.Size(testCtx(t)); !errors.As(err, new(upstreamFailure)) {
			t.Fatalf("Size: %v, want the upstream's failure", err)
		}
		waitDone(t, fl)
		if err := fl.Err(); !errors.As(err, new(upstreamFailure)) || !errdefs.IsUnavailable(err) {
			t.Errorf("fill error %v, want the upstream's failure", err)
		}
		if got := src.seen(); fmt.Sprint(got) != "[0]" {
			t.Errorf("source offsets = %v, want one call at 0", got)
		}
	})
	t.Run("after the size", func(t *testing.T) {
		t.Parallel()
		c := newCommitter(t)
		f, _ := newFiller(t, c, fill.WithRetries(5, time.Millisecond))
		src := &memSource{data: data, plan: func(i int) call {
			switch i {
			case 0:
				return call{bytes: mib}
			case 1, 2:
				return call{err: failure}
			}
			return call{bytes: -1}
		}}
		fl := f.Fill(d, "upstream", src.source)
		waitDone(t, fl)
		if err := fl.Err(); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(src.seen()), fmt.Sprint([]int64{0, mib, mib, mib}); got != want {
			t.Errorf("source offsets = %v, want %v", got, want)
		}
		checkCommitted(t, c, d, data)
	})
	t.Run("leftover kept", func(t *testing.T) {
		t.Parallel()
		c := newCommitter(t)
		spool := c.SpoolPath(d)
		if err := os.MkdirAll(filepath.Dir(spool), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(spool, data[:mib], 0o644); err != nil {
			t.Fatal(err)
		}
		f, _ := newFiller(t, c, fill.WithRetries(5, time.Millisecond))
		src := &memSource{data: data, plan: func(int) call { return call{err: failure} }}
		fl := f.Fill(d, "upstream", src.source)
		waitDone(t, fl)
		if err := fl.Err(); !errors.As(err, new(upstreamFailure)) {
			t.Fatalf("fill error %v, want the upstream's failure", err)
		}
		if got := fmt.Sprint(src.seen()); got != fmt.Sprint([]int64{mib}) {
			t.Errorf("source offsets = %v, want one call at the leftover's end", got)
		}
		if st, err := os.Stat(spool); err != nil || st.Size() != mib {
			t.Errorf("spool file = %v, %v; want the %d-byte leftover kept", st, err, mib)
		}
	})
}
