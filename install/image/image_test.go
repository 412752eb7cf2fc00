package image

import (
	"archive/tar"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func writeFiles(t *testing.T, contents map[string]string) []File {
	t.Helper()
	dir := t.TempDir()
	var files []File
	for _, name := range slices.Sorted(maps.Keys(contents)) {
		p := filepath.Join(dir, name)
		// The source's mode is not the image's: every binary gets 0755.
		if err := os.WriteFile(p, []byte(contents[name]), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, File{Name: name, Path: p})
	}
	return files
}

// TestBuildAndReadBack builds an image from temporary files, writes it as an OCI
// layout, reads it back, and checks its files, their modes and content, its
// config and its digest.
func TestBuildAndReadBack(t *testing.T) {
	t.Parallel()
	contents := map[string]string{
		"containerd":      "containerd's bytes",
		"hopless-install": "the installer's bytes",
		"hopless-nri":     "the NRI plugin's bytes",
		"registryd":       "registryd's bytes",
	}
	created := time.Unix(1700000000, 0).UTC()
	opts := Options{Files: writeFiles(t, contents), Arch: "arm64", Created: created}
	img, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, img, "0.1.0"); err != nil {
		t.Fatal(err)
	}

	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("%d manifests in the layout, want 1", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.Digest != want || d.MediaType != types.OCIManifestSchema1 || d.Annotations["org.opencontainers.image.ref.name"] != "0.1.0" ||
		d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != "arm64" {
		t.Errorf("the layout lists %+v, want the OCI manifest %s for linux/arm64 named 0.1.0", d, want)
	}
	back, err := p.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	got, err := back.Digest()
	if err != nil || got != want {
		t.Fatalf("the image read back has digest %s (%v), want %s", got, err, want)
	}

	cf, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "0" || c.Entrypoint != nil || c.Cmd != nil || !slices.Equal(c.Env, []string{"PATH=/hopless/bin"}) ||
		cf.OS != "linux" || cf.Architecture != "arm64" || !cf.Created.Time.Equal(created) {
		t.Errorf("config %+v (%s/%s, created %v), want user 0, no entrypoint or command, PATH=/hopless/bin", c, cf.OS, cf.Architecture, cf.Created)
	}

	layers, err := back.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, err := layers[0].MediaType(); err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %s (%v), want %s", mt, err, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type entry struct {
		name    string
		mode    int64
		uid     int
		content string
	}
	var entries []entry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(created) {
			t.Errorf("%s has mtime %v, want %v", h.Name, h.ModTime, created)
		}
		entries = append(entries, entry{h.Name, h.Mode, h.Uid, string(b)})
	}
	wantEntries := []entry{{"hopless/", 0o755, 0, ""}, {"hopless/bin/", 0o755, 0, ""}}
	for _, f := range opts.Files {
		wantEntries = append(wantEntries, entry{"hopless/bin/" + f.Name, 0o755, 0, contents[f.Name]})
	}
	if !slices.Equal(entries, wantEntries) {
		t.Errorf("the layer holds\n%v\nwant\n%v", entries, wantEntries)
	}

	// The same input is the same image.
	again, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := again.Digest(); err != nil || d2 != want {
		t.Errorf("a second build has digest %s (%v), want %s", d2, err, want)
	}
}

func TestBuildRefuses(t *testing.T) {
	t.Parallel()
	files := writeFiles(t, map[string]string{"registryd": "x"})
	missing := filepath.Join(t.TempDir(), "hopless-install")
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no files", Options{Arch: "amd64"}, "no files"},
		{"no architecture", Options{Files: files}, "no architecture"},
		{"a missing file", Options{Files: append(slices.Clone(files), File{Name: "hopless-install", Path: missing}), Arch: "amd64"}, "hopless-install: stat " + missing},
		{"a path for a name", Options{Files: []File{{Name: "bin/registryd", Path: files[0].Path}}, Arch: "amd64"}, `"bin/registryd" is not a file name`},
		{"a name twice", Options{Files: append(slices.Clone(files), files...), Arch: "amd64"}, "registryd twice"},
		{"a directory", Options{Files: []File{{Name: "registryd", Path: t.TempDir()}}, Arch: "amd64"}, "is not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestCheckStatic(t *testing.T) {
	t.Parallel()
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, arch, err string
	}{
		{name: "a script", path: text, err: "is not an ELF executable"},
		{name: "a missing file", path: filepath.Join(t.TempDir(), "none"), err: "is not an ELF executable"},
	}
	// Go's own tools are static; the system's ls is not.
	if gofmt, err := exec.LookPath("gofmt"); err == nil && runtime.GOOS == "linux" && staticByFile(gofmt) {
		cases = append(cases, struct{ name, path, arch, err string }{name: "gofmt", path: gofmt, arch: runtime.GOARCH})
	}
	if ls, err := exec.LookPath("ls"); err == nil && !staticByFile(ls) {
		cases = append(cases, struct{ name, path, arch, err string }{name: "ls", path: ls, err: "is dynamically linked; build it with CGO_ENABLED=0"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			arch, err := CheckStatic(tc.path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("CheckStatic = %q, %v; want an error with %q", arch, err, tc.err)
				}
				return
			}
			if err != nil || arch != tc.arch {
				t.Fatalf("CheckStatic = %q, %v; want %q", arch, err, tc.arch)
			}
		})
	}
}

// staticByFile asks file(1), when there is one, whether p is statically linked, so
// that the test's cases do not rest on CheckStatic's own reading.
func staticByFile(p string) bool {
	out, err := exec.Command("file", "-L", p).Output()
	return err == nil && strings.Contains(string(out), "statically linked")
}
