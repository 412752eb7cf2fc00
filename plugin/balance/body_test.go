package balance

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	blobSize       = 64 << 10
	blobETag       = `"sha256:0123"`
	testBlobDigest = "sha256:0123"
)

func blob() []byte {
	p := make([]byte, blobSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// breakAfter serves content (honouring Range) but, after limit body bytes, stalls
// until the client goes away or cuts the connection.
func breakAfter(be *backend, content []byte, limit int, cut bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", blobETag)
		w.Header().Set("Docker-Content-Digest", testBlobDigest)
		bw := &breakingWriter{ResponseWriter: w, left: limit, brk: func() {
			if !cut {
				be.block(r)
				return
			}
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
		}}
		http.ServeContent(bw, r, "", time.Time{}, bytes.NewReader(content))
	}
}

type breakingWriter struct {
	http.ResponseWriter
	left int
	brk  func()
}

func (w *breakingWriter) Write(p []byte) (int, error) {
	if len(p) <= w.left {
		w.left -= len(p)
		return w.ResponseWriter.Write(p)
	}
	n, _ := w.ResponseWriter.Write(p[:w.left])
	w.left = 0
	http.NewResponseController(w.ResponseWriter).Flush()
	w.brk()
	return n, errors.New("broken on purpose")
}

// rangeRecorder serves content with Range support and remembers the Range headers.
type rangeRecorder struct {
	mu     sync.Mutex
	ranges []string
}

func (rr *rangeRecorder) serve(content []byte, etag string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rr.mu.Lock()
		rr.ranges = append(rr.ranges, r.Header.Get("Range"))
		rr.mu.Unlock()
		w.Header().Set("ETag", etag)
		w.Header().Set("Docker-Content-Digest", testBlobDigest)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	}
}

func (rr *rangeRecorder) got() []string {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	return append([]string(nil), rr.ranges...)
}

func TestResume(t *testing.T) {
	t.Parallel()
	content := blob()
	tests := []struct {
		name       string
		cut        bool
		tls        bool
		at         int    // body bytes the first endpoint sends
		rng        string // the caller's Range header
		want       []byte
		wantStatus int
		wantRange  string // the resume request's Range
	}{
		{name: "stall", at: 10000, want: content, wantStatus: 200, wantRange: "bytes=10000-65535"},
		{name: "stall over TLS", tls: true, at: 10000, want: content, wantStatus: 200, wantRange: "bytes=10000-65535"},
		{name: "cut", cut: true, at: 10000, want: content, wantStatus: 200, wantRange: "bytes=10000-65535"},
		{name: "stall before the first byte", at: 0, want: content, wantStatus: 200, wantRange: "bytes=0-65535"},
		{name: "stall in a closed range", at: 10000, rng: "bytes=1000-49999", want: content[1000:50000], wantStatus: 206, wantRange: "bytes=11000-49999"},
		{name: "cut in an open range", cut: true, at: 10000, rng: "bytes=1000-", want: content[1000:], wantStatus: 206, wantRange: "bytes=11000-65535"},
		{name: "cut in a suffix range", cut: true, at: 5000, rng: "bytes=-20000", want: content[blobSize-20000:], wantStatus: 206, wantRange: "bytes=50536-65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			broken := newBackend(t, tt.tls, nil)
			broken.set(breakAfter(broken, content, tt.at, tt.cut))
			var rec rangeRecorder
			healthy := newBackend(t, tt.tls, rec.serve(content, blobETag))
			var tr http.RoundTripper
			if tt.tls {
				tr = tlsTransport(t)
			}
			reg := prometheus.NewRegistry()
			b := newBalancer(t, Config{
				Endpoints: endpoints(broken.url(t), healthy.url(t)),
				Transport: tr,
				Stall:     200 * time.Millisecond,
				Metrics:   NewMetrics(reg),
			})
			req := request(t, http.MethodGet, "/v2/x/blobs/"+testBlobDigest, nil)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			resp, err := b.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %s, want %d", resp.Status, tt.wantStatus)
			}
			if n := statusOf(b, broken.url(t)).Outstanding; n != 1 {
				t.Errorf("%d outstanding while the body is open, want 1", n)
			}
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read %d bytes, then: %v", len(got), err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("body differs: got %d bytes, want %d", len(got), len(tt.want))
			}
			if ranges := rec.got(); len(ranges) != 1 || ranges[0] != tt.wantRange {
				t.Errorf("resume requests had Range %q, want [%q]", ranges, tt.wantRange)
			}
			if got := metric(t, reg, "hopless_plugin_resumes_total", nil); got != 1 {
				t.Errorf("resumes_total = %v, want 1", got)
			}
			kind := kindStall
			if tt.cut {
				kind = kindBody
			}
			if got := metric(t, reg, "hopless_plugin_errors_total", map[string]string{"endpoint": broken.URL, "kind": kind}); got != 1 {
				t.Errorf("errors_total{kind=%s} = %v, want 1", kind, got)
			}
			if got := metric(t, reg, "hopless_plugin_bytes_total", map[string]string{"endpoint": broken.URL}); got != float64(tt.at) {
				t.Errorf("bytes_total of the broken endpoint = %v, want %d", got, tt.at)
			}
			if statusOf(b, broken.url(t)).Healthy {
				t.Error("the broken endpoint was not ejected")
			}
			resp.Body.Close()
			for _, s := range b.Status() {
				if s.Outstanding != 0 {
					t.Errorf("%s: %d outstanding after Close", s.URL, s.Outstanding)
				}
			}
		})
	}
}

// TestResumeRefused checks that a resume that cannot continue the body exactly ends
// it with an error rather than with wrong bytes.
func TestResumeRefused(t *testing.T) {
	t.Parallel()
	content := blob()
	tests := []struct {
		name    string
		second  func(be *backend) http.HandlerFunc
		wantN   int
		wantErr []string
	}{
		{
			name:    "another ETag",
			second:  func(*backend) http.HandlerFunc { return new(rangeRecorder).serve(content, `"other"`) },
			wantN:   10000,
			wantErr: []string{"ETag", `"other"`},
		},
		{
			name:    "a 401",
			second:  func(*backend) http.HandlerFunc { return status(http.StatusUnauthorized) },
			wantN:   10000,
			wantErr: []string{"status 401", "credentials were refused"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			first := newBackend(t, false, nil)
			first.set(breakAfter(first, content, 10000, false))
			second := newBackend(t, false, nil)
			second.set(tt.second(second))
			b := newBalancer(t, Config{Endpoints: endpoints(first.url(t), second.url(t)), Stall: 200 * time.Millisecond})
			resp, err := b.RoundTrip(request(t, http.MethodGet, "/v2/x/blobs/"+testBlobDigest, nil))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("read %d bytes without an error", len(got))
			}
			if len(got) != tt.wantN || !bytes.Equal(got, content[:len(got)]) {
				t.Errorf("delivered %d bytes (a correct prefix: %v), want the first %d", len(got), bytes.Equal(got, content[:len(got)]), tt.wantN)
			}
			contains(t, "error", err.Error(), append(tt.wantErr, first.URL)...)
			if _, err2 := resp.Body.Read(make([]byte, 1)); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("next Read: %v, want the same error again", err2)
			}
		})
	}
}

// TestBodyStallWithoutResume checks that a body that cannot be resumed (a POST's)
// still does not hang.
func TestBodyStallWithoutResume(t *testing.T) {
	t.Parallel()
	content := blob()
	be := newBackend(t, false, nil)
	be.set(breakAfter(be, content, 100, false))
	b := newBalancer(t, Config{Endpoints: endpoints(be.url(t)), Stall: 100 * time.Millisecond})
	resp, err := b.RoundTrip(request(t, http.MethodPost, "/v2/x/blobs/uploads/", http.NoBody))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err == nil || len(got) != 100 {
		t.Fatalf("read %d bytes, err %v; want 100 and a stall error", len(got), err)
	}
	contains(t, "error", err.Error(), "no body bytes within 100ms")
}
