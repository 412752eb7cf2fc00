package server

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/registrytest"
)

// TestServerLimits checks the bounds of both HTTP servers. The registry server has
// no ReadTimeout or WriteTimeout: either would cut a blob download that takes longer.
func TestServerLimits(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	env.Config.Metrics.Listen = "127.0.0.1:0"
	s, _ := newServer(t, env.Config)
	servers, err := s.listen()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range servers {
		_ = b.ln.Close()
	}
	if len(servers) != 2 {
		t.Fatalf("%d servers, want the registry and metrics", len(servers))
	}
	for _, b := range servers {
		srv := b.srv
		if srv.ReadHeaderTimeout != readHeaderTimeout || srv.IdleTimeout != idleTimeout || srv.MaxHeaderBytes != maxHeaderBytes {
			t.Errorf("%s: ReadHeaderTimeout %s, IdleTimeout %s, MaxHeaderBytes %d; want %s, %s, %d", b.name,
				srv.ReadHeaderTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, readHeaderTimeout, idleTimeout, maxHeaderBytes)
		}
	}
	if reg := servers[0].srv; reg.ReadTimeout != 0 || reg.WriteTimeout != 0 {
		t.Errorf("registry: ReadTimeout %s, WriteTimeout %s; want none, which would cut long downloads", reg.ReadTimeout, reg.WriteTimeout)
	}
	if m := servers[1].srv; m.ReadTimeout <= 0 || m.WriteTimeout <= 0 {
		t.Errorf("metrics: ReadTimeout %s, WriteTimeout %s; want both bounded", m.ReadTimeout, m.WriteTimeout)
	}
}

// TestHeaderLimit sends headers over maxHeaderBytes to the running server.
func TestHeaderLimit(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	client := env.Cert.Client(t)
	for _, tc := range []struct {
		size int
		want int
	}{
		{8 << 10, http.StatusOK},
		{2 * maxHeaderBytes, http.StatusRequestHeaderFieldsTooLarge},
	} {
		resp, body := registrytest.Do(t, client, http.MethodGet, baseURL(s)+"/v2/", http.Header{"X-Big": {strings.Repeat("a", tc.size)}})
		if resp.StatusCode != tc.want {
			t.Errorf("a %d-byte header: %d %.100s, want %d", tc.size, resp.StatusCode, body, tc.want)
		}
	}
}

// deadlineWriter records the read deadlines a handler sets.
type deadlineWriter struct {
	*httptest.ResponseRecorder
	deadlines []time.Time
}

func (w *deadlineWriter) SetReadDeadline(t time.Time) error {
	w.deadlines = append(w.deadlines, t)
	return nil
}

// TestBoundBody: an API body is read within a deadline that is lifted once it is
// read, and bounded in size; a /v2/ request, whose body is never read, arms no
// deadline that could cut its response.
func TestBoundBody(t *testing.T) {
	t.Parallel()
	read := func(t *testing.T, body string) (*deadlineWriter, error) {
		t.Helper()
		w := &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
		r := httptest.NewRequest(http.MethodPut, "/hopless/v1/pins", strings.NewReader(body))
		boundBody(w, r)
		if len(w.deadlines) != 1 || w.deadlines[0].IsZero() {
			t.Fatalf("deadlines %v before reading, want one", w.deadlines)
		}
		_, err := io.ReadAll(r.Body)
		if len(w.deadlines) != 2 || !w.deadlines[1].IsZero() {
			t.Errorf("deadlines %v after reading, want the first lifted", w.deadlines)
		}
		return w, err
	}
	if _, err := read(t, `{"source":"node-1"}`); err != nil {
		t.Errorf("reading a small body: %v", err)
	}
	var tooLarge *http.MaxBytesError
	if _, err := read(t, strings.Repeat("x", maxBodyBytes+1)); !errors.As(err, &tooLarge) {
		t.Errorf("reading a body over %d bytes: %v, want http.MaxBytesError", maxBodyBytes, err)
	}

	w := &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
	boundBody(w, httptest.NewRequest(http.MethodGet, "/hopless/v1/prefetch/1", nil))
	if len(w.deadlines) != 0 {
		t.Errorf("a request without a body set deadlines %v", w.deadlines)
	}

	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	s, _ := newServer(t, env.Config)
	w = &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
	s.handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v2/", strings.NewReader("a body")))
	if len(w.deadlines) != 0 {
		t.Errorf("a /v2/ request set read deadlines %v", w.deadlines)
	}
	w = &deadlineWriter{ResponseRecorder: httptest.NewRecorder()}
	s.handler.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/hopless/v1/pins", strings.NewReader(`{}`)))
	if len(w.deadlines) == 0 || w.deadlines[0].IsZero() {
		t.Errorf("an API request with a body set deadlines %v, want one", w.deadlines)
	}
}
