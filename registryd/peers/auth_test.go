package peers

import (
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

func TestReadToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
		wantErr string
	}{
		{name: "one line", content: "tok-1\n", mode: 0o600, want: "tok-1"},
		{name: "no newline, read-only", content: "tok-1", mode: 0o400, want: "tok-1"},
		{name: "CRLF and blanks around", content: "  tok-1 \r\n", mode: 0o600, want: "tok-1"},
		{name: "group readable", content: "tok-1\n", mode: 0o640, wantErr: "mode 0640 is too open"},
		{name: "world readable", content: "tok-1\n", mode: 0o644, wantErr: "mode 0644 is too open"},
		{name: "empty", content: "\n", mode: 0o600, wantErr: "empty"},
		{name: "two lines", content: "tok-1\ntok-2\n", mode: 0o600, wantErr: "alone on one line"},
		{name: "space inside", content: "tok 1\n", mode: 0o600, wantErr: "alone on one line"},
		{name: "too large", content: strings.Repeat("t", maxTokenBytes+1), mode: 0o600, wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, t.TempDir(), "token", tt.content, tt.mode)
			got, err := readToken(path)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("readToken = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("readToken succeeded, want an error with %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q lacks %q or the path", err, tt.wantErr)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %v is not InvalidArgument", err)
			}
			if strings.Contains(err.Error(), "tok-1") || strings.Contains(err.Error(), "tttt") {
				t.Errorf("error %q quotes the file's content", err)
			}
		})
	}

	t.Run("directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := readToken(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("readToken(dir) = %v, want not a regular file", err)
		}
	})
}

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
