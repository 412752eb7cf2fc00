// Command hopless-install puts hopless onto a node from a privileged pod that has
// the node's root filesystem mounted, and takes it off again.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp(os.Stdout, os.Stderr).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "hopless-install:", err)
		os.Exit(1)
	}
}
