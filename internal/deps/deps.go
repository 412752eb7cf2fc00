// Package deps keeps go.mod pinning modules that the project requires but whose users
// are not written yet: the NRI plugin (nri/) builds on github.com/containerd/nri.
package deps

import (
	_ "github.com/containerd/nri/pkg/stub"
)
