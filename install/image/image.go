// Package image builds hopless's container image from Go binaries, as ko does:
// no base image and no build steps, one layer that holds the static binaries in
// /hopless/bin, written as an OCI image layout.
package image

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BinDir is where the image holds the binaries.
const BinDir = "/hopless/bin"

// File is one binary of the image: Name in BinDir, read from Path.
type File struct {
	Name string
	Path string
}

// Options say what to build.
type Options struct {
	Files []File
	// Arch is the image's architecture (GOARCH), e.g. "amd64"; the OS is linux.
	Arch string
	// Created is the time recorded in the image and as the files' mtime; a fixed one
	// makes the build reproducible.
	Created time.Time
}

// Build returns the image: its one layer holds BinDir and each file in it, mode
// 0755 and owned by root; no entrypoint (every container sets its command), user 0
// (the installer writes the host's files), PATH=BinDir.
func Build(o Options) (v1.Image, error) {
	if len(o.Files) == 0 {
		return nil, errors.New("building the image: no files")
	}
	if o.Arch == "" {
		return nil, errors.New("building the image: no architecture")
	}
	seen := map[string]bool{}
	for _, f := range o.Files {
		if f.Name == "" || path.Base(f.Name) != f.Name || f.Name == "." || f.Name == ".." {
			return nil, fmt.Errorf("building the image: %q is not a file name", f.Name)
		}
		if seen[f.Name] {
			return nil, fmt.Errorf("building the image: %s twice", f.Name)
		}
		seen[f.Name] = true
		fi, err := os.Stat(f.Path)
		if err != nil {
			return nil, fmt.Errorf("building the image: %s: %w", f.Name, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("building the image: %s: %s is not a regular file", f.Name, f.Path)
		}
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		// A reader that stops early closes pr, which fails the next write here.
		go func() { pw.CloseWithError(writeTar(pw, o.Files, o.Created)) }()
		return pr, nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("building the image's layer: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: o.Arch,
		OS:           "linux",
		Created:      v1.Time{Time: o.Created},
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User: "0",
			Env:  []string{"PATH=" + BinDir},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("building the image's config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: o.Created}, CreatedBy: "hopless-image", Comment: "the binaries in " + BinDir},
	})
	if err != nil {
		return nil, fmt.Errorf("adding the layer to the image: %w", err)
	}
	return img, nil
}

// writeTar writes the layer: BinDir's directories, then the files in order.
func writeTar(w io.Writer, files []File, mtime time.Time) error {
	tw := tar.NewWriter(w)
	for _, d := range []string{"hopless/", "hopless/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
			return fmt.Errorf("writing the layer: %s: %w", d, err)
		}
	}
	for _, f := range files {
		if err := addFile(tw, f, mtime); err != nil {
			return fmt.Errorf("writing the layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("writing the layer: %w", err)
	}
	return nil
}

func addFile(tw *tar.Writer, f File, mtime time.Time) error {
	in, err := os.Open(f.Path)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	h := &tar.Header{Typeflag: tar.TypeReg, Name: "hopless/bin/" + f.Name, Mode: 0o755, Size: fi.Size(), ModTime: mtime}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	n, err := io.Copy(tw, in)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("%s: %s changed while it was read", f.Name, f.Path)
	}
	return nil
}

// WriteLayout writes img as the one image of a new OCI image layout in dir
// (replacing what dir held), its manifest annotated with refName
// (org.opencontainers.image.ref.name) when that is set.
func WriteLayout(dir string, img v1.Image, refName string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clearing %s for the image layout: %w", dir, err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing the image layout %s: %w", dir, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("writing the image layout %s: %w", dir, err)
	}
	opts := []layout.Option{layout.WithPlatform(v1.Platform{OS: cf.OS, Architecture: cf.Architecture})}
	if refName != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": refName}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		return fmt.Errorf("writing the image to the layout %s: %w", dir, err)
	}
	return nil
}

// elfArch maps ELF machines to GOARCH.
func elfArch(f *elf.File) string {
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64"
	case elf.EM_AARCH64:
		return "arm64"
	case elf.EM_386:
		return "386"
	case elf.EM_ARM:
		return "arm"
	case elf.EM_PPC64:
		if f.Data == elf.ELFDATA2LSB {
			return "ppc64le"
		}
		return "ppc64"
	case elf.EM_S390:
		return "s390x"
	case elf.EM_RISCV:
		return "riscv64"
	}
	return ""
}

// CheckStatic makes sure that the file at p is a statically linked Linux
// executable, one that runs in an image without a C library, and returns its
// architecture as GOARCH names it.
func CheckStatic(p string) (string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("%s is not an ELF executable: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked; build it with CGO_ENABLED=0", p)
		}
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("%s is an ELF %s, not an executable", p, f.Type)
	}
	arch := elfArch(f)
	if arch == "" {
		return "", fmt.Errorf("%s: unknown machine %s", p, f.Machine)
	}
	return arch, nil
}
