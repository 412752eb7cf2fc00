package peers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/upstreamerr"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/upstream"
)

var testBlob = bytes.Repeat([]byte("0123456789abcdef"), 4096)

// recorder keeps the last request a test peer received.
type recorder struct {
	mu  sync.Mutex
	req *http.Request
}

func (r *recorder) set(req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.req = req.Clone(context.Background())
}

func (r *recorder) get() *http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.req
}

func TestBlob(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes(testBlob)
	size := int64(len(testBlob))
	tests := []struct {
		name        string
		ignoreRange bool // the peer answers 200 with the whole blob
		chunked     bool // the peer sends no length
		offset      int64
		wantRange   string
		wantSize    int64
	}{
		{name: "whole blob", offset: 0, wantSize: size},
		{name: "from an offset", offset: 1000, wantRange: "bytes=1000-", wantSize: size},
		{name: "last byte", offset: size - 1, wantRange: "bytes=" + strconv.FormatInt(size-1, 10) + "-", wantSize: size},
		{name: "peer ignores Range", ignoreRange: true, offset: 1000, wantRange: "bytes=1000-", wantSize: size},
		{name: "unknown size", chunked: true, ignoreRange: true, offset: 0, wantSize: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var rec recorder
			srv, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rec.set(r)
				if r.URL.Path != BlobPath {
					http.NotFound(w, r)
					return
				}
				switch {
				case tt.chunked:
					w.(http.Flusher).Flush()
					_, _ = w.Write(testBlob)
				case tt.ignoreRange:
					w.Header().Set("Content-Length", strconv.Itoa(len(testBlob)))
					_, _ = w.Write(testBlob)
				default:
					http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(testBlob))
				}
			}))
			m := metrics.New()
			s := mustNew(t, cfg, WithMetrics(m))
			p := s.Healthy()[0]

			rc, gotSize, err := s.Blob(t.Context(), p, "registry.example:443", "deckhouse/ce/install", d, tt.offset)
			if err != nil {
				t.Fatalf("Blob: %v", err)
			}
			got, err := io.ReadAll(rc)
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			if gotSize != tt.wantSize {
				t.Errorf("size = %d, want %d", gotSize, tt.wantSize)
			}
			if !bytes.Equal(got, testBlob[tt.offset:]) {
				t.Errorf("body is %d bytes and differs from the blob from offset %d", len(got), tt.offset)
			}

			req := rec.get()
			q := req.URL.Query()
			for k, want := range map[string]string{"upstream": "registry.example:443", "repo": "deckhouse/ce/install", "digest": d.String()} {
				if q.Get(k) != want {
					t.Errorf("query %s = %q, want %q", k, q.Get(k), want)
				}
			}
			for k, want := range map[string]string{
				"Authorization": "Bearer " + testToken,
				HeaderPeer:      "https://127.0.0.1:1",
				"Range":         tt.wantRange,
			} {
				if got := req.Header.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			if n := fills(t, m, srv.URL, resultOK); n != 1 {
				t.Errorf("ok fills = %v, want 1", n)
			}
			if n := fills(t, m, srv.URL, resultError); n != 0 {
				t.Errorf("error fills = %v, want 0", n)
			}
			if !isUp(s, srv.URL) {
				t.Error("a peer that served the blob was marked down")
			}
		})
	}
}

func TestBlobErrors(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes(testBlob)
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		closed    bool // the peer is not listening
		offset    int64
		is        func(error) bool
		wantEject bool
	}{
		{name: "404", handler: status(http.StatusNotFound), is: errdefs.IsNotFound},
		{name: "401", handler: status(http.StatusUnauthorized), is: errdefs.IsPermissionDenied},
		{name: "403", handler: status(http.StatusForbidden), is: errdefs.IsPermissionDenied},
		{name: "416", handler: status(http.StatusRequestedRangeNotSatisfiable), offset: 5, is: errdefs.IsUnavailable},
		{name: "429", handler: status(http.StatusTooManyRequests), is: errdefs.IsUnavailable, wantEject: true},
		{name: "500", handler: status(http.StatusInternalServerError), is: errdefs.IsUnavailable, wantEject: true},
		{name: "503", handler: status(http.StatusServiceUnavailable), is: errdefs.IsUnavailable, wantEject: true},
		{name: "204", handler: status(http.StatusNoContent), is: errdefs.IsUnavailable, wantEject: true},
		{name: "connection refused", closed: true, is: errdefs.IsUnavailable, wantEject: true},
		{
			name: "Content-Range at the wrong offset",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", "bytes 0-9/100")
				w.WriteHeader(http.StatusPartialContent)
				_, _ = w.Write(testBlob[:10])
			},
			offset: 10, is: errdefs.IsUnavailable, wantEject: true,
		},
		{
			name: "offset beyond a whole-blob answer",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write(testBlob[:10])
			},
			offset: 20, is: errdefs.IsInvalidArgument,
		},
		{name: "negative offset", handler: status(http.StatusOK), offset: -1, is: errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := tlsPeer(t, tt.handler)
			if tt.closed {
				srv.Close()
			}
			m := metrics.New()
			s := mustNew(t, cfg, WithMetrics(m))
			p := s.Healthy()[0]

			rc, _, err := s.Blob(t.Context(), p, "registry.example", "deckhouse/ce", d, tt.offset)
			if err == nil {
				rc.Close()
				t.Fatal("Blob succeeded, want an error")
			}
			if !tt.is(err) {
				t.Errorf("error %v has the wrong class", err)
			}
			if !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), d.String()) {
				t.Errorf("error %q names neither the peer nor the blob", err)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("error %q holds the token", err)
			}
			if got := !isUp(s, srv.URL); got != tt.wantEject {
				t.Errorf("ejected = %v, want %v", got, tt.wantEject)
			}
			if n := fills(t, m, srv.URL, resultError); n != 1 {
				t.Errorf("error fills = %v, want 1", n)
			}
		})
	}
}

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, http.StatusText(code)+" "+r.Header.Get("Authorization"), code)
	}
}

// TestBlobCut covers a body that breaks after the headers: by the peer (it is
// ejected) or by the caller's context (it is not).
func TestBlobCut(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		cancel     bool
		wantEject  bool
		wantResult string
	}{
		{name: "peer drops the connection", wantEject: true, wantResult: resultError},
		{name: "caller cancels", cancel: true, wantEject: false, wantResult: resultOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(testBlob)))
				_, _ = w.Write(testBlob[:100])
				w.(http.Flusher).Flush()
				if tt.cancel {
					<-r.Context().Done()
				}
				panic(http.ErrAbortHandler)
			}))
			m := metrics.New()
			s := mustNew(t, cfg, WithMetrics(m))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			rc, _, err := s.Blob(ctx, s.Healthy()[0], "registry.example", "deckhouse/ce", digest.FromBytes(testBlob), 0)
			if err != nil {
				t.Fatalf("Blob: %v", err)
			}
			buf := make([]byte, 100)
			if _, err := io.ReadFull(rc, buf); err != nil {
				t.Fatalf("reading the first bytes: %v", err)
			}
			if tt.cancel {
				cancel()
			}
			_, err = io.ReadAll(rc)
			rc.Close()
			if err == nil {
				t.Fatal("reading a cut body succeeded")
			}
			if !tt.cancel && (!errdefs.IsUnavailable(err) || !errors.Is(err, io.ErrUnexpectedEOF)) {
				t.Errorf("read error %v, want Unavailable wrapping io.ErrUnexpectedEOF", err)
			}
			if got := !isUp(s, srv.URL); got != tt.wantEject {
				t.Errorf("ejected = %v, want %v", got, tt.wantEject)
			}
			if n := fills(t, m, srv.URL, tt.wantResult); n != 1 {
				t.Errorf("%s fills = %v, want 1", tt.wantResult, n)
			}
		})
	}
}

// TestBlobUpstreamFailure covers an owner that answers with the upstream's failure:
// with a valid Hopless-Upstream-Error for the upstream asked about, the error is that
// failure and the owner stays up; anything else is the owner's own failure.
func TestBlobUpstreamFailure(t *testing.T) {
	t.Parallel()
	d := digest.FromBytes(testBlob)
	answer := func(code int, header, retryAfter string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(upstreamerr.Header, header)
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			http.Error(w, `{"errors":[{"code":"UNAVAILABLE"}]}`, code)
		}
	}
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		want       string // the *upstream.Error's failure; "" for the owner's own failure
		retryAfter string
	}{
		{name: "502 status", handler: answer(502, "upstream=registry.example; status=503", "7"),
			want: "upstream=registry.example; status=503", retryAfter: "7"},
		{name: "504 timeout", handler: answer(504, "upstream=registry.example; reason=timeout", ""),
			want: "upstream=registry.example; reason=timeout"},
		{name: "429 with a date", handler: answer(429, "upstream=Registry.Example; status=429", "Wed, 21 Oct 2037 07:28:00 GMT"),
			want: "upstream=registry.example; status=429", retryAfter: "Wed, 21 Oct 2037 07:28:00 GMT"},
		{name: "invalid Retry-After dropped", handler: answer(502, "upstream=registry.example; status=500", "later"),
			want: "upstream=registry.example; status=500"},
		{name: "another upstream", handler: answer(502, "upstream=other.example; status=503", "")},
		{name: "garbage header", handler: answer(502, "upstream=registry.example; status=503; x=1", "")},
		{name: "header on a 200", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(upstreamerr.Header, "upstream=registry.example; status=503")
			w.WriteHeader(http.StatusNoContent)
		}},
		{name: "no header", handler: status(http.StatusBadGateway)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, cfg := tlsPeer(t, tt.handler)
			m := metrics.New()
			s := mustNew(t, cfg, WithMetrics(m))
			rc, _, err := s.Blob(t.Context(), s.Healthy()[0], "registry.example", "deckhouse/ce", d, 0)
			if err == nil {
				rc.Close()
				t.Fatal("Blob succeeded, want an error")
			}
			if !errdefs.IsUnavailable(err) {
				t.Errorf("error %v is not unavailable", err)
			}
			var ue *upstream.Error
			switch {
			case tt.want == "" && errors.As(err, &ue):
				t.Errorf("error %v is the upstream failure %q, want the owner's own", err, ue.Failure())
			case tt.want == "":
			case !errors.As(err, &ue):
				t.Errorf("error %v is no upstream failure, want %q", err, tt.want)
			case ue.Failure().String() != tt.want || ue.RetryAfter != tt.retryAfter:
				t.Errorf("failure %q Retry-After %q, want %q and %q", ue.Failure(), ue.RetryAfter, tt.want, tt.retryAfter)
			}
			ownFailure := tt.want == ""
			if got := !isUp(s, srv.URL); got != ownFailure {
				t.Errorf("ejected = %v, want %v", got, ownFailure)
			}
			result := resultUpstream
			if ownFailure {
				result = resultError
			}
			if n := fills(t, m, srv.URL, result); n != 1 {
				t.Errorf("%s fills = %v, want 1", result, n)
			}
		})
	}
}

// TestBlobStall checks that a body that sends nothing for peers.stall fails, and
// ejects the peer.
func TestBlobStall(t *testing.T) {
	t.Parallel()
	srv, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(testBlob)))
		_, _ = w.Write(testBlob[:100])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	cfg.Stall = conf.Duration{Duration: 100 * time.Millisecond}
	m := metrics.New()
	s := mustNew(t, cfg, WithMetrics(m))
	rc, _, err := s.Blob(t.Context(), s.Healthy()[0], "registry.example", "deckhouse/ce", digest.FromBytes(testBlob), 0)
	if err != nil {
		t.Fatalf("Blob: %v", err)
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "sent nothing for 100ms") {
		t.Errorf("read error %v, want unavailable after 100ms without bytes", err)
	}
	if isUp(s, srv.URL) {
		t.Error("a stalled peer is still up")
	}
	if n := fills(t, m, srv.URL, resultError); n != 1 {
		t.Errorf("error fills = %v, want 1", n)
	}
}

// TestBlobOwnerWaitingOrFrozen checks that a blob request that waits for the
// owner's headers tells an owner waiting on its upstream (it still answers
// /healthz: the request goes on) from a frozen one (it does not: the request stops
// with that reason and the owner is marked down). The frozen owner answers nothing
// until the request is given up: had it answered the blob after a while, its
// answer would race the probe's timeout.
func TestBlobOwnerWaitingOrFrozen(t *testing.T) {
	t.Parallel()
	for _, frozen := range []bool{false, true} {
		t.Run(map[bool]string{false: "waiting", true: "frozen"}[frozen], func(t *testing.T) {
			t.Parallel()
			srv, cfg := tlsPeer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if frozen {
					<-r.Context().Done()
					return
				}
				if r.URL.Path == healthPath {
					return
				}
				select {
				case <-r.Context().Done():
					return
				case <-time.After(2 * probeAfter):
				}
				_, _ = w.Write(testBlob)
			}))
			if frozen {
				cfg.ResponseHeader = conf.Duration{Duration: time.Minute}
			}
			s := mustNew(t, cfg)
			rc, _, err := s.Blob(t.Context(), s.Healthy()[0], "registry.example", "deckhouse/ce", digest.FromBytes(testBlob), 0)
			if !frozen {
				if err != nil {
					t.Fatalf("Blob from an owner that waited but answers its health check: %v", err)
				}
				defer rc.Close()
				if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, testBlob) {
					t.Fatalf("read %d bytes, %v", len(got), err)
				}
				if !isUp(s, srv.URL) {
					t.Error("an owner that was only waiting was marked down")
				}
				return
			}
			if err == nil || !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "no answer to a health check") {
				t.Fatalf("Blob from a frozen owner: %v, want unavailable because its health check went unanswered", err)
			}
			if isUp(s, srv.URL) {
				t.Error("a frozen owner is still up")
			}
		})
	}
}
