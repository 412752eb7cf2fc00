// Package config is the hopless section of containerd's config.toml:
//
//	[plugins.'io.containerd.internal.v1.hopless']
//	  [[plugins.'io.containerd.internal.v1.hopless'.registry]]
//	    host = "registry.d8-system.svc:5001"
//	    ...
//
// Each [[registry]] table is exactly a conf.Registry (node.toml's [[registry]]). The
// section is checked by package conf, so that unknown keys, wrong types, defaults and
// invalid values are handled and reported exactly as for node.toml, naming the field.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/conf"
)

// Plugin type and ID of the hopless plugin in containerd's plugin graph; its config
// section is [plugins.'<Type>.<ID>'].
const (
	Type = "io.containerd.internal.v1"
	ID   = "hopless"
)

// Section names the config section in error messages.
const Section = "[plugins.'" + Type + "." + ID + "']"

// Config is the decoded section. containerd decodes it with go-toml, which cannot
// tell a key left out from one set to zero, and only warns about unknown keys; so the
// [[registry]] tables are kept as decoded TOML and Node hands them to package conf.
type Config struct {
	// Registries are the image hosts whose pulls go to the masters, each a
	// conf.Registry: host, [[registry.endpoint]] (url, weight, local), [registry.tls]
	// (ca, cert, key, insecure), [registry.auth] (credentials_file),
	// [registry.timeouts] and fallback. File paths must be absolute.
	Registries []map[string]any `toml:"registry"`
}

// DefaultConfig returns the config of a containerd whose config.toml has no hopless
// section: no registry, so every pull takes containerd's own path.
func DefaultConfig() *Config {
	return &Config{}
}

// Configured reports whether the section lists any registry.
func (c *Config) Configured() bool {
	return len(c.Registries) > 0
}

// Node decodes, defaults and validates the section. All problems are reported, joined;
// each names the section and the field, for example
//
//	[plugins.'io.containerd.internal.v1.hopless']: registry[0].endpoint[1].weight: must be > 0, got 0
func (c *Config) Node() (*conf.Node, error) {
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
			errs = append(errs, &conf.FieldError{
				File:  Section,
				Field: fmt.Sprintf("registry[%d].%s.%s", i, k.table, k.key),
				Msg:   fmt.Sprintf("must be an absolute path, got %q", p),
			})
		}
	}
	return errs
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
