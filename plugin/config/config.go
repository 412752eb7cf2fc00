// Package config is the hopless section of containerd's config.toml:
//
//	[plugins.'io.containerd.hopless.v1.hopless']
//	  node_config = "/etc/hopless/node.toml"   # optional, more [[registry]] tables
//	  reload_interval = "2s"
//	  cri_local_pull = "refuse"
//	  [[plugins.'io.containerd.hopless.v1.hopless'.registry]]
//	    host = "registry.d8-system.svc:5001"
//	    ...
//
// Each [[registry]] table is exactly a conf.Registry (node.toml's [[registry]]). The
// tables are checked by package conf, so that unknown keys, wrong types, defaults and
// invalid values are handled and reported exactly as for node.toml, naming the field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/conf"
)

// Plugin type and ID of the hopless plugin in containerd's plugin graph; its config
// section is [plugins.'<Type>.<ID>'].
const (
	Type = "io.containerd.hopless.v1"
	ID   = "hopless"
)

// Section names the config section in error messages.
const Section = "[plugins.'" + Type + "." + ID + "']"

// Values of cri_local_pull: what hopless does when containerd's CRI is configured
// so that it pulls through its local path, which bypasses hopless.
const (
	// CRILocalPullRefuse fails CRI's images plugin (the default).
	CRILocalPullRefuse = "refuse"
	// CRILocalPullWarn logs an error and lets CRI pull past hopless.
	CRILocalPullWarn = "warn"
)

// Defaults and bounds of reload_interval.
const (
	DefaultReloadInterval = 2 * time.Second
	MinReloadInterval     = 100 * time.Millisecond
)

// Config is the decoded section. containerd decodes it with go-toml, which cannot
// tell a key left out from one set to zero, and only warns about unknown keys; so the
// [[registry]] tables are kept as decoded TOML and Node hands them to package conf.
// The other keys are strings checked by Settings, so that a bad value is a field
// error of the plugin rather than a decode error that stops containerd.
type Config struct {
	// Registries are the image hosts whose pulls go to the masters, each a
	// conf.Registry: host, [[registry.endpoint]] (url, weight, local), [registry.tls]
	// (ca, cert, key, insecure), [registry.auth] (credentials_file),
	// [registry.timeouts] and fallback. File paths must be absolute.
	Registries []map[string]any `toml:"registry"`
	// NodeConfig is the absolute path of a node.toml whose [[registry]] tables are
	// served as well. A host may be listed here or there, not in both. Optional.
	NodeConfig string `toml:"node_config"`
	// ReloadInterval is how often the TLS files, credentials files and NodeConfig
	// are checked for changes. Default 2s; at least 100ms.
	ReloadInterval string `toml:"reload_interval"`
	// CRILocalPull is "refuse" (default) or "warn": see CRILocalPullRefuse.
	CRILocalPull string `toml:"cri_local_pull"`
}

// DefaultConfig returns the config of a containerd whose config.toml has no hopless
// section: no registry, so every pull takes containerd's own path.
func DefaultConfig() *Config {
	return &Config{
		ReloadInterval: DefaultReloadInterval.String(),
		CRILocalPull:   CRILocalPullRefuse,
	}
}

// Configured reports whether the section lists any registry, inline or through
// node_config.
func (c *Config) Configured() bool {
	return len(c.Registries) > 0 || c.NodeConfig != ""
}

// Settings are the section's keys besides the registries, validated.
type Settings struct {
	NodeConfig     string
	ReloadInterval time.Duration
	CRILocalPull   string
}

// Settings validates the keys besides the registries. All problems are reported,
// joined; each names the section and the field.
func (c *Config) Settings() (Settings, error) {
	s := Settings{NodeConfig: c.NodeConfig, CRILocalPull: c.CRILocalPull}
	var errs []error
	if err := c.nodeConfigPath(); err != nil {
		errs = append(errs, err)
	}
	switch c.CRILocalPull {
	case CRILocalPullRefuse, CRILocalPullWarn:
	default:
		errs = append(errs, fieldErr("cri_local_pull", "must be %q or %q, got %q", CRILocalPullRefuse, CRILocalPullWarn, c.CRILocalPull))
	}
	d, err := time.ParseDuration(c.ReloadInterval)
	switch {
	case err != nil:
		errs = append(errs, fieldErr("reload_interval", "bad duration %q: want a number with a unit such as 500ms, 3s or 1m", c.ReloadInterval))
	case d < MinReloadInterval:
		errs = append(errs, fieldErr("reload_interval", "must be at least %s, got %s", MinReloadInterval, d))
	default:
		s.ReloadInterval = d
	}
	if len(errs) > 0 {
		return Settings{}, errors.Join(errs...)
	}
	return s, nil
}

// Node decodes, defaults and validates the section's registries, and adds those of
// node_config. All problems are reported, joined; each names the file (the section
// or node_config) and the field, for example
//
//	[plugins.'io.containerd.hopless.v1.hopless']: registry[0].endpoint[1].weight: must be > 0, got 0
//
// Node reads node_config every time it is called, which is what a reload wants.
func (c *Config) Node() (*conf.Node, error) {
	inline, err := c.inline()
	if c.NodeConfig == "" {
		return inline, err
	}
	errs := split(err)
	if perr := c.nodeConfigPath(); perr != nil {
		return nil, errors.Join(append(errs, perr)...)
	}
	file, ferr := conf.LoadNode(c.NodeConfig)
	errs = append(errs, split(ferr)...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// Hosts are compared as conf compares them: case-insensitively.
	at := map[string]int{}
	for i, r := range inline.Registries {
		at[strings.ToLower(r.Host)] = i
	}
	for j, r := range file.Registries {
		if i, dup := at[strings.ToLower(r.Host)]; dup {
			errs = append(errs, fieldErr("node_config",
				"host %q is in registry[%d] of this section and in registry[%d] of %s: list it in one place",
				r.Host, i, j, c.NodeConfig))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &conf.Node{Registries: append(slices.Clip(inline.Registries), file.Registries...)}, nil
}

// inline decodes the section's own [[registry]] tables; none is no error when
// node_config is set.
func (c *Config) inline() (*conf.Node, error) {
	if len(c.Registries) == 0 && c.NodeConfig != "" {
		return &conf.Node{}, nil
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]any{"registry": c.Registries}); err != nil {
		return nil, fmt.Errorf("%s: re-encoding the section: %w", Section, err)
	}
	// No base directory: relative paths are refused below.
	n, err := conf.DecodeNode(Section, b.String(), "")
	rel := c.relativePaths()
	if len(rel) == 0 {
		return n, err
	}
	errs := rel
	for _, e := range split(err) {
		// conf looked for the relative file in containerd's working directory; the
		// error that matters is the one above.
		if fe, ok := errors.AsType[*conf.FieldError](e); ok && slices.ContainsFunc(rel, func(r error) bool {
			return r.(*conf.FieldError).Field == fe.Field
		}) {
			continue
		}
		errs = append(errs, e)
	}
	return nil, errors.Join(errs...)
}

// nodeConfigPath refuses a relative node_config, for the reason relativePaths gives.
func (c *Config) nodeConfigPath() error {
	if c.NodeConfig == "" || filepath.IsAbs(c.NodeConfig) {
		return nil
	}
	return fieldErr("node_config", "must be an absolute path, got %q", c.NodeConfig)
}

// relativePaths refuses relative file paths: containerd's working directory is no
// meaningful base, and the section does not know which file it came from.
func (c *Config) relativePaths() []error {
	// The file paths of a [[registry]] table.
	pathKeys := []struct{ table, key string }{
		{"tls", "ca"}, {"tls", "cert"}, {"tls", "key"}, {"auth", "credentials_file"},
	}
	var errs []error
	for i, r := range c.Registries {
		for _, k := range pathKeys {
			t, _ := r[k.table].(map[string]any)
			p, ok := t[k.key].(string)
			if !ok || p == "" || filepath.IsAbs(p) {
				continue
			}
			errs = append(errs, fieldErr(fmt.Sprintf("registry[%d].%s.%s", i, k.table, k.key), "must be an absolute path, got %q", p))
		}
	}
	return errs
}

// fieldErr is a problem with one field of the section.
func fieldErr(field, format string, args ...any) error {
	return &conf.FieldError{File: Section, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// split returns the errors joined in err.
func split(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
