package conf

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/errdefs"
)

// MaxTokenBytes bounds what ReadToken reads, so a wrong path cannot load a huge file.
const MaxTokenBytes = 4096

// ReadToken reads a bearer token (the peers' shared token, the API token): one line of
// printable ASCII, in a regular file that neither group nor others may read. Errors name the file but never quote
// its content.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	defer f.Close()
	// Stat the open file, not the path, so that the mode checked is that of the
	// content read.
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("token file %s: not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("token file %s: mode %#o is too open, want 0600 or stricter: %w", path, perm, errdefs.ErrInvalidArgument)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if len(b) > MaxTokenBytes {
		return "", fmt.Errorf("token file %s: larger than %d bytes: %w", path, MaxTokenBytes, errdefs.ErrInvalidArgument)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s: empty: %w", path, errdefs.ErrInvalidArgument)
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("token file %s: want the token alone on one line, in printable ASCII without spaces: %w", path, errdefs.ErrInvalidArgument)
		}
	}
	return tok, nil
}
