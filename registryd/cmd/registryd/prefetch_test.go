package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/server"
	"github.com/hopless/hopless/test/registrytest"
)

// prefetchSetup runs a registryd from a config file that the prefetch command then
// reads. withToken turns the API on.
func prefetchSetup(t *testing.T, withToken bool) (configPath string, up *registrytest.Upstream, cert *registrytest.Cert) {
	t.Helper()
	up = registrytest.NewUpstream(t)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", registrytest.Image(t, 64<<10, 2))
	dir := t.TempDir()
	cert = registrytest.NewCert(t, dir)
	api := ""
	if withToken {
		registrytest.WriteSecret(t, filepath.Join(dir, "api-token"), "prefetch-test-token")
		api = "[api]\ntoken_file = \"api-token\"\n"
	}
	text := fmt.Sprintf(`
[server]
listen = %q
tls_cert = "tls.crt"
tls_key = "tls.key"
shutdown_timeout = "5s"

[storage]
root = "cache"

%s
[[upstream]]
url = %q
path = %q
tls.ca = %q
`, freeAddr(t), api, up.URL, registrytest.UpstreamPath, up.CAFile)
	configPath = filepath.Join(dir, "registryd.toml")
	if err := os.WriteFile(configPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.LoadRegistryd(configPath)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := registrytest.Logger(t)
	s, err := server.New(t.Context(), cfg, server.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Start(t, s)
	return configPath, up, cert
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestPrefetchCommand(t *testing.T) {
	path, up, _ := prefetchSetup(t, true)
	var out bytes.Buffer
	if err := run([]string{"registryd", "prefetch", "--config", path, "system/deckhouse/install:v1"}, &out, &out); err != nil {
		t.Fatalf("prefetch: %v\n%s", err, out.String())
	}
	for _, want := range []string{"prefetch job 1: 1 images\n", "system/deckhouse/install:v1: 3/3 blobs", ", done\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if n := up.Count(func(r registrytest.Request) bool { return strings.Contains(r.Path, "/blobs/") }); n != 3 {
		t.Errorf("the upstream served %d blob requests, want 3", n)
	}
}

func TestPrefetchCommandErrors(t *testing.T) {
	path, _, _ := prefetchSetup(t, true)
	noToken, _, _ := prefetchSetup(t, false)
	pinned, _, _ := prefetchSetup(t, true)
	// The server keeps its certificate; the file the client pins now holds another.
	registrytest.NewCert(t, filepath.Dir(pinned))

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no image", []string{"prefetch", "--config", path}, "name at least one IMAGE"},
		{"no API token", []string{"prefetch", "--config", noToken, "system/deckhouse/install:v1"}, "api.token_file: is required for prefetch"},
		{"another certificate", []string{"prefetch", "--config", pinned, "system/deckhouse/install:v1"}, "the server's certificate is not server.tls_cert"},
		{"missing image", []string{"prefetch", "--config", path, "system/deckhouse/install:nope"}, "system/deckhouse/install:nope: resolving"},
		{"bad config", []string{"prefetch", "--config", filepath.Join(t.TempDir(), "nope.toml"), "x:y"}, "nope.toml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(append([]string{"registryd"}, tt.args...), &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run = %v, want an error containing %q; output:\n%s", err, tt.want, out.String())
			}
		})
	}
}
