package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCollect lays out bin directories with Go's static gofmt standing in for the
// binaries, and checks what collect says of each.
func TestCollect(t *testing.T) {
	static, err := exec.LookPath("gofmt")
	if err != nil {
		t.Skip("no gofmt to stand in for a static binary")
	}
	if out, err := exec.Command("file", "-L", static).Output(); err != nil || !strings.Contains(string(out), "statically linked") {
		t.Skipf("%s is not known to be statically linked", static)
	}
	b, err := os.ReadFile(static)
	if err != nil {
		t.Fatal(err)
	}
	all := []string{"registryd", "containerd", "hopless-nri", "hopless-install"}
	for _, tc := range []struct {
		name    string
		present []string
		text    map[string]bool
		want    string
	}{
		{name: "every binary", present: all},
		{name: "without the installer", present: all[:3],
			want: "the binary hopless-install (built from ./install/cmd/hopless-install) is missing"},
		{name: "without two", present: all[1:3],
			want: "the binary registryd (built from ./registryd/cmd/registryd) is missing"},
		{name: "a script for a binary", present: all, text: map[string]bool{"hopless-nri": true},
			want: "hopless-nri is not an ELF executable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, n := range tc.present {
				content := b
				if tc.text[n] {
					content = []byte("#!/bin/sh\n")
				}
				if err := os.WriteFile(filepath.Join(dir, n), content, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			files, arch, err := collect(dir)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("collect = %v, want an error with %q", err, tc.want)
				}
				return
			}
			if err != nil || len(files) != len(all) || arch == "" {
				t.Fatalf("collect = %v, %q, %v; want the four binaries", files, arch, err)
			}
		})
	}
}

// TestApp builds an image from stand-in binaries through the command's flags and
// checks what it prints and writes, and that it refuses arguments.
func TestApp(t *testing.T) {
	static, err := exec.LookPath("gofmt")
	if err != nil {
		t.Skip("no gofmt to stand in for a static binary")
	}
	if out, err := exec.Command("file", "-L", static).Output(); err != nil || !strings.Contains(string(out), "statically linked") {
		t.Skipf("%s is not known to be statically linked", static)
	}
	b, err := os.ReadFile(static)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"registryd", "containerd", "hopless-nri", "hopless-install"} {
		if err := os.WriteFile(filepath.Join(bin, n), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, error) {
		var stdout bytes.Buffer
		err := newApp(&stdout, io.Discard).Run(append([]string{"hopless-image"}, args...))
		return stdout.String(), err
	}
	layout, digestFile := filepath.Join(dir, "image"), filepath.Join(dir, "image.digest")
	out, err := run("--bin-dir", bin, "--out", layout, "--digest-file", digestFile)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`).MatchString(out) {
		t.Fatalf("printed %q, want the digest", out)
	}
	if d, err := os.ReadFile(digestFile); err != nil || string(d) != out {
		t.Errorf("the digest file holds %q (%v), want %q", d, err, out)
	}
	if _, err := os.Stat(filepath.Join(layout, "index.json")); err != nil {
		t.Errorf("no image layout: %v", err)
	}
	again, err := run("--bin-dir", bin, "--out", filepath.Join(dir, "again"))
	if err != nil || again != out {
		t.Errorf("a second build printed %q, %v; want the same digest %q", again, err, out)
	}
	if _, err := run("--bin-dir", bin, "--out", layout, "extra"); err == nil || !strings.Contains(err.Error(), "unexpected arguments") {
		t.Errorf("run with an argument = %v, want an error", err)
	}
	if _, err := run("--bin-dir", filepath.Join(dir, "none"), "--out", layout); err == nil || !strings.Contains(err.Error(), "is missing") {
		t.Errorf("run without binaries = %v, want an error naming them missing", err)
	}
}
