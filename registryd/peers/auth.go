package peers

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/containerd/errdefs"
)

// maxTokenBytes bounds what readToken reads, so a wrong path cannot load a huge file.
const maxTokenBytes = 4096

// Authenticate reports whether r carries the shared peer token as a bearer token. The
// comparison is in constant time. A request that passed Authenticate must be served
// from the local cache or upstream and never forwarded to another peer: that is what
// keeps peer requests loop-free.
func (s *Set) Authenticate(r *http.Request) bool {
	if s.token == "" {
		return false
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	// Comparing digests hides the token's length as well as its content.
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1
}

// readToken reads the shared peer token: one line of printable ASCII, in a regular
// file that neither group nor others may read. Errors name the file but never quote
// its content.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("peer token file %s: %w", path, err)
	}
	defer f.Close()
	// Stat the open file, not the path, so that the mode checked is that of the
	// content read.
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("peer token file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("peer token file %s: not a regular file: %w", path, errdefs.ErrInvalidArgument)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("peer token file %s: mode %#o is too open, want 0600 or stricter: %w", path, perm, errdefs.ErrInvalidArgument)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenBytes+1))
	if err != nil {
		return "", fmt.Errorf("peer token file %s: %w", path, err)
	}
	if len(b) > maxTokenBytes {
		return "", fmt.Errorf("peer token file %s: larger than %d bytes: %w", path, maxTokenBytes, errdefs.ErrInvalidArgument)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("peer token file %s: empty: %w", path, errdefs.ErrInvalidArgument)
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("peer token file %s: want the token alone on one line, in printable ASCII without spaces: %w", path, errdefs.ErrInvalidArgument)
		}
	}
	return tok, nil
}
