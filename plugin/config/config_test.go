package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/errdefs"
)

// load decodes the hopless section of a containerd config.toml the way containerd's
// server does: the whole file, then the plugin's section into its registered config.
func load(t *testing.T, text string) *Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var sc srvconfig.Config
	if err := srvconfig.LoadConfig(context.Background(), path, &sc); err != nil {
		t.Fatalf("containerd cannot load the config: %v", err)
	}
	v, err := sc.Decode(context.Background(), Type+"."+ID, DefaultConfig())
	if err != nil {
		t.Fatalf("containerd cannot decode the section: %v", err)
	}
	return v.(*Config)
}

func TestNode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("not parsed here"), 0o644); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "creds")
	if err := os.WriteFile(creds, []byte("u:p\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := load(t, `version = 4
[plugins.'io.containerd.internal.v1.hopless']
  [[plugins.'io.containerd.internal.v1.hopless'.registry]]
    host = "registry.d8-system.svc:5001"
    fallback = true
    endpoint = [{url = "https://10.0.0.1:5001", weight = 3}, {url = "https://10.0.0.2:5001"}]
    [plugins.'io.containerd.internal.v1.hopless'.registry.tls]
      ca = "`+ca+`"
    [plugins.'io.containerd.internal.v1.hopless'.registry.auth]
      credentials_file = "`+creds+`"
    [plugins.'io.containerd.internal.v1.hopless'.registry.timeouts]
      dial = "250ms"
  [[plugins.'io.containerd.internal.v1.hopless'.registry]]
    host = "other.example"
    [[plugins.'io.containerd.internal.v1.hopless'.registry.endpoint]]
      url = "https://10.0.0.3"
      local = true
`)
	if !c.Configured() {
		t.Fatal("Configured() = false with two registries")
	}
	n, err := c.Node()
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Registries) != 2 {
		t.Fatalf("got %d registries, want 2", len(n.Registries))
	}
	r := n.Registries[0]
	if r.Host != "registry.d8-system.svc:5001" || !r.Fallback || r.TLS.CA != ca || r.Auth.CredentialsFile != creds {
		t.Errorf("registry[0] = %+v", r)
	}
	if len(r.Endpoints) != 2 || r.Endpoints[0].Weight != 3 || r.Endpoints[1].Weight != 1 {
		t.Errorf("registry[0] endpoints = %+v, want weights 3 and the default 1", r.Endpoints)
	}
	if r.Timeouts.Dial.Duration != 250*time.Millisecond || r.Timeouts.ResponseHeader.Duration <= 0 {
		t.Errorf("registry[0] timeouts = %+v, want dial 250ms and defaults", r.Timeouts)
	}
	if e := n.Registries[1].Endpoints; len(e) != 1 || !e[0].Local || e[0].URL != "https://10.0.0.3" {
		t.Errorf("registry[1] endpoints = %+v", e)
	}
}

func TestNodeErrors(t *testing.T) {
	t.Parallel()
	const head = "version = 4\n[[plugins.'io.containerd.internal.v1.hopless'.registry]]\n"
	for _, tc := range []struct {
		name  string
		text  string
		field string
		msg   string
	}{
		{"zero weight", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1", weight = 0}]`, "registry[0].endpoint[0].weight", "must be > 0, got 0"},
		{"unknown key", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1", wieght = 2}]`, "registry[0].endpoint[0].wieght", "unknown key"},
		{"relative ca", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
tls = {ca = "ca.pem"}`, "registry[0].tls.ca", `must be an absolute path, got "ca.pem"`},
		{"relative credentials", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
auth = {credentials_file = "creds"}`, "registry[0].auth.credentials_file", "must be an absolute path"},
		{"missing ca", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
tls = {ca = "/nonexistent/ca.pem"}`, "registry[0].tls.ca", "not found"},
		{"plain http", `host = "h:5001"
endpoint = [{url = "http://10.0.0.1"}]`, "registry[0].endpoint[0].url", "tls.insecure"},
		{"bad duration", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
timeouts = {dial = "1 second"}`, "registry[0].timeouts.dial", "bad duration"},
		{"wrong type", `host = "h:5001"
endpoint = [{url = "https://10.0.0.1"}]
fallback = "yes"`, "registry[0].fallback", "must be true or false"},
		{"no endpoint", `host = "h:5001"`, "registry[0].endpoint", "at least one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := load(t, head+tc.text).Node()
			if err == nil {
				t.Fatal("no error")
			}
			want := Section + ": " + tc.field + ": "
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q\nwant a line starting %q containing %q", err, want, tc.msg)
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Errorf("error %q does not wrap errdefs.ErrInvalidArgument", err)
			}
		})
	}
}

func TestNotConfigured(t *testing.T) {
	t.Parallel()
	c := load(t, "version = 4\n")
	if c.Configured() {
		t.Error("Configured() = true without a hopless section")
	}
}

func TestNodeJoinsErrors(t *testing.T) {
	t.Parallel()
	_, err := load(t, `version = 4
[[plugins.'io.containerd.internal.v1.hopless'.registry]]
host = "h:5001"
endpoint = [{url = "https://10.0.0.1", weight = 0}]
tls = {ca = "ca.pem"}
`).Node()
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, want := range []string{
		Section + `: registry[0].tls.ca: must be an absolute path, got "ca.pem"`,
		Section + ": registry[0].endpoint[0].weight: must be > 0, got 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("error %q\nlacks %q", got, want)
		}
	}
	if strings.Contains(got, "not found") {
		t.Errorf("error %q also reports the relative file as missing", got)
	}
}
