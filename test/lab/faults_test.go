package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
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

// TestFaultsThrottleAfter checks a body that starts at full speed and then
// trickles.
func TestFaultsThrottleAfter(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{ThrottleAfter: 512 << 10, ThrottleBPS: 256 << 10})

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+u.addr+u.blobPath(), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 512<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("reading the unthrottled start: %v", err)
	}
	fast := time.Since(start)
	rest, err := io.ReadAll(resp.Body)
	slow := time.Since(start) - fast
	if err != nil || sha256Digest(append(head, rest...)) != u.blob {
		t.Fatalf("read the rest: %d bytes, err %v; want the rest of the blob", len(rest), err)
	}
	if fast > time.Second {
		t.Errorf("the first 512 KiB took %v, want them at full speed", fast)
	}
	if slow < 1500*time.Millisecond {
		t.Errorf("the last 512 KiB at 256 KiB/s took %v, want about 2s", slow)
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
	if d := time.Since(start); d >= time.Minute {
		t.Errorf("shutdown during a stall took %v: it waited for the stall to end", d)
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
	want := Faults{ThrottleBPS: 1 << 20, CutAfter: 1000, CutTimes: 2, StallAfter: 10, StallFor: Duration(10 * time.Second),
		Repo: "deckhouse/ce/app", HeaderDelay: Duration(time.Second), ThrottleAfter: 4096}
	if err := WriteFaults(path, want); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"stall_for": "10s"`) || !strings.Contains(string(b), `"header_delay": "1s"`) ||
		strings.Contains(string(b), "status") || strings.Contains(string(b), "hang") || strings.Contains(string(b), "headers") {
		t.Errorf("written faults %s: want stall_for as a string and no zero status", b)
	}
	if got, err := decodeFaults(bytes.NewReader(b)); err != nil || !reflect.DeepEqual(got, want) {
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
		{`{"status": 429, "headers": {"Retry-After": "7"}}`, ""},
		{`{"hang": true, "repo": "deckhouse/ce/app"}`, ""},
		{`{"header_delay": "2s"}`, ""},
		{`{"header_delay": "2"}`, "missing unit"},
		{`{"headers": {"Retry-After": 7}, "status": 429}`, "cannot unmarshal"},
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
		{Faults{Repo: "/deckhouse/ce/app"}, "repo"},
		{Faults{Repo: "deckhouse/ce/app/"}, "repo"},
		{Faults{Repo: "Deckhouse"}, "repo"},
		{Faults{Headers: map[string]string{"Retry-After": "7"}}, "headers are set but status is not"},
		{Faults{Status: 429, Headers: map[string]string{"Retry After": "7"}}, "header name"},
		{Faults{Status: 429, Headers: map[string]string{"Retry-After": "7\r\nX: y"}}, "control character"},
		{Faults{Hang: true, Status: 503}, "hang and status"},
		{Faults{Hang: true, HeaderDelay: Duration(time.Second)}, "hang and header_delay"},
		{Faults{HeaderDelay: -1}, "header_delay"},
		{Faults{ThrottleAfter: -1, ThrottleBPS: 1}, "throttle_after"},
		{Faults{ThrottleAfter: 10}, "throttle_after is set but throttle_bps is not"},
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

// TestFaultsRepo checks that Repo limits every fault to one repository's
// requests, by path component: lab/ap is not lab/app.
func TestFaultsRepo(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	other, err := Seed(t.Context(), SeedOptions{
		Registry: u.addr, Repo: "lab/app2", Tag: "v1", Layers: 1, LayerSize: 64 << 10, RootCAs: u.pool, Seed: 12,
	})
	if err != nil {
		t.Fatalf("Seed: %v", err)
	}
	expect := func(path string, want int) {
		t.Helper()
		resp, body, err := u.get(t, tr, http.MethodGet, path, "")
		if err != nil || resp.StatusCode != want {
			t.Errorf("GET %s: status %d, body %.100q, err %v; want %d", path, resp.StatusCode, body, err, want)
		}
	}
	otherBlob := "/v2/lab/app2/blobs/" + other.Layers[0]
	for _, repo := range []string{"lab/app", "lab/ap"} {
		u.setFaults(t, Faults{Repo: repo, Status: http.StatusServiceUnavailable})
		want := http.StatusOK
		if repo == "lab/app" {
			want = http.StatusServiceUnavailable
		}
		expect("/v2/lab/app/manifests/v1", want)
		expect(u.blobPath(), want)
		expect("/v2/lab/app2/manifests/v1", http.StatusOK)
		expect(otherBlob, http.StatusOK)
		expect("/v2/", http.StatusOK)
	}

	// Body faults follow Repo too.
	u.setFaults(t, Faults{Repo: "lab/app2", CutAfter: 1000})
	if _, body, err := u.get(t, tr, http.MethodGet, otherBlob, ""); err == nil || len(body) != 1000 {
		t.Errorf("GET %s with cut_after 1000 for its repo: %d bytes, err %v; want a cut", otherBlob, len(body), err)
	}
	if resp, body, err := u.get(t, tr, http.MethodGet, u.blobPath(), ""); err != nil || resp.StatusCode != http.StatusOK || sha256Digest(body) != u.blob {
		t.Errorf("GET of another repo's blob: status %d, %d bytes, err %v; want it whole", resp.StatusCode, len(body), err)
	}
}

func TestFaultsStatusHeaders(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{Status: http.StatusTooManyRequests, Headers: map[string]string{"Retry-After": "7", "content-type": "text/plain"}})
	resp, body, err := u.get(t, tr, http.MethodGet, "/v2/lab/app/manifests/v1", "")
	if err != nil || resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "status 429") {
		t.Fatalf("GET: status %d, body %q, err %v; want 429", resp.StatusCode, body, err)
	}
	if got := resp.Header.Get("Retry-After"); got != "7" {
		t.Errorf("Retry-After %q, want 7", got)
	}
	if got := resp.Header.Get("Content-Type"); got != "text/plain" {
		t.Errorf("Content-Type %q, want the header's text/plain", got)
	}
	resp, _, err = u.get(t, tr, http.MethodGet, "/v2/", "")
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Retry-After") != "" {
		t.Errorf("GET /v2/: status %d, Retry-After %q, err %v; want a healthy base", resp.StatusCode, resp.Header.Get("Retry-After"), err)
	}
}

// roundTrip starts one request in the background; its result arrives on the
// channel, the body read whole.
func (u *faultyUpstream) roundTrip(ctx context.Context, tr http.RoundTripper, path string) <-chan fetched {
	out := make(chan fetched, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+u.addr+path, nil)
		if err != nil {
			out <- fetched{err: err}
			return
		}
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			out <- fetched{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		out <- fetched{status: resp.StatusCode, body: body, err: err}
	}()
	return out
}

type fetched struct {
	status int
	body   []byte
	err    error
}

// TestFaultsHang checks that a hung request gets no answer while the API base and
// other repositories are served, that it is served once the faults change, and
// that a shutdown ends it.
func TestFaultsHang(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	u.setFaults(t, Faults{Repo: "lab/app", Hang: true})

	hung := u.roundTrip(t.Context(), tr, u.blobPath())
	for _, path := range []string{"/v2/", "/v2/lab/other/manifests/v1"} {
		resp, _, err := u.get(t, tr, http.MethodGet, path, "")
		if err != nil || (resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound) {
			t.Errorf("GET %s while lab/app hangs: status %d, err %v; want an answer", path, resp.StatusCode, err)
		}
	}
	select {
	case r := <-hung:
		t.Fatalf("the hung GET was answered: status %d, %d bytes, err %v", r.status, len(r.body), r.err)
	case <-time.After(300 * time.Millisecond):
	}
	u.setFaults(t, Faults{})
	select {
	case r := <-hung:
		if r.err != nil || r.status != http.StatusOK || sha256Digest(r.body) != u.blob {
			t.Errorf("the hung GET after the faults changed: status %d, %d bytes, err %v; want the whole blob", r.status, len(r.body), r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hung GET was not answered 10 s after the faults changed")
	}

	// A hung request that the client gives up is logged as aborted.
	u.setFaults(t, Faults{Hang: true})
	ctx, cancel := context.WithCancel(t.Context())
	gaveUp := u.roundTrip(ctx, tr, "/v2/lab/app/manifests/v1")
	time.Sleep(100 * time.Millisecond)
	cancel()
	if r := <-gaveUp; r.err == nil {
		t.Errorf("a cancelled hung GET returned status %d", r.status)
	}

	// A shutdown ends a hung request at once.
	hung = u.roundTrip(t.Context(), tr, u.blobPath())
	time.Sleep(100 * time.Millisecond)
	// The request hangs for ever: that stop returns at all is the check.
	if err := u.stop(); err != nil {
		t.Fatalf("ServeUpstream with a hung request: %v", err)
	}
	if r := <-hung; r.err == nil {
		t.Errorf("the hung GET got status %d after the shutdown, want an error", r.status)
	}
	entries, err := ReadAccessLog(u.accessLog)
	if err != nil {
		t.Fatal(err)
	}
	aborted := 0
	for _, e := range entries {
		if e.Aborted && e.Bytes == 0 {
			aborted++
		}
	}
	if aborted != 2 {
		t.Errorf("%d aborted requests in the access log, want 2 (the one given up and the one shut down): %+v", aborted, entries)
	}
}

func TestFaultsHeaderDelay(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	// A delay of a minute that the API base would pay if it were delayed.
	u.setFaults(t, Faults{HeaderDelay: Duration(time.Minute)})
	start := time.Now()
	resp, _, err := u.get(t, tr, http.MethodGet, "/v2/", "")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: status %d, err %v", resp.StatusCode, err)
	}
	if d := time.Since(start); d >= time.Minute {
		t.Errorf("GET /v2/ took %v: the API base was delayed", d)
	}
	u.setFaults(t, Faults{HeaderDelay: Duration(700 * time.Millisecond), Status: http.StatusBadGateway})
	start = time.Now()
	resp, _, err = u.get(t, tr, http.MethodGet, "/v2/lab/app/manifests/v1", "")
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("delayed GET: status %d, err %v; want 502 after the delay", resp.StatusCode, err)
	}
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Errorf("delayed GET answered after %v, want about 700ms", d)
	}
	u.setFaults(t, Faults{HeaderDelay: Duration(500 * time.Millisecond)})
	start = time.Now()
	resp, body, err := u.get(t, tr, http.MethodGet, u.blobPath(), "")
	if err != nil || resp.StatusCode != http.StatusOK || sha256Digest(body) != u.blob {
		t.Fatalf("delayed blob GET: status %d, %d bytes, err %v; want the whole blob", resp.StatusCode, len(body), err)
	}
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("delayed blob GET answered after %v, want about 500ms", d)
	}
}

func TestFaultsCorrupt(t *testing.T) {
	t.Parallel()
	u := startFaultyUpstream(t)
	tr := u.transport()
	defer tr.CloseIdleConnections()
	_, good, err := u.get(t, tr, http.MethodGet, u.blobPath(), "")
	if err != nil || sha256Digest(good) != u.blob {
		t.Fatalf("healthy blob GET: %d bytes, err %v", len(good), err)
	}
	u.setFaults(t, Faults{Corrupt: true})
	resp, body, err := u.get(t, tr, http.MethodGet, u.blobPath(), "")
	if err != nil || resp.StatusCode != http.StatusOK || len(body) != len(good) {
		t.Fatalf("corrupt blob GET: status %d, %d bytes, err %v; want 200 with %d bytes", resp.StatusCode, len(body), err, len(good))
	}
	if sha256Digest(body) == u.blob {
		t.Fatal("a corrupt blob GET served the blob itself")
	}
	for i := range body {
		if body[i] != ^good[i] {
			t.Fatalf("byte %d is %#x, want %#x inverted", i, body[i], good[i])
		}
	}
	if resp, body, err := u.get(t, tr, http.MethodGet, "/v2/lab/app/manifests/v1", ""); err != nil || resp.StatusCode != http.StatusOK || !json.Valid(body) {
		t.Errorf("a manifest GET under a corrupt fault: status %d, err %v; want it untouched", resp.StatusCode, err)
	}
}
