package conf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
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
		{name: "too large", content: strings.Repeat("t", MaxTokenBytes+1), mode: 0o600, wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "token")
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			got, err := ReadToken(path)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ReadToken = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ReadToken succeeded, want an error with %q", tt.wantErr)
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
		if _, err := ReadToken(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("ReadToken(dir) = %v, want not a regular file", err)
		}
	})
}
