package node

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hopless/hopless/install/state"
	"github.com/hopless/hopless/nri/cri"
	"github.com/hopless/hopless/nri/hosts"
)

// containerdModule is containerd's Go module; its version package carries the
// release a binary was built as.
const containerdModule = "github.com/containerd/containerd/v2"

// checkVersion refuses to replace the node's containerd (the binary the unit
// runs, and the one running now) with an older minor release.
func (in *Installer) checkVersion(ctx context.Context, nodeBin string) error {
	ourVer, err := BinaryVersion(filepath.Join(in.SourceDir, "containerd"))
	if err != nil {
		return fmt.Errorf("reading the version of %s/containerd to install: %w", in.SourceDir, err)
	}
	var nodeVer, from string
	if nodeBin != BinDir+"/containerd" {
		if rp, err := in.Root.Path(nodeBin); err == nil {
			if v, err := BinaryVersion(rp); err == nil {
				nodeVer, from = v, nodeBin
			}
		}
	}
	if sock, err := in.Root.Path(in.Socket); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if c, err := cri.Dial(cctx, sock); err == nil {
			if v, err := c.Version(cctx); err == nil && newer(v, nodeVer) {
				nodeVer, from = v, "the running containerd ("+in.Socket+")"
			}
			c.Close()
		}
		cancel()
	}
	if nodeVer == "" {
		in.Log.Warn("could not tell the node's containerd version; installing without the downgrade check", "binary", nodeBin)
		return nil
	}
	if downgrade(nodeVer, ourVer) {
		return fmt.Errorf("refusing to install: the node runs containerd %s (%s) and hopless's build is containerd %s: "+
			"that is a downgrade across minor versions; install a hopless release built on containerd %s or later",
			nodeVer, from, ourVer, minor(nodeVer))
	}
	return nil
}

// BinaryVersion is the containerd release a Go binary was built as: the version
// its build set with -X on containerd's version package, else the containerd
// module it was built from.
func BinaryVersion(path string) (string, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the build info of %s: %w", path, err)
	}
	for _, s := range bi.Settings {
		if s.Key != "-ldflags" {
			continue
		}
		const key = containerdModule + "/version.Version="
		if i := strings.Index(s.Value, key); i >= 0 {
			v := s.Value[i+len(key):]
			if j := strings.IndexAny(v, " '\""); j >= 0 {
				v = v[:j]
			}
			return strings.TrimPrefix(v, "v"), nil
		}
	}
	if bi.Main.Path == containerdModule && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return strings.TrimPrefix(bi.Main.Version, "v"), nil
	}
	for _, d := range bi.Deps {
		if d.Path == containerdModule {
			return strings.TrimPrefix(d.Version, "v"), nil
		}
	}
	return "", fmt.Errorf("%s says nothing of its containerd version", path)
}

// majorMinor parses "2.4.2" (a leading v and a suffix allowed).
func majorMinor(v string) (int, int, bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return ma, mi, err1 == nil && err2 == nil
}

// downgrade reports whether going from node to ours lowers the major or minor
// release.
func downgrade(node, ours string) bool {
	nma, nmi, ok1 := majorMinor(node)
	oma, omi, ok2 := majorMinor(ours)
	if !ok1 || !ok2 {
		return false
	}
	return nma > oma || (nma == oma && nmi > omi)
}

// newer reports whether a is a later minor release than b (or b is unknown).
func newer(a, b string) bool { return b == "" || downgrade(a, b) }

func minor(v string) string {
	ma, mi, _ := majorMinor(v)
	return fmt.Sprintf("%d.%d", ma, mi)
}

// restoreHosts hands back the hosts.toml files hopless-nri wrote or replaced, as
// `hopless-nri uninstall` would on the node.
func (in *Installer) restoreHosts(st *state.State) error {
	if st.HostsDir == "" || st.NRIStateDir == "" {
		return nil
	}
	sd, err := in.Root.Path(st.NRIStateDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(sd); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	hd, err := in.Root.Path(st.HostsDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(hd); errors.Is(err, fs.ErrNotExist) {
		// No config_path: hopless-nri wrote nothing there.
		return nil
	}
	m, err := hosts.OpenAs(hd, sd, st.HostsDir)
	if err != nil {
		return fmt.Errorf("opening hopless-nri's state in %s: %w", st.NRIStateDir, err)
	}
	if err := m.Uninstall(); err != nil {
		return fmt.Errorf("restoring the hosts.toml files under %s: %w", st.HostsDir, err)
	}
	in.Log.Info("restored hosts.toml files written by hopless-nri", "config_path", st.HostsDir, "owned", filepath.Join(st.NRIStateDir))
	return nil
}
