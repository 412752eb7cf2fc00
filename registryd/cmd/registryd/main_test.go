package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/version"
)

// The tests here are not parallel: urfave/cli v2 writes package-level flags (help,
// version) on every run.

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"registryd", "version"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	if want := "registryd " + version.Version + "\n"; out.String() != want {
		t.Errorf("version printed %q, want %q", out.String(), want)
	}
}

func TestConfigErrorIsConfsMessage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registryd.toml")
	if err := os.WriteFile(path, []byte("[server]\nlisten = \"nope\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, want := conf.LoadRegistryd(path)
	if want == nil {
		t.Fatal("conf accepted a bad config")
	}
	var out bytes.Buffer
	err := run([]string{"registryd", "serve", "--config", path}, &out, &out)
	if err == nil || err.Error() != want.Error() {
		t.Errorf("run = %v, want exactly %q", err, want)
	}
}

// TestSIGTERM starts serve and sends the process SIGTERM, which must end it cleanly.
func TestSIGTERM(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(upstream.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()

	dir := t.TempDir()
	path := filepath.Join(dir, "registryd.toml")
	cfg := fmt.Sprintf(`
[server]
listen = %q
insecure = true
shutdown_timeout = "5s"

[storage]
root = "cache"

[[upstream]]
url = %q
path = "deckhouse/ce"
tls.insecure = true
`, addr, upstream.URL)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run([]string{"registryd", "serve", "--config", path}, &out, &out) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v; output:\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not come up; output:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after SIGTERM: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) {
		t.Errorf("log lacks the stopped line:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "cache")); err != nil {
		t.Errorf("storage root relative to the config file: %v", err)
	}
}
