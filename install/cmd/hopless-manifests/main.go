// Command hopless-manifests renders install/deploy's overlays with the image to
// run, and the per-node install Job:
//
//	hopless-manifests --image REGISTRY/hopless@sha256:… --out bin/manifests      # inprocess.yaml, nri.yaml
//	hopless-manifests --image REGISTRY/hopless@sha256:… --job NODE [--mode nri]  # the Job, to standard output
//
// Every rendering is decoded strictly and checked by the rules of
// install/manifests before it is written.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hopless/hopless/install/manifests"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hopless-manifests: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("hopless-manifests", flag.ContinueOnError)
	ref := fs.String("image", "", "the image every container runs, by digest (or by a tag other than latest)")
	deploy := fs.String("deploy-dir", "install/deploy", "the kustomize tree")
	out := fs.String("out", "", "write <mode>.yaml for each overlay into this directory")
	node := fs.String("job", "", "print the install Job of this node instead")
	mode := fs.String("mode", "inprocess", "the Job's mode: inprocess or nri")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *ref == "" {
		return errors.New("--image is required")
	}
	img, err := manifests.ParseImage(*ref)
	if err != nil {
		return err
	}
	dec, err := manifests.NewDecoder()
	if err != nil {
		return err
	}
	if *node != "" {
		if *mode != "inprocess" && *mode != "nri" {
			return fmt.Errorf("--mode %q: want inprocess or nri", *mode)
		}
		b, err := manifests.RenderJob(filepath.Join(*deploy, "overlays", *mode, "job"), img, *node)
		if err != nil {
			return err
		}
		if _, err := dec.Decode(b); err != nil {
			return fmt.Errorf("the Job of %s: %w", *node, err)
		}
		_, err = stdout.Write(b)
		return err
	}
	if *out == "" {
		return errors.New("--out or --job is required")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", *out, err)
	}
	for _, m := range []string{"inprocess", "nri"} {
		b, err := manifests.Render(filepath.Join(*deploy, "overlays", m), img)
		if err != nil {
			return err
		}
		objs, err := dec.Decode(b)
		if err != nil {
			return fmt.Errorf("overlay %s: %w", m, err)
		}
		if err := manifests.Check(objs); err != nil {
			return fmt.Errorf("overlay %s: %w", m, err)
		}
		p := filepath.Join(*out, m+".yaml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		fmt.Fprintln(stdout, p)
	}
	return nil
}
