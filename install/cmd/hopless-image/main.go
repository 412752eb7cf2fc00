// Command hopless-image builds the image that every hopless container runs, from
// the static binaries in a directory (make image builds them), as an OCI image
// layout, and prints its digest:
//
//	hopless-image --bin-dir bin --out bin/image [--digest-file bin/image.digest]
//
// Push the layout as it is (for example skopeo copy oci:bin/image
// docker://REGISTRY/hopless:0.1.0) and the digest stays the same.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hopless/hopless/install/image"
	"github.com/hopless/hopless/internal/version"
)

// binary is one binary of the image and the package it is built from.
type binary struct{ name, pkg string }

func binaries() []binary {
	return []binary{
		{"registryd", "./registryd/cmd/registryd"},
		{"containerd", "./plugin/cmd/containerd"},
		{"hopless-nri", "./nri/cmd/hopless-nri"},
		{"hopless-install", "./install/cmd/hopless-install"},
	}
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hopless-image: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("hopless-image", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "bin", "the directory that holds the static binaries")
	out := fs.String("out", "bin/image", "the OCI image layout to write (replaced)")
	digestFile := fs.String("digest-file", "", "also write the digest to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	created, err := buildTime()
	if err != nil {
		return err
	}
	files, arch, err := collect(*binDir)
	if err != nil {
		return err
	}
	img, err := image.Build(image.Options{Files: files, Arch: arch, Created: created})
	if err != nil {
		return err
	}
	if err := image.WriteLayout(*out, img, version.Version); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("computing the image's digest: %w", err)
	}
	if *digestFile != "" {
		if err := os.WriteFile(*digestFile, []byte(d.String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("writing the digest: %w", err)
		}
	}
	_, err = fmt.Fprintln(stdout, d.String())
	return err
}

// collect finds every binary of the image in dir, checks that each is static, and
// that all are of one architecture, which it returns.
func collect(dir string) ([]image.File, string, error) {
	var (
		files []image.File
		arch  string
		errs  []error
	)
	for _, b := range binaries() {
		p := filepath.Join(dir, b.name)
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("the binary %s (built from %s) is missing: %w", b.name, b.pkg, err))
			continue
		}
		a, err := image.CheckStatic(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if arch != "" && a != arch {
			errs = append(errs, fmt.Errorf("%s is built for %s, the others for %s", p, a, arch))
		}
		arch = a
		files = append(files, image.File{Name: b.name, Path: p})
	}
	return files, arch, errors.Join(errs...)
}

// buildTime is SOURCE_DATE_EPOCH when set, else the epoch: the same binaries make
// the same image.
func buildTime() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q is not a number of seconds: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}
