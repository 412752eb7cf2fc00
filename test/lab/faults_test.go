package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveUntilCleanup runs serve until the test ends or stop is called, and
// checks at the end that serve returned nil. stop cancels serve and returns
// what it returned.
func serveUntilCleanup(t *testing.T, name string, serve func(ctx context.Context, ready func(addr string)) error) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, func(a string) { ready <- a }) }()
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("%s: %v", name, err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("%s did not become ready", name)
	}
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return fmt.Errorf("%s did not return 10 s after cancel", name)
		}
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("%s after cancel: %v", name, err)
		}
	})
	return addr, stop
}

// faultyUpstream is a test upstream with a faults file (not yet written)
// and one seeded image, lab/app:v1, whose one layer is a 1 MiB blob.
type faultyUpstream struct {
	*testUpstream
	faults string
	stop   func() error
	blob   string
	size   int64
}

func startFaultyUpstream(t *testing.T) *faultyUpstream {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, pool := selfSignedCert(t, dir)
	u := &faultyUpstream{
		testUpstream: &testUpstream{accessLog: filepath.Join(dir, "access.log"), pool: pool},
		faults:       filepath.Join(dir, "faults.json"),
	}
	u.opts = UpstreamOptions{
		Addr:       "127.0.0.1:0",
		CertFile:   certFile,
		KeyFile:    keyFile,
		StorageDir: filepath.Join(dir, "storage"),
		AccessLog:  u.accessLog,
		FaultsFile: u.faults,
	}
	u.addr, u.stop = serveUntilCleanup(t, "ServeUpstream", func(ctx context.Context, ready func(string)) error {
		o := u.opts
		o.Ready = ready
		return ServeUpstream(ctx, o)
	})
	res, err := Seed(t.Context(), SeedOptions{
		Registry: u.addr, Repo: "lab/app", Tag: "v1", Layers: 1, LayerSize: 1 << 20, RootCAs: pool, Seed: 11,
	})
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	u.blob, u.size = res.Layers[0], res.Bytes
	return u
}

func (u *faultyUpstream) setFaults(t *testing.T, f Faults) {
	t.Helper()
	if err := WriteFaults(u.faults, f); err != nil {
		t.Fatal(err)
	}
}

func (u *faultyUpstream) blobPath() string { return "/v2/lab/app/blobs/" + u.blob }

// get sends one request and reads the body to its end or the first error,
// which it returns.
func (u *faultyUpstream) get(t *testing.T, tr http.RoundTripper, method, path, rng string) (*http.Response, []byte, error) {
	t.Helper()
	return fetch(t, tr, method, "https://"+u.addr+path, rng)
}

func fetch(t *testing.T, tr http.RoundTripper, method, url, rng string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// waitBlobGETs waits until the access log holds n GETs of digest, which it
// returns: a request is logged only after its client may have read it all.
func waitBlobGETs(t *testing.T, accessLog, digest string, n int) []AccessEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := ReadAccessLog(accessLog)
		if err != nil {
			t.Fatal(err)
		}
		gets := slices.DeleteFunc(BlobGETs(entries), func(e AccessEntry) bool { return e.Digest() != digest })
		if len(gets) >= n || time.Now().After(deadline) {
			if len(gets) != n {
				t.Fatalf("access log %s: %d GETs of %s, want %d: %+v", accessLog, len(gets), digest, n, gets)
			}
			return gets
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFaultsThrottle(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{ThrottleBPS: 2 << 20})

	start := time.Now()
	resp, full, err := u.get(t, tr, http.MethodGet, u.blobPath(), "")
	elapsed := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK || sha256Digest(full) != u.blob {
		t.Fatalf("throttled GET: status %d, %d bytes, err %v; want 200 and the whole blob", resp.StatusCode, len(full), err)
	}
	if elapsed < 400*time.Millisecond {
		t.Errorf("1 MiB at 2 MiB/s took %v, want at least 400ms", elapsed)
	}

	start = time.Now()
	resp, part, err := u.get(t, tr, http.MethodGet, u.blobPath(), "bytes=262144-524287")
	elapsed = time.Since(start)
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, full[262144:524288]) {
		t.Fatalf("throttled range GET: status %d, %d bytes, err %v; want 206 and bytes 262144-524287", resp.StatusCode, len(part), err)
	}
	if elapsed < 100*time.Millisecond {
		t.Errorf("256 KiB at 2 MiB/s took %v, want at least 100ms", elapsed)
	}

	gets := waitBlobGETs(t, u.accessLog, u.blob, 2)
	if gets[0].Bytes != u.size || gets[1].Bytes != 262144 || gets[0].Aborted || gets[1].Aborted {
		t.Errorf("logged %+v, want a whole GET and a 256 KiB range GET, neither aborted", gets)
	}
}

func TestFaultsCut(t *testing.T) {
	t.Parallel()
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			t.Parallel()
			u := startFaultyUpstream(t)
			tr := u.transport()
			tr.ForceAttemptHTTP2 = h2
			defer tr.CloseIdleConnections()
			u.setFaults(t, Faults{CutAfter: 100000, CutTimes: 1})

			resp, body, err := u.get(t, tr, http.MethodGet, u.blobPath(), "")
			if resp.StatusCode != http.StatusOK || (resp.ProtoMajor == 2) != h2 {
				t.Fatalf("got %s %d, want 200 over HTTP/2 %v", resp.Proto, resp.StatusCode, h2)
			}
			if err == nil || len(body) != 100000 {
				t.Fatalf("cut GET: %d bytes, err %v; want 100000 bytes and an error", len(body), err)
			}
			resp, body, err = u.get(t, tr, http.MethodGet, u.blobPath(), "")
			if err != nil || resp.StatusCode != http.StatusOK || sha256Digest(body) != u.blob {
				t.Fatalf("GET after the cut: status %d, %d bytes, err %v; want the whole blob", resp.StatusCode, len(body), err)
			}
			gets := waitBlobGETs(t, u.accessLog, u.blob, 2)
			if !gets[0].Aborted || gets[0].Bytes != 100000 || gets[0].Status != http.StatusOK {
				t.Errorf("cut GET logged as %+v, want aborted with 100000 bytes", gets[0])
			}
			if gets[1].Aborted || gets[1].Bytes != u.size {
				t.Errorf("second GET logged as %+v, want %d bytes, not aborted", gets[1], u.size)
			}

			// Without CutTimes every response is cut; a new file counts anew.
			u.setFaults(t, Faults{CutAfter: 5000})
			for range 2 {
				if _, body, err := u.get(t, tr, http.MethodGet, u.blobPath(), ""); err == nil || len(body) != 5000 {
					t.Fatalf("GET with cut_after 5000: %d bytes, err %v; want a cut", len(body), err)
				}
			}
		})
	}
}

func TestFaultsStall(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{StallAfter: 200000, StallFor: Duration(time.Second)})

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+u.addr+u.blobPath(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 200000)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("read the bytes before the stall: %v", err)
	}
	start := time.Now()
	rest, err := io.ReadAll(resp.Body)
	elapsed := time.Since(start)
	if err != nil || sha256Digest(append(head, rest...)) != u.blob {
		t.Fatalf("read after the stall: %d bytes, err %v; want the rest of the blob", len(rest), err)
	}
	if elapsed < 800*time.Millisecond {
		t.Errorf("the rest came after %v, want a stall of about 1s", elapsed)
	}
}

// TestFaultsStallShutdown checks that a stall, here right after the headers,
// ends when the upstream shuts down, so that the shutdown is still graceful.
func TestFaultsStallShutdown(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{StallFor: Duration(time.Minute)})

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+u.addr+u.blobPath(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("stalled GET: %v; want headers before the stall", err)
	}
	defer resp.Body.Close()
	start := time.Now()
	if err := u.stop(); err != nil {
		t.Fatalf("ServeUpstream during a stall: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown during a stall took %v", d)
	}
	if body, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("stalled body ended cleanly with %d bytes after shutdown, want an error", len(body))
	}
	if gets := waitBlobGETs(t, u.accessLog, u.blob, 1); !gets[0].Aborted || gets[0].Bytes != 0 {
		t.Errorf("logged %+v, want aborted with 0 bytes", gets[0])
	}
}

func TestFaultsStatusAndReload(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	manifest := "/v2/lab/app/manifests/v1"
	expect := func(method, path string, want int, wantBody string) {
		t.Helper()
		resp, body, err := u.get(t, tr, method, path, "")
		if err != nil || resp.StatusCode != want || !strings.Contains(string(body), wantBody) {
			t.Errorf("%s %s: status %d, body %q, err %v; want %d with %q", method, path, resp.StatusCode, body, err, want, wantBody)
		}
	}

	expect(http.MethodGet, manifest, http.StatusOK, "")
	u.setFaults(t, Faults{Status: http.StatusServiceUnavailable})
	expect(http.MethodGet, "/v2/", http.StatusOK, "")
	expect(http.MethodGet, manifest, http.StatusServiceUnavailable, "lab upstream fault")
	expect(http.MethodHead, manifest, http.StatusServiceUnavailable, "")
	expect(http.MethodGet, u.blobPath(), http.StatusServiceUnavailable, "lab upstream fault")
	expect(http.MethodGet, "/v2/_catalog", http.StatusServiceUnavailable, "")

	u.setFaults(t, Faults{})
	expect(http.MethodGet, manifest, http.StatusOK, "")
	expect(http.MethodGet, u.blobPath(), http.StatusOK, "")

	if err := os.WriteFile(u.faults, []byte(`{"status": 503, "stall": "1s"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(http.MethodGet, "/v2/", http.StatusInternalServerError, "faults.json")
	expect(http.MethodGet, manifest, http.StatusInternalServerError, `unknown field "stall"`)

	if err := os.Remove(u.faults); err != nil {
		t.Fatal(err)
	}
	expect(http.MethodGet, manifest, http.StatusOK, "")

	entries, err := ReadAccessLog(u.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e AccessEntry) bool {
		return e.Path == manifest && e.Status == http.StatusServiceUnavailable
	}) {
		t.Error("no 503 for the manifest in the access log")
	}
}

func TestFaultsJSON(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "faults.json")
	want := Faults{ThrottleBPS: 1 << 20, CutAfter: 1000, CutTimes: 2, StallAfter: 10, StallFor: Duration(10 * time.Second)}
	if err := WriteFaults(path, want); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"stall_for": "10s"`) || strings.Contains(string(b), "status") {
		t.Errorf("written faults %s: want stall_for as a string and no zero status", b)
	}
	if got, err := decodeFaults(bytes.NewReader(b)); err != nil || got != want {
		t.Errorf("read back %+v, %v; want %+v", got, err, want)
	}

	for _, tc := range []struct{ in, want string }{
		{``, ""},
		{`{}`, ""},
		{`{"stall_for": "1m30s"}`, ""},
		{`{"stall_for": 10}`, "string"},
		{`{"stall_for": "soon"}`, "soon"},
		{`{"cut_afterr": 5}`, "cut_afterr"},
		{`{"status": 200}`, "status 200"},
		{`[1]`, "cannot unmarshal"},
	} {
		_, err := decodeFaults(strings.NewReader(tc.in))
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("decode %q: err %v, want one containing %q", tc.in, err, tc.want)
		}
	}

	for _, tc := range []struct {
		f    Faults
		want string
	}{
		{Faults{ThrottleBPS: -1}, "throttle_bps"},
		{Faults{CutAfter: -1}, "cut_after"},
		{Faults{CutTimes: 1}, "cut_after"},
		{Faults{Status: 302}, "status"},
		{Faults{StallAfter: 5}, "stall_for"},
		{Faults{StallFor: -1}, "stall_for"},
	} {
		bad := filepath.Join(dir, "bad.json")
		err := WriteFaults(bad, tc.f)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), bad) {
			t.Errorf("WriteFaults(%+v): err %v, want one naming %s and the file", tc.f, err, tc.want)
		}
		if _, err := os.Stat(bad); err == nil {
			t.Errorf("WriteFaults(%+v) wrote the file", tc.f)
		}
	}
}

// TestAccessLogAborted checks that a handler that panics is logged as
// aborted, and that the panic still reaches net/http with its origin.
func TestAccessLogAborted(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.log")
	alog, err := openAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	h := alog.handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 10))
		if r.URL.Path == "/abort" {
			panic(http.ErrAbortHandler)
		}
		panic("boom")
	}))
	for _, tc := range []struct {
		path  string
		check func(p any) bool
	}{
		{"/abort", func(p any) bool { return p == http.ErrAbortHandler }},
		{"/boom", func(p any) bool {
			s, ok := p.(string)
			return ok && strings.HasPrefix(s, "boom\n") && strings.Contains(s, "faults_test.go")
		}},
	} {
		func() {
			defer func() {
				if p := recover(); !tc.check(p) {
					t.Errorf("%s: panic %v reached net/http", tc.path, p)
				}
			}()
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, tc.path, nil))
		}()
	}
	if err := alog.close(); err != nil {
		t.Fatal(err)
	}
	entries, err := ReadAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("%d entries, want 2", len(entries))
	}
	for _, e := range entries {
		if !e.Aborted || e.Bytes != 10 || e.Status != http.StatusOK {
			t.Errorf("entry %+v, want aborted after 10 bytes", e)
		}
	}
}
