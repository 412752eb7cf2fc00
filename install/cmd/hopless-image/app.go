package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

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

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "hopless-image",
		Usage:     "build the image of hopless's static binaries as an OCI image layout, and print its digest",
		Version:   version.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bin-dir", Value: "bin", Usage: "the directory that holds the static binaries"},
			&cli.StringFlag{Name: "out", Value: "bin/image", Usage: "the OCI image layout to write (replaced)"},
			&cli.StringFlag{Name: "digest-file", Usage: "also write the digest to this file"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected arguments %q", c.Args().Slice())
			}
			return build(stdout, c.String("bin-dir"), c.String("out"), c.String("digest-file"))
		},
	}
}

// build writes the image of the binaries in binDir as a layout at out, and prints
// its digest (also to digestFile, unless empty).
func build(stdout io.Writer, binDir, out, digestFile string) error {
	created, err := buildTime()
	if err != nil {
		return err
	}
	files, arch, err := collect(binDir)
	if err != nil {
		return err
	}
	img, err := image.Build(image.Options{Files: files, Arch: arch, Created: created})
	if err != nil {
		return err
	}
	if err := image.WriteLayout(out, img, version.Version); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("computing the image's digest: %w", err)
	}
	if digestFile != "" {
		if err := os.WriteFile(digestFile, []byte(d.String()+"\n"), 0o644); err != nil {
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
