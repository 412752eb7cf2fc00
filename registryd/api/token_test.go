package api_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestAPITokenComparison: only the exact token passes, whatever its length.
func TestAPITokenComparison(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	for _, tc := range []struct {
		token string
		want  int
	}{
		{apiToken, http.StatusNotFound}, // past the check: there is no job 999
		{apiToken + "x", http.StatusUnauthorized},
		{apiToken[:len(apiToken)-1], http.StatusUnauthorized},
		{strings.ToUpper(apiToken), http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		if resp, b := f.do(t, http.MethodGet, "/hopless/v1/prefetch/999", "Bearer "+tc.token, ""); resp.StatusCode != tc.want {
			t.Errorf("token %q: %d %s, want %d", tc.token, resp.StatusCode, b, tc.want)
		}
	}
}
