package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfigPeersSelf(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "peer.token"), []byte("a-shared-secret-of-some-length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "registryd.toml")
	cfg := `
[server]
insecure = true

[storage]
root = "cache"

[[upstream]]
url = "https://registry.example"

[peers]
self = "https://self.invalid:5001"
dns = "registry.hopless-system.svc"
port = 5001
token_file = "peer.token"
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, self, want, err string
	}{
		{name: "the file's", want: "https://self.invalid:5001"},
		{name: "the flag's", self: "https://10.0.0.7:5001", want: "https://10.0.0.7:5001"},
		{name: "a bad URL", self: "10.0.0.7:5001", err: "with --peers-self: peers.self: bad URL"},
		{name: "a kubelet variable left unexpanded", self: "https://$(POD_IP):5001", err: "its host must be an IP address"},
		{name: "a name where the DNS peers are addresses", self: "https://master-1.example:5001", err: "its host must be an IP address"},
		{name: "an IPv6 address", self: "https://[fd00::7]:5001", want: "https://[fd00::7]:5001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loadConfig(path, tc.self)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("loadConfig(%q) = %v, want an error with %q", tc.self, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Peers.Self != tc.want {
				t.Errorf("peers.self = %q, want %q", got.Peers.Self, tc.want)
			}
		})
	}
}
