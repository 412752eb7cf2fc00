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
	"fmt"
	"os"
)

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "hopless-image:", err)
		os.Exit(1)
	}
}
