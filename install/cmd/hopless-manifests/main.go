// Command hopless-manifests renders install/deploy's overlays with the image to
// run, and the per-node install and uninstall Jobs:
//
//	hopless-manifests --image REGISTRY/hopless@sha256:… --out bin/manifests                  # inprocess.yaml, nri.yaml
//	hopless-manifests --image REGISTRY/hopless@sha256:… --job NODE [--mode nri]              # the install Job, to standard output
//	hopless-manifests --image REGISTRY/hopless@sha256:… --job NODE [--mode nri] --uninstall  # the uninstall Job, to standard output
//
// Every rendering is decoded strictly and checked by the rules of
// install/manifests before it is written.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "hopless-manifests:", err)
		os.Exit(1)
	}
}
