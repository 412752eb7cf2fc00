package peers

import (
	"net/http"
	"testing"

	"github.com/hopless/hopless/conf"
)

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	_, cfg := tlsPeer(t, http.NotFoundHandler())
	s := mustNew(t, cfg)
	noToken := mustNew(t, conf.Peers{})

	tests := []struct {
		name   string
		set    *Set
		header []string // Authorization values; nil sends none
		want   bool
	}{
		{name: "right token", set: s, header: []string{"Bearer " + testToken}, want: true},
		{name: "scheme is case-insensitive", set: s, header: []string{"bearer " + testToken}, want: true},
		{name: "missing", set: s},
		{name: "empty", set: s, header: []string{""}},
		{name: "scheme only", set: s, header: []string{"Bearer"}},
		{name: "wrong token", set: s, header: []string{"Bearer wrong"}},
		{name: "token prefix", set: s, header: []string{"Bearer " + testToken[:len(testToken)-1]}},
		{name: "token with suffix", set: s, header: []string{"Bearer " + testToken + "x"}},
		{name: "extra space", set: s, header: []string{"Bearer  " + testToken}},
		{name: "basic scheme", set: s, header: []string{"Basic " + testToken}},
		{name: "token without scheme", set: s, header: []string{testToken}},
		{name: "first header counts", set: s, header: []string{"Bearer wrong", "Bearer " + testToken}},
		{name: "no token configured", set: noToken, header: []string{"Bearer "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := http.NewRequest(http.MethodGet, "https://m1"+BlobPath, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range tt.header {
				r.Header.Add("Authorization", h)
			}
			if got := tt.set.Authenticate(r); got != tt.want {
				t.Errorf("Authenticate = %v, want %v", got, tt.want)
			}
		})
	}
}
