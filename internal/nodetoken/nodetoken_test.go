package nodetoken

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestDeriveVerify(t *testing.T) {
	key := []byte("0123456789abcdef0123")
	other := []byte("fedcba9876543210fedc")
	tok1, err := Derive(key, "node-1.example")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := Derive(key, "node-1.example"); again != tok1 {
		t.Fatalf("Derive is not stable: %q then %q", tok1, again)
	}
	tokOther, _ := Derive(other, "node-1.example")
	tok2, _ := Derive(key, "node-2")
	mac1 := tok1[strings.LastIndexByte(tok1, '.')+1:]
	for _, tc := range []struct {
		name     string
		key      []byte
		token    string
		wantNode string
	}{
		{"own token", key, tok1, "node-1.example"},
		{"another node", key, tok2, "node-2"},
		{"the name swapped", key, prefix + "node-2." + mac1, ""},
		{"another key", key, tokOther, ""},
		{"no scheme", key, strings.TrimPrefix(tok1, prefix), ""},
		{"truncated", key, tok1[:len(tok1)-2], ""},
		{"bad base64", key, prefix + "node-1.!!!", ""},
		{"no MAC", key, prefix + "node-1", ""},
		{"empty", key, "", ""},
		{"short key", key[:8], tok1, ""},
		{"bad name", key, prefix + "../x." + mac1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node, ok := Verify(tc.key, tc.token)
			if node != tc.wantNode || ok != (tc.wantNode != "") {
				t.Errorf("Verify = %q, %v; want %q", node, ok, tc.wantNode)
			}
		})
	}
}

func TestDeriveRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		node string
	}{
		{"short key", []byte("short"), "node-1"},
		{"empty name", []byte("0123456789abcdef"), ""},
		{"slash in name", []byte("0123456789abcdef"), "a/b"},
		{"space in name", []byte("0123456789abcdef"), "a b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Derive(tc.key, tc.node); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Derive = %v, want an invalid-argument error", err)
			}
		})
	}
}
