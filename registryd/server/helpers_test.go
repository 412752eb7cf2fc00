package server

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/test/registrytest"
)

// newServer builds a Server that is closed when the test ends.
func newServer(t testing.TB, cfg *conf.Registryd, opts ...Option) (*Server, *registrytest.LogBuffer) {
	t.Helper()
	log, buf := registrytest.Logger(t)
	s, err := New(t.Context(), cfg, append([]Option{WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, buf
}

// serve sends one request straight to the server's handler.
func serve(s *Server, method, target string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	s.handler.ServeHTTP(w, httptest.NewRequest(method, target, nil))
	return w
}

func baseURL(s *Server) string { return "https://" + s.Addr().String() }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// blockBlobs makes up hold every blob request until release is closed or the
// request ends, and then answer 404; arrived receives each held request.
func blockBlobs(up *registrytest.Upstream, arrived chan<- struct{}, release <-chan struct{}) {
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			return false
		}
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		http.NotFound(w, r)
		return true
	})
}
