// Package ctrconf reads and checks containerd's config.toml for the installer:
// which files it imports, how to make it import the installer's drop-in, and what
// containerd will see once the drop-in is there, loaded with containerd's own
// loader before anything is written.
package ctrconf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/plugin/crilocal"
)

// Plugin IDs the installer cares about.
const (
	CRIImages = "io.containerd.cri.v1.images"
	NRI       = "io.containerd.nri.v1.nri"
	Hopless   = "io.containerd.hopless.v1.hopless"
)

// MinVersion is the oldest config version the installer writes drop-ins for: the
// one with CRI split into io.containerd.cri.v1.images and .runtime.
const MinVersion = 3

// Main is what the installer reads of config.toml itself.
type Main struct {
	Version int      `toml:"version"`
	Imports []string `toml:"imports"`
}

// ParseMain decodes the top of config.toml at the node path name.
func ParseMain(name string, b []byte) (Main, error) {
	var m Main
	if _, err := toml.Decode(string(b), &m); err != nil {
		return Main{}, fmt.Errorf("%s is not valid TOML: %w", name, err)
	}
	if m.Version < MinVersion {
		v := m.Version
		if v == 0 {
			v = 1
		}
		return Main{}, fmt.Errorf("%s is config version %d; hopless needs version %d or later: run `containerd config migrate` on it first", name, v, MinVersion)
	}
	return m, nil
}

// Imports reports whether the imports of the config at the node path configPath
// take in the node path dropIn, resolved as containerd resolves them: relative to
// the config's directory, and as a glob when they hold a '*'.
func Imports(m Main, configPath, dropIn string) bool {
	for _, imp := range m.Imports {
		p := resolve(configPath, imp)
		if strings.Contains(p, "*") {
			if ok, _ := filepath.Match(p, dropIn); ok {
				return true
			}
		} else if p == dropIn {
			return true
		}
	}
	return false
}

func resolve(configPath, imp string) string {
	p := filepath.Clean(imp)
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(configPath), p)
	}
	return p
}

var (
	// The items are matched lazily: the array ends at the first ']' that only
	// blanks and a comment follow, so a comment holding a ']' is not taken for
	// part of the array.
	importsLine = regexp.MustCompile(`^(\s*imports\s*=\s*)\[(.*?)\](\s*(#.*)?)$`)
	tableLine   = regexp.MustCompile(`^\s*\[`)
	importsKey  = regexp.MustCompile(`^\s*imports\s*=`)
)

// AddImport returns config.toml with glob added to its imports, the rest of the
// text (comments included) left as it is. An imports array written over several
// lines is not edited: the error says what to add.
func AddImport(name string, b []byte, glob string) ([]byte, error) {
	m, err := ParseMain(name, b)
	if err != nil {
		return nil, err
	}
	lines := strings.SplitAfter(string(b), "\n")
	edited := false
	for i, l := range lines {
		if tableLine.MatchString(l) {
			break
		}
		body := strings.TrimRight(l, "\r\n")
		if sub := importsLine.FindStringSubmatch(body); sub != nil {
			items := strings.TrimSpace(sub[2])
			items = strings.TrimSuffix(items, ",")
			if items != "" {
				items += ", "
			}
			lines[i] = sub[1] + "[" + items + tomlString(glob) + "]" + sub[3] + l[len(body):]
			edited = true
			break
		}
		if importsKey.MatchString(body) {
			return nil, fmt.Errorf("%s: its imports array spans several lines; add %s to it by hand", name, tomlString(glob))
		}
	}
	out := strings.Join(lines, "")
	if !edited {
		if len(m.Imports) > 0 {
			return nil, fmt.Errorf("%s: found no single-line imports array to add %s to; add it by hand", name, tomlString(glob))
		}
		out = "# imports added by hopless-install\nimports = [" + tomlString(glob) + "]\n" + out
	}
	got, err := ParseMain(name, []byte(out))
	if err != nil {
		return nil, fmt.Errorf("adding imports to %s: %w", name, err)
	}
	if want := append(slices.Clone(m.Imports), glob); !slices.Equal(got.Imports, want) {
		return nil, fmt.Errorf("adding imports to %s: the edit gave imports %q, want %q", name, got.Imports, want)
	}
	return []byte(out), nil
}

// tomlString quotes s as a TOML literal string when it can, as containerd's own
// files do.
func tomlString(s string) string {
	if !strings.ContainsAny(s, "'\n") {
		return "'" + s + "'"
	}
	return fmt.Sprintf("%q", s)
}

// Candidate is containerd's configuration as it will be: config.toml's content
// (maybe edited) and the drop-in's, on the node.
type Candidate struct {
	Root hostfs.Root
	// ConfigPath is config.toml's node path; Main its content.
	ConfigPath string
	Main       []byte
	// DropIn is the drop-in's node path and DropInData its content; nil leaves the
	// drop-in out, which is the node's configuration without hopless.
	DropIn     string
	DropInData []byte
}

// Load merges the candidate as containerd will at its next start: config.toml,
// then every file its imports match on the node, in containerd's order, with the
// drop-in's content in its place. Imports inside imported files are followed as
// containerd follows them, which reads them outside the host root; the installer
// writes none.
func Load(ctx context.Context, c Candidate) (*srvconfig.Config, error) {
	m, err := ParseMain(c.ConfigPath, c.Main)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "hopless-ctrconf-")
	if err != nil {
		return nil, fmt.Errorf("checking containerd's config: %w", err)
	}
	defer os.RemoveAll(tmp)
	var files []string
	for _, imp := range m.Imports {
		p := resolve(c.ConfigPath, imp)
		var nodePaths []string
		if strings.Contains(p, "*") {
			matches, err := filepath.Glob(filepath.Join(c.Root.Dir, p))
			if err != nil {
				return nil, fmt.Errorf("%s: imports %q: %w", c.ConfigPath, imp, err)
			}
			for _, mt := range matches {
				rel, err := filepath.Rel(c.Root.Dir, mt)
				if err != nil {
					return nil, err
				}
				nodePaths = append(nodePaths, "/"+rel)
			}
			if ok, _ := filepath.Match(p, c.DropIn); ok && !slices.Contains(nodePaths, c.DropIn) {
				nodePaths = append(nodePaths, c.DropIn)
				slices.Sort(nodePaths)
			}
		} else {
			nodePaths = []string{p}
		}
		for _, np := range nodePaths {
			if strings.HasPrefix(filepath.Base(np), hostfs.TempPrefix) {
				continue
			}
			if np == c.DropIn {
				if c.DropInData == nil {
					continue
				}
				f := filepath.Join(tmp, fmt.Sprintf("%d-dropin.toml", len(files)))
				if err := os.WriteFile(f, c.DropInData, 0o600); err != nil {
					return nil, fmt.Errorf("checking containerd's config: %w", err)
				}
				files = append(files, f)
				continue
			}
			rp, err := c.Root.Path(np)
			if err != nil {
				return nil, err
			}
			files = append(files, rp)
		}
	}
	var raw map[string]any
	if _, err := toml.Decode(string(c.Main), &raw); err != nil {
		return nil, fmt.Errorf("%s is not valid TOML: %w", c.ConfigPath, err)
	}
	raw["imports"] = files
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(raw); err != nil {
		return nil, fmt.Errorf("checking containerd's config: %w", err)
	}
	main := filepath.Join(tmp, "config.toml")
	if err := os.WriteFile(main, b.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("checking containerd's config: %w", err)
	}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	ctx = log.WithLogger(ctx, logrus.NewEntry(quiet))
	var cfg srvconfig.Config
	if err := srvconfig.LoadConfig(ctx, main, &cfg); err != nil {
		return nil, fmt.Errorf("containerd would not load %s with its imports: %w", c.ConfigPath, err)
	}
	return &cfg, nil
}

// Section returns the plugin's table of the merged config, or nil.
func Section(cfg *srvconfig.Config, id string) map[string]any {
	s, _ := cfg.Plugins[id].(map[string]any)
	return s
}

// Disabled reports whether the merged config turns the plugin off.
func Disabled(cfg *srvconfig.Config, id string) bool {
	if slices.Contains(cfg.DisabledPlugins, id) {
		return true
	}
	d, _ := Section(cfg, id)["disable"].(bool)
	return d
}

// ConfigPath is CRI's registry config_path in the merged config ("" when unset).
func ConfigPath(cfg *srvconfig.Config) string {
	r, _ := Section(cfg, CRIImages)["registry"].(map[string]any)
	s, _ := r["config_path"].(string)
	return s
}

// CheckInprocess checks a merged config for our containerd build: the hopless
// plugin is configured and on, and CRI pulls through the transfer service.
func CheckInprocess(cfg *srvconfig.Config, name string) error {
	if slices.Contains(cfg.DisabledPlugins, Hopless) {
		return fmt.Errorf("%s: disabled_plugins lists %s; remove it", name, Hopless)
	}
	if Section(cfg, Hopless) == nil {
		return fmt.Errorf("%s: the merged config has no [plugins.'%s'] section", name, Hopless)
	}
	images, err := crilocal.FromTOML(Section(cfg, CRIImages))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if tr := crilocal.Triggers(images, runtime.GOOS); len(tr) > 0 {
		var s []string
		for _, t := range tr {
			s = append(s, t.String())
		}
		return fmt.Errorf("%s: [plugins.'%s'] sets %s: CRI would pull through its local path, past hopless; remove these settings",
			name, CRIImages, strings.Join(s, ", "))
	}
	return nil
}

// CheckNRI checks a merged config for stock containerd with hopless-nri: NRI on,
// and one registry config_path for hosts.toml.
func CheckNRI(cfg *srvconfig.Config, name string) error {
	if Disabled(cfg, NRI) {
		return fmt.Errorf("%s: NRI (%s) is disabled; hopless-nri needs it", name, NRI)
	}
	cp := ConfigPath(cfg)
	switch {
	case cp == "":
		return fmt.Errorf("%s: [plugins.'%s'.registry] has no config_path: containerd would read no hosts.toml", name, CRIImages)
	case strings.Contains(cp, string(os.PathListSeparator)):
		return fmt.Errorf("%s: [plugins.'%s'.registry] config_path %q lists several directories; hopless-nri needs one", name, CRIImages, cp)
	}
	return nil
}
