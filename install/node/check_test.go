package node

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goBuild builds a trivial main package (src) in a module of its own with the
// extra go.mod lines, passing ldflags, and returns the binary. It needs the go
// command, and no network: the module cache serves any requirement.
func goBuild(t *testing.T, gomod, src, ldflags string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on $PATH to build test binaries with: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/fake\n\ngo 1.22\n"+gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if gomod != "" {
		// The requirements' checksums are hopless's own.
		sum, err := os.ReadFile("../../go.sum")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "bin")
	args := []string{"build", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command(gobin, append(args, ".")...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local", "CGO_ENABLED=0", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

const trivialMain = "package main\n\nfunc main() {}\n"

// containerdVersion is the version of containerd that hopless requires.
func containerdVersion(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on $PATH: %v", err)
	}
	cmd := exec.Command(gobin, "list", "-m", "-f", "{{.Version}}", containerdModule)
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOTOOLCHAIN=local", "GOWORK=off")
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", containerdModule, err)
	}
	return strings.TrimSpace(string(b))
}

func TestBinaryVersion(t *testing.T) {
	t.Parallel()
	const x = "-X " + containerdModule + "/version.Version="
	cv := containerdVersion(t)
	tests := []struct {
		name    string
		gomod   string
		src     string
		ldflags string
		want    string
		wantErr string
	}{
		{name: "-X", ldflags: x + "2.9.1", want: "2.9.1"},
		{name: "-X with a v and a pre-release", ldflags: x + "v2.5.0-rc.1", want: "2.5.0-rc.1"},
		{name: "-X among other flags", ldflags: "-s -w " + x + "2.4.2 -X main.other=1", want: "2.4.2"},
		{name: "-X quoted", ldflags: "-X '" + containerdModule + "/version.Version=2.3.0'", want: "2.3.0"},
		{name: "-X of v1's package is not v2's", ldflags: "-X github.com/containerd/containerd/version.Version=1.7.20",
			wantErr: "says nothing of its containerd version"},
		{name: "no -X, no containerd", wantErr: "says nothing of its containerd version"},
		{
			name:  "no -X: the containerd module it was built with",
			gomod: "\nrequire " + containerdModule + " " + cv + "\n",
			src:   "package main\n\nimport _ \"" + containerdModule + "/version\"\n\nfunc main() {}\n",
			want:  strings.TrimPrefix(cv, "v"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.src
			if src == "" {
				src = trivialMain
			}
			bin := goBuild(t, tt.gomod, src, tt.ldflags)
			got, err := BinaryVersion(bin)
			if tt.wantErr != "" {
				if err == nil || err.Error() != bin+" "+tt.wantErr {
					t.Fatalf("BinaryVersion = %q, %v; want error %q", got, err, bin+" "+tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("BinaryVersion = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	t.Run("not a Go binary", func(t *testing.T) {
		t.Parallel()
		p := filepath.Join(t.TempDir(), "containerd")
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexec true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if v, err := BinaryVersion(p); err == nil || !strings.HasPrefix(err.Error(), "reading the build info of "+p+": ") {
			t.Errorf("BinaryVersion = %q, %v; want a build info error", v, err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		t.Parallel()
		p := filepath.Join(t.TempDir(), "containerd")
		if v, err := BinaryVersion(p); err == nil || !strings.HasPrefix(err.Error(), "reading the build info of "+p+": ") {
			t.Errorf("BinaryVersion = %q, %v; want a build info error", v, err)
		}
	})
}

func TestMajorMinor(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in     string
		ma, mi int
		ok     bool
	}{
		{"2.4.2", 2, 4, true},
		{"v2.5.0-rc.1", 2, 5, true},
		{"2.5-rc.1", 2, 5, true},
		{"1.7", 1, 7, true},
		{"v10.11.12+dirty", 10, 11, true},
		{"2", 0, 0, false},
		{"", 0, 0, false},
		{"x.4.2", 0, 4, false},
		{"2.y.2", 2, 0, false},
	} {
		ma, mi, ok := majorMinor(tt.in)
		if ma != tt.ma || mi != tt.mi || ok != tt.ok {
			t.Errorf("majorMinor(%q) = %d, %d, %v; want %d, %d, %v", tt.in, ma, mi, ok, tt.ma, tt.mi, tt.ok)
		}
	}
}

func TestDowngrade(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		node, ours string
		want       bool
	}{
		{"2.5.0", "2.4.2", true},
		{"v2.5.0-rc.1", "2.4.2", true},
		{"3.0.0", "2.9.9", true},
		{"2.4.9", "2.4.2", false}, // a patch release back is within the minor
		{"2.4.2", "2.4.2", false},
		{"1.7.20", "2.4.2", false},
		{"2.3.0", "v2.4.2", false},
		{"2.5.0", "2.5.0-rc.1", false},
		{"garbage", "2.4.2", false}, // unknown versions are not refused
		{"2.5.0", "", false},
	} {
		if got := downgrade(tt.node, tt.ours); got != tt.want {
			t.Errorf("downgrade(%q, %q) = %v, want %v", tt.node, tt.ours, got, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"2.5.0", "", true},
		{"2.5.0", "2.4.2", true},
		{"2.4.3", "2.4.2", false},
		{"2.3.0", "2.4.2", false},
	} {
		if got := newer(tt.a, tt.b); got != tt.want {
			t.Errorf("newer(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
	if got := minor("v2.5.0-rc.1"); got != "2.5" {
		t.Errorf("minor = %q, want 2.5", got)
	}
}
