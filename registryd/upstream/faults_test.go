package upstream

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
)

// fakeRegistry answers GET /v2/ with 200 and hands blob and manifest requests to the
// given handlers.
func fakeRegistry(blob, manifest http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/blobs/") && blob != nil:
			blob(w, r)
		case strings.Contains(r.URL.Path, "/manifests/") && manifest != nil:
			manifest(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBlobRangeIgnored checks offsets against an upstream that always answers 200 with
// the whole blob, with and without a Content-Length.
func TestBlobRangeIgnored(t *testing.T) {
	t.Parallel()
	content := randomBytes(t, 1000)
	srv, _ := serve(t, fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/chunked/") {
			w.(http.Flusher).Flush() // no Content-Length: chunked
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		}
		_, _ = w.Write(content)
	}, nil))
	c := newTestClient(t, srv, conf.Upstream{})
	d := digest.FromBytes(content)
	tests := []struct {
		name      string
		repo      string
		offset    int64
		wantTotal int64
		wantErr   errorClass
		wantText  string
	}{
		{name: "whole", repo: "known/x", wantTotal: 1000},
		{name: "offset", repo: "known/x", offset: 300, wantTotal: 1000},
		{name: "offset at the end", repo: "known/x", offset: 1000, wantTotal: 1000},
		{name: "offset beyond", repo: "known/x", offset: 1001, wantErr: errdefs.IsInvalidArgument, wantText: "beyond the blob's size 1000"},
		// A 200 to a Range request that shows the blob shorter than the offset: the fill
		// engine drops a spool file that reaches past the end only on ErrOutOfRange.
		{name: "offset beyond is out of range", repo: "known/x", offset: 1001, wantErr: errdefs.IsOutOfRange, wantText: "beyond the blob's size 1000"},
		{name: "chunked whole", repo: "chunked/x", wantTotal: -1},
		{name: "chunked offset", repo: "chunked/x", offset: 300, wantTotal: -1},
		{name: "chunked offset beyond", repo: "chunked/x", offset: 1001, wantErr: errdefs.IsInvalidArgument, wantText: "beyond the blob's end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc, total, err := c.Blob(testContext(t), tt.repo, d, tt.offset)
			checkError(t, err, tt.wantErr, tt.wantText)
			if err != nil {
				return
			}
			got, err := readAll(t, rc)
			if err != nil {
				t.Fatal(err)
			}
			if total != tt.wantTotal || !bytes.Equal(got, content[tt.offset:]) {
				t.Errorf("Blob = %d bytes, total %d; want %d bytes, total %d", len(got), total, len(content)-int(tt.offset), tt.wantTotal)
			}
		})
	}
}

// op is one client call whose error is checked; body reads count.
type op func(ctx context.Context, c *Client) error

func blobOp(offset int64) op {
	return func(ctx context.Context, c *Client) error {
		rc, _, err := c.Blob(ctx, "a/b", digest.FromString("blob"), offset)
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.ReadAll(rc)
		return err
	}
}

func manifestOp(ctx context.Context, c *Client) error {
	_, err := c.Manifest(ctx, "a/b", "v1", 1<<20)
	return err
}

func statOp(ctx context.Context, c *Client) error {
	_, err := c.StatBlob(ctx, "a/b", digest.FromString("blob"))
	return err
}

func headOp(ctx context.Context, c *Client) error {
	_, err := c.HeadManifest(ctx, "a/b", "v1", 1<<20)
	return err
}

func status(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// hangUp closes the connection without an answer.
func hangUp(w http.ResponseWriter, r *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// TestFaults maps upstream failures to error classes.
func TestFaults(t *testing.T) {
	t.Parallel()
	const notFound = `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`
	tests := []struct {
		name     string
		handler  func(done <-chan struct{}) http.Handler
		op       op
		opts     []Option
		wantErr  errorClass
		wantText string
		// failure is the *Error's Failure without its "upstream=<host>; " prefix,
		// or empty when the error must not be an *Error.
		failure string
	}{
		{name: "404 blob", op: blobOp(0), wantErr: errdefs.IsNotFound, wantText: "BLOB_UNKNOWN blob unknown to registry",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(status(404, notFound), nil) }},
		{name: "404 stat", op: statOp, wantErr: errdefs.IsNotFound, wantText: "404",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(status(404, ""), nil) }},
		{name: "404 head", op: headOp, wantErr: errdefs.IsNotFound, wantText: "404",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, status(404, "")) }},
		{name: "500 blob", op: blobOp(0), wantErr: errdefs.IsUnavailable, wantText: "500 Internal Server Error", failure: "status=500",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(status(500, "boom"), nil) }},
		{name: "503 manifest", op: manifestOp, wantErr: errdefs.IsUnavailable, wantText: "503", failure: "status=503",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, status(503, "")) }},
		{name: "429 manifest", op: manifestOp, wantErr: errdefs.IsUnavailable, wantText: "429", failure: "status=429",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(nil, status(429, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
			}},
		{name: "403 blob", op: blobOp(0), wantErr: errdefs.IsPermissionDenied, wantText: "403",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(status(403, ""), nil) }},
		{name: "401 without a challenge", op: manifestOp, wantErr: errdefs.IsPermissionDenied, wantText: "401",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, status(401, "")) }},
		{name: "400 manifest", op: manifestOp, wantErr: errdefs.IsInvalidArgument, wantText: "400",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, status(400, "")) }},
		{name: "418 manifest", op: manifestOp, wantErr: errdefs.IsUnknown, wantText: "418",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, status(418, "")) }},
		{name: "closed connection blob", op: blobOp(0), wantErr: errdefs.IsUnavailable, wantText: "fetching blob a/b@", failure: "reason=unreachable",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(hangUp, nil) }},
		{name: "closed connection manifest", op: manifestOp, wantErr: errdefs.IsUnavailable, wantText: "fetching manifest a/b:v1", failure: "reason=unreachable",
			handler: func(<-chan struct{}) http.Handler { return fakeRegistry(nil, hangUp) }},
		{name: "closed connection on ping", op: manifestOp, wantErr: errdefs.IsUnavailable, wantText: "GET /v2/", failure: "reason=unreachable",
			handler: func(<-chan struct{}) http.Handler { return http.HandlerFunc(hangUp) }},
		{name: "ping 500", op: blobOp(0), wantErr: errdefs.IsUnavailable, wantText: "500", failure: "status=500",
			handler: func(<-chan struct{}) http.Handler { return status(500, "") }},
		{name: "ping 404", op: statOp, wantErr: onlyUnavailable, wantText: "404", failure: "status=404; reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler { return http.NotFoundHandler() }},
		{name: "no response headers", op: manifestOp, opts: []Option{WithTimeouts(0, 200*time.Millisecond)},
			wantErr: errdefs.IsUnavailable, wantText: "timeout awaiting response headers", failure: "reason=timeout",
			handler: func(done <-chan struct{}) http.Handler {
				return fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-r.Context().Done():
					case <-done:
					}
				})
			}},
		{name: "stalled body", op: blobOp(0), opts: []Option{WithStallTimeout(200 * time.Millisecond)},
			wantErr: errdefs.IsUnavailable, wantText: "sent nothing for 200ms", failure: "reason=timeout",
			handler: func(done <-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "1000")
					_, _ = w.Write(make([]byte, 10))
					w.(http.Flusher).Flush()
					select {
					case <-r.Context().Done():
					case <-done:
					}
				}, nil)
			}},
		{name: "cut body", op: blobOp(0), wantErr: errdefs.IsUnavailable, wantText: "unexpected EOF", failure: "reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "1000")
					_, _ = w.Write(make([]byte, 10))
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler)
				}, nil)
			}},
		{name: "bad Content-Range", op: blobOp(10), wantErr: errdefs.IsUnavailable, wantText: "Content-Range", failure: "status=206; reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Range", "bytes x")
					w.WriteHeader(http.StatusPartialContent)
				}, nil)
			}},
		{name: "wrong range", op: blobOp(10), wantErr: errdefs.IsUnavailable, wantText: `Content-Range "bytes 0-99/100"`, failure: "status=206; reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Range", "bytes 0-99/100")
					w.Header().Set("Content-Length", "100")
					w.WriteHeader(http.StatusPartialContent)
					_, _ = w.Write(make([]byte, 100))
				}, nil)
			}},
		{name: "stat without a size", op: statOp, wantErr: errdefs.IsUnavailable, wantText: "Content-Length", failure: "status=200; reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Transfer-Encoding", "chunked")
					w.WriteHeader(http.StatusOK)
				}, nil)
			}},
		{name: "redirect to plain http", op: blobOp(0), wantErr: errdefs.IsUnavailable, wantText: "not https", failure: "reason=bad-answer",
			handler: func(<-chan struct{}) http.Handler {
				return fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, "http://"+r.Host+"/elsewhere", http.StatusTemporaryRedirect)
				}, nil)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan struct{})
			srv := httptest.NewTLSServer(tt.handler(done))
			t.Cleanup(srv.Close)
			t.Cleanup(func() { close(done) })
			c := newTestClient(t, srv, conf.Upstream{}, tt.opts...)
			err := tt.op(testContext(t), c.Client)
			checkError(t, err, tt.wantErr, tt.wantText)
			checkFailure(t, err, c.Client, tt.failure)
		})
	}
}

// onlyUnavailable is the class of a broken upstream: never to be taken for missing
// content.
func onlyUnavailable(err error) bool {
	return errdefs.IsUnavailable(err) && !errdefs.IsNotFound(err)
}

// TestInsecure fetches from a plain http upstream, which tls.insecure allows.
func TestInsecure(t *testing.T) {
	t.Parallel()
	payload := []byte(`{"schemaVersion":2}`)
	srv := httptest.NewServer(fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/a/b/manifests/v1" {
			http.Redirect(w, r, "/v2/a/b/manifests/v2", http.StatusFound)
			return
		}
		_, _ = w.Write(payload)
	}))
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv, conf.Upstream{TLS: conf.TLS{Insecure: true}})
	m, err := c.Manifest(testContext(t), "a/b", "v1", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != digest.FromBytes(payload) {
		t.Errorf("digest = %s", m.Digest)
	}
}

// TestUnreachable covers failures before any HTTP answer.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewTLSServer(http.NotFoundHandler())
		ca := caFile(t, srv)
		srv.Close()
		c := newTestClient(t, srv, conf.Upstream{TLS: conf.TLS{CA: ca}})
		err := blobOp(0)(testContext(t), c.Client)
		checkError(t, err, errdefs.IsUnavailable, "connection refused")
		checkFailure(t, err, c.Client, "reason=unreachable")
	})
	t.Run("unknown certificate authority", func(t *testing.T) {
		t.Parallel()
		srv, _ := serve(t, fakeRegistry(nil, nil))
		c, err := New(conf.Upstream{URL: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		err = manifestOp(testContext(t), c)
		checkError(t, err, errdefs.IsUnavailable, "certificate")
		checkFailure(t, err, c, "reason=unreachable")
	})
	t.Run("plain http server", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(fakeRegistry(nil, nil))
		t.Cleanup(srv.Close)
		c, err := New(conf.Upstream{URL: strings.Replace(srv.URL, "http://", "https://", 1)})
		if err != nil {
			t.Fatal(err)
		}
		err = manifestOp(testContext(t), c)
		checkError(t, err, errdefs.IsUnavailable, "")
		checkFailure(t, err, c, "reason=unreachable")
	})
}

// TestRetryAfter checks that a valid Retry-After of a 429 or 503 is kept, unchanged,
// and that no other is.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	const date = "Wed, 21 Oct 2037 07:28:00 GMT"
	tests := []struct {
		status     int
		retryAfter string
		want       string
	}{
		{503, "7", "7"},
		{429, date, date},
		{429, "120", "120"},
		{503, "soon", ""},
		{503, "", ""},
		{500, "7", ""},
		{502, date, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %q", tt.status, tt.retryAfter), func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewTLSServer(fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.WriteHeader(tt.status)
			}))
			t.Cleanup(srv.Close)
			c := newTestClient(t, srv, conf.Upstream{})
			err := manifestOp(testContext(t), c.Client)
			checkFailure(t, err, c.Client, fmt.Sprintf("status=%d", tt.status))
			var e *Error
			if errors.As(err, &e) && e.RetryAfter != tt.want {
				t.Errorf("RetryAfter = %q, want %q", e.RetryAfter, tt.want)
			}
		})
	}
}

// TestCallerContext checks that the caller giving up is not reported as the upstream
// failing, while a deadline is both.
func TestCallerContext(t *testing.T) {
	t.Parallel()
	done := make(chan struct{})
	// The handler never answers while the test runs: returning when the client
	// goes away would send a 200 that can race the client's own cancellation.
	srv := httptest.NewTLSServer(fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
		<-done
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(done) })
	c := newTestClient(t, srv, conf.Upstream{})

	ctx, cancel := context.WithCancel(testContext(t))
	time.AfterFunc(100*time.Millisecond, cancel)
	err := manifestOp(ctx, c.Client)
	if !errdefs.IsCanceled(err) || errdefs.IsUnavailable(err) {
		t.Errorf("cancelled: %v; want canceled, not unavailable", err)
	}
	checkFailure(t, err, c.Client, "")

	ctx, cancel = context.WithTimeout(testContext(t), 100*time.Millisecond)
	defer cancel()
	err = manifestOp(ctx, c.Client)
	if !errdefs.IsDeadlineExceeded(err) || !errdefs.IsUnavailable(err) {
		t.Errorf("deadline: %v; want deadline exceeded and unavailable", err)
	}
	checkFailure(t, err, c.Client, "reason=timeout")
}

// TestSlowReader checks that only time spent waiting on the upstream counts as a stall.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	content := randomBytes(t, 64)
	srv, _ := serve(t, fakeRegistry(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(content)
	}, nil))
	c := newTestClient(t, srv, conf.Upstream{}, WithStallTimeout(50*time.Millisecond))
	rc, _, err := c.Blob(testContext(t), "a/b", digest.FromBytes(content), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []byte
	buf := make([]byte, 16)
	for {
		n, err := rc.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		time.Sleep(120 * time.Millisecond)
	}
	if !bytes.Equal(got, content) {
		t.Errorf("read %d bytes, want %d", len(got), len(content))
	}
}

// TestRedirects follows blob redirects, S3 style, within limits.
func TestRedirects(t *testing.T) {
	t.Parallel()
	content := randomBytes(t, 500)
	var storeAuth atomic.Value
	store, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storeAuth.Store(r.Header.Get("Authorization") + "|" + r.Header.Get("Range"))
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(content))
	}))
	srv, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "puller" || p != "hunter2hunter2" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		// /v2/hops<N>/x/blobs/... reaches the store after N redirects.
		toHop := func(n int) {
			if n == 1 {
				http.Redirect(w, r, store.URL+"/bucket/blob?X-Amz-Signature=SIGNATURE-QUERY", http.StatusTemporaryRedirect)
				return
			}
			http.Redirect(w, r, fmt.Sprintf("/hop/%d", n-1), http.StatusFound)
		}
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
		switch {
		case r.URL.Path == "/v2/":
		case parts[0] == "hop":
			n, _ := strconv.Atoi(parts[1])
			toHop(n)
		case len(parts) > 2 && parts[0] == "v2":
			n, _ := strconv.Atoi(strings.TrimPrefix(parts[1], "hops"))
			toHop(n)
		default:
			http.NotFound(w, r)
		}
	}))
	creds := credentialsFile(t, "puller", "hunter2hunter2", 0o600)
	c := newTestClient(t, srv, conf.Upstream{Auth: conf.Auth{CredentialsFile: creds}})
	d := digest.FromBytes(content)
	tests := []struct {
		repo     string
		offset   int64
		wantErr  errorClass
		wantText string
	}{
		{repo: "hops1/x"},
		{repo: "hops2/x", offset: 100},
		{repo: "hops3/x", offset: 499},
		{repo: "hops4/x", wantErr: errdefs.IsUnavailable, wantText: "stopped after 3 redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.repo, func(t *testing.T) {
			rc, total, err := c.Blob(testContext(t), tt.repo, d, tt.offset)
			checkError(t, err, tt.wantErr, tt.wantText)
			if err != nil {
				if strings.Contains(err.Error(), "SIGNATURE-QUERY") {
					t.Errorf("the error shows the signed URL's query: %v", err)
				}
				return
			}
			got, err := readAll(t, rc)
			if err != nil {
				t.Fatal(err)
			}
			if total != int64(len(content)) || !bytes.Equal(got, content[tt.offset:]) {
				t.Errorf("Blob = %d bytes, total %d", len(got), total)
			}
			wantSeen := "|"
			if tt.offset > 0 {
				wantSeen = fmt.Sprintf("|bytes=%d-", tt.offset)
			}
			if seen := storeAuth.Load(); seen != wantSeen {
				t.Errorf("the store saw Authorization|Range %q, want %q", seen, wantSeen)
			}
		})
	}
	if strings.Contains(c.logs.String(), "SIGNATURE-QUERY") {
		t.Error("the logs show the signed URL's query")
	}
}

// TestManifestChecks covers digest verification, size limits and media types against
// hand-written upstream answers.
func TestManifestChecks(t *testing.T) {
	t.Parallel()
	payload := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`)
	good := digest.FromBytes(payload)
	const ociManifest = "application/vnd.oci.image.manifest.v1+json"

	type answer struct {
		body        []byte
		contentType string
		dcd         string // Docker-Content-Digest
		chunked     bool
		headStatus  int
	}
	tests := []struct {
		name     string
		answer   answer
		ref      string
		max      int64
		head     bool
		want     Descriptor
		wantGETs int64
		wantErr  errorClass
		wantText string
	}{
		{name: "tag", answer: answer{body: payload, contentType: ociManifest, dcd: good.String()}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "digest", answer: answer{body: payload, contentType: ociManifest}, ref: good.String(),
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "sha512 digest", answer: answer{body: payload, contentType: ociManifest}, ref: digest.SHA512.FromBytes(payload).String(),
			want: Descriptor{digest.SHA512.FromBytes(payload), ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "other digest", answer: answer{body: payload, contentType: ociManifest}, ref: digest.FromString("other").String(),
			wantErr: errdefs.IsInvalidArgument, wantText: "digest mismatch"},
		{name: "tampered by digest", answer: answer{body: append([]byte(" "), payload...), contentType: ociManifest, dcd: good.String()}, ref: good.String(),
			wantErr: errdefs.IsInvalidArgument, wantText: "digest mismatch"},
		{name: "tampered by tag", answer: answer{body: append([]byte(" "), payload...), contentType: ociManifest, dcd: good.String()}, ref: "v1",
			wantErr: errdefs.IsInvalidArgument, wantText: "Docker-Content-Digest says " + good.String()},
		{name: "invalid Docker-Content-Digest is ignored", answer: answer{body: payload, contentType: ociManifest, dcd: "garbage"}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "generic content type", answer: answer{body: payload, contentType: "application/octet-stream"}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "content type with parameters", answer: answer{body: payload, contentType: ociManifest + "; charset=utf-8"}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "too large", answer: answer{body: payload, contentType: ociManifest}, ref: "v1", max: 10,
			wantErr: errdefs.IsInvalidArgument, wantText: fmt.Sprintf("manifest of %d bytes exceeds 10 bytes", len(payload))},
		{name: "too large chunked", answer: answer{body: payload, contentType: ociManifest, chunked: true}, ref: "v1", max: 10,
			wantErr: errdefs.IsInvalidArgument, wantText: "manifest exceeds 10 bytes"},
		{name: "chunked at the limit", answer: answer{body: payload, contentType: ociManifest, chunked: true}, ref: "v1", max: int64(len(payload)),
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},

		{name: "head", head: true, answer: answer{body: payload, contentType: ociManifest, dcd: good.String()}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 0},
		{name: "head by digest without header", head: true, answer: answer{body: payload, contentType: ociManifest}, ref: good.String(),
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 0},
		{name: "head without digest", head: true, answer: answer{body: payload, contentType: ociManifest}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "head without media type", head: true, answer: answer{body: payload, contentType: "text/plain", dcd: good.String()}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "head not allowed", head: true, answer: answer{body: payload, contentType: ociManifest, dcd: good.String(), headStatus: 405}, ref: "v1",
			want: Descriptor{good, ociManifest, int64(len(payload))}, wantGETs: 1},
		{name: "head digest mismatch", head: true, answer: answer{body: payload, contentType: ociManifest, dcd: digest.FromString("x").String()}, ref: good.String(),
			wantErr: errdefs.IsInvalidArgument, wantText: "digest mismatch"},
		{name: "head too large", head: true, answer: answer{body: payload, contentType: ociManifest, dcd: good.String()}, ref: "v1", max: 10,
			wantErr: errdefs.IsInvalidArgument, wantText: "exceeds 10 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var gets atomic.Int64
			a := tt.answer
			srv, _ := serve(t, fakeRegistry(nil, func(w http.ResponseWriter, r *http.Request) {
				if got := r.Header.Get("Accept"); !strings.Contains(got, "application/vnd.oci.image.index.v1+json") ||
					!strings.Contains(got, "application/vnd.docker.distribution.manifest.v2+json") {
					t.Errorf("Accept = %q", got)
				}
				w.Header().Set("Content-Type", a.contentType)
				if a.dcd != "" {
					w.Header().Set("Docker-Content-Digest", a.dcd)
				}
				if r.Method == http.MethodGet {
					gets.Add(1)
				}
				if r.Method == http.MethodHead && a.headStatus != 0 {
					w.WriteHeader(a.headStatus)
					return
				}
				if a.chunked {
					w.(http.Flusher).Flush()
				} else {
					w.Header().Set("Content-Length", strconv.Itoa(len(a.body)))
				}
				_, _ = w.Write(a.body)
			}))
			c := newTestClient(t, srv, conf.Upstream{})
			max := tt.max
			if max == 0 {
				max = 1 << 20
			}
			var got Descriptor
			var err error
			if tt.head {
				got, err = c.HeadManifest(testContext(t), "a/b", tt.ref, max)
			} else {
				var m Manifest
				m, err = c.Manifest(testContext(t), "a/b", tt.ref, max)
				got = Descriptor{m.Digest, m.MediaType, int64(len(m.Payload))}
				if err == nil && !bytes.Equal(m.Payload, a.body) {
					t.Errorf("payload = %q", m.Payload)
				}
			}
			checkError(t, err, tt.wantErr, tt.wantText)
			if err != nil {
				return
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if n := gets.Load(); n != tt.wantGETs {
				t.Errorf("%d GETs, want %d", n, tt.wantGETs)
			}
		})
	}
}
