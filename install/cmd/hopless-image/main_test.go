package main

import (
	"os"
	"os/exec"
	"path/filepath"
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
