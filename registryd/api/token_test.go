package api_test

import (
	"fmt"
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
		{apiToken, http.StatusOK},
		{apiToken + "x", http.StatusUnauthorized},
		{apiToken[:len(apiToken)-1], http.StatusUnauthorized},
		{strings.ToUpper(apiToken), http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		body := fmt.Sprintf(`{"source":"node-1","images":[{"image":"x","digest":%q}]}`, manifestDigest(t, f.img))
		if resp, b := f.do(t, http.MethodPut, "/hopless/v1/pins", "Bearer "+tc.token, body); resp.StatusCode != tc.want {
			t.Errorf("token %q: %d %s, want %d", tc.token, resp.StatusCode, b, tc.want)
		}
	}
}
