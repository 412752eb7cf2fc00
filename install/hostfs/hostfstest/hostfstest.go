// Package hostfstest snapshots directory trees, for tests that must show a node's
// files exactly as they were: every path with its mode, a file's checksum and a
// link's target.
package hostfstest

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hopless/hopless/install/hostfs"
)

// Tree is every path under dir but dir itself, as a node path ("/etc/x"), with
// its mode and, for a file, the SHA-256 of its content, for a link its target.
// Paths at or under skip (node paths) are left out.
func Tree(dir string, skip ...string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, dir), "/")
		for _, s := range skip {
			if rel == s || strings.HasPrefix(rel, s+"/") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		var sum, link string
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum = hostfs.Sum(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out[rel] = fmt.Sprintf("%v %s%s", fi.Mode(), sum, link)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walking %s: %w", dir, err)
	}
	return out, nil
}

// Diff says how got differs from want, sorted: missing and extra paths, and
// changed ones; a path in except only has to be in both.
func Diff(want, got map[string]string, except ...string) []string {
	var d []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			d = append(d, "missing "+p)
		case slices.Contains(except, p):
		case g != w:
			d = append(d, fmt.Sprintf("changed %s: %s, was %s", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			d = append(d, "extra "+p)
		}
	}
	slices.Sort(d)
	return d
}
