// Package nodetoken binds a node's name to its credential. Each node holds a token
// that carries its name and an HMAC of the name under the masters' node key:
//
//	hpn1.<node name>.<base64url HMAC-SHA256>
//
// so that a master needs only the key to learn, from the token alone, which node
// sends a request, and a node's token is worth nothing for another node's name. The
// installer derives each node's token when it installs the node.
package nodetoken

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// prefix marks the token's scheme, so that a later scheme can be told apart.
const prefix = "hpn1."

// MinKeyBytes is the shortest node key accepted.
const MinKeyBytes = 16

// nameRE is a node name: a Kubernetes node name (a DNS subdomain) or host name.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// ValidName reports whether name can be a node name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Derive returns node's token under key.
func Derive(key []byte, node string) (string, error) {
	if len(key) < MinKeyBytes {
		return "", fmt.Errorf("node key: %d bytes, want at least %d: %w", len(key), MinKeyBytes, errdefs.ErrInvalidArgument)
	}
	if !ValidName(node) {
		return "", fmt.Errorf("node name %q: want letters, digits, '.', '_' or '-': %w", node, errdefs.ErrInvalidArgument)
	}
	return prefix + node + "." + base64.RawURLEncoding.EncodeToString(mac(key, node)), nil
}

// Verify returns the node that token was derived for under key, or false when it
// was not derived under key. The MAC is compared in time that does not depend on
// how much of it matches.
func Verify(key []byte, token string) (string, bool) {
	rest, ok := strings.CutPrefix(token, prefix)
	if !ok || len(key) < MinKeyBytes {
		return "", false
	}
	// base64url has no '.', and a node name may: the MAC follows the last one.
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return "", false
	}
	node, sum := rest[:i], rest[i+1:]
	if !ValidName(node) {
		return "", false
	}
	got, err := base64.RawURLEncoding.DecodeString(sum)
	if err != nil || !hmac.Equal(got, mac(key, node)) {
		return "", false
	}
	return node, true
}

func mac(key []byte, node string) []byte {
	h := hmac.New(sha256.New, key)
	// The label keeps these MACs apart from any other use of the same key.
	h.Write([]byte("hopless node token\x00"))
	h.Write([]byte(node))
	return h.Sum(nil)
}
