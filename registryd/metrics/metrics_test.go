package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	t.Parallel()
	m := New()
	m.HTTPRequests.WithLabelValues("GET", "blob", "200").Inc()
	m.HTTPResponseBytes.WithLabelValues("blob").Add(42)

	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Body)
	for _, want := range []string{
		`hopless_registryd_http_requests_total{code="200",kind="blob",method="GET"} 1`,
		`hopless_registryd_http_response_bytes_total{kind="blob"} 42`,
		"hopless_registryd_scrubbed_bytes_total 0",
		"hopless_registryd_scrub_bad_blobs_total 0",
		`hopless_registryd_index_writes_total{result="ok"} 0`,
		"hopless_registryd_index_rebuilding 0",
		"go_goroutines",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
