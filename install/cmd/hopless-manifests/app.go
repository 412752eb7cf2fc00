package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/hopless/hopless/install/manifests"
	"github.com/hopless/hopless/internal/version"
)

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "hopless-manifests",
		Usage:     "render install/deploy's overlays, or one node's install or uninstall Job, with the image to run",
		Version:   version.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "image", Usage: "the image every container runs, by digest (or by a tag other than latest)"},
			&cli.StringFlag{Name: "deploy-dir", Value: "install/deploy", Usage: "the kustomize tree"},
			&cli.StringFlag{Name: "out", Usage: "write <mode>.yaml for each overlay into this directory"},
			&cli.StringFlag{Name: "job", Usage: "print the install Job of this node instead"},
			&cli.StringFlag{Name: "mode", Value: "inprocess", Usage: "the Job's mode: inprocess or nri"},
			&cli.BoolFlag{Name: "uninstall", Usage: "with --job: print the node's uninstall Job instead"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected arguments %q", c.Args().Slice())
			}
			if c.String("image") == "" {
				return errors.New("--image is required")
			}
			if c.Bool("uninstall") && c.String("job") == "" {
				return errors.New("--uninstall needs --job NODE")
			}
			img, err := manifests.ParseImage(c.String("image"))
			if err != nil {
				return err
			}
			dec, err := manifests.NewDecoder()
			if err != nil {
				return err
			}
			deploy := c.String("deploy-dir")
			if node := c.String("job"); node != "" {
				return job(stdout, dec, deploy, img, node, c.String("mode"), c.Bool("uninstall"))
			}
			if c.String("out") == "" {
				return errors.New("--out or --job is required")
			}
			return overlays(stdout, dec, deploy, img, c.String("out"))
		},
	}
}

// job prints node's install Job, or its uninstall Job, of mode.
func job(stdout io.Writer, dec *manifests.Decoder, deploy string, img manifests.Image, node, mode string, uninstall bool) error {
	if mode != "inprocess" && mode != "nri" {
		return fmt.Errorf("--mode %q: want inprocess or nri", mode)
	}
	render, what := manifests.RenderJob, "Job"
	if uninstall {
		render, what = manifests.RenderUninstallJob, "uninstall Job"
	}
	b, err := render(filepath.Join(deploy, "overlays", mode, "job"), img, node)
	if err != nil {
		return err
	}
	if _, err := dec.Decode(b); err != nil {
		return fmt.Errorf("the %s of %s: %w", what, node, err)
	}
	_, err = stdout.Write(b)
	return err
}

// overlays writes <mode>.yaml for each overlay into out, and prints their paths.
func overlays(stdout io.Writer, dec *manifests.Decoder, deploy string, img manifests.Image, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", out, err)
	}
	for _, m := range []string{"inprocess", "nri"} {
		b, err := manifests.Render(filepath.Join(deploy, "overlays", m), img)
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
		p := filepath.Join(out, m+".yaml")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		fmt.Fprintln(stdout, p)
	}
	return nil
}
