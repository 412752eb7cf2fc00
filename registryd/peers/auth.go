package peers

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

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
