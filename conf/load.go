package conf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// LoadNode reads, defaults and validates a node.toml.
func LoadNode(path string) (*Node, error) {
	var n Node
	raw, err := decodeFile(path, &n)
	if err != nil {
		return nil, err
	}
	n.applyDefaults(raw, filepath.Dir(path))
	if err := n.Validate(path); err != nil {
		return nil, err
	}
	return &n, nil
}

// LoadRegistryd reads, defaults and validates a registryd.toml.
func LoadRegistryd(path string) (*Registryd, error) {
	var r Registryd
	raw, err := decodeFile(path, &r)
	if err != nil {
		return nil, err
	}
	r.applyDefaults(raw, filepath.Dir(path))
	if err := r.Validate(path); err != nil {
		return nil, err
	}
	return &r, nil
}

// LoadInstall reads, defaults and validates an install.toml.
func LoadInstall(path string) (*Install, error) {
	var in Install
	raw, err := decodeFile(path, &in)
	if err != nil {
		return nil, err
	}
	in.applyDefaults(raw)
	if err := in.Validate(path); err != nil {
		return nil, err
	}
	return &in, nil
}

// DecodeNode decodes, defaults and validates node configuration that is embedded in
// another file (containerd's config.toml); name is used in error messages and relative
// paths are taken relative to baseDir.
func DecodeNode(name, text, baseDir string) (*Node, error) {
	var n Node
	raw, err := decode(name, text, &n)
	if err != nil {
		return nil, err
	}
	n.applyDefaults(raw, baseDir)
	if err := n.Validate(name); err != nil {
		return nil, err
	}
	return &n, nil
}

func decodeFile(path string, v any) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: config file not found: %w", path, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	return decode(path, string(b), v)
}

// decode decodes text strictly into v and also returns the raw key tree, which
// applyDefaults uses to tell an absent key from an explicit zero.
func decode(name, text string, v any) (map[string]any, error) {
	md, err := toml.Decode(text, v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, fmt.Errorf("%s: line %d: %s: %s: %w", name, pe.Position.Line, pe.LastKey, pe.Message, errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("%s: line %d: %s: %w", name, pe.Position.Line, pe.Message, errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("%s: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var errs []error
		for _, k := range und {
			errs = append(errs, fieldErr(name, k.String(), "unknown key"))
		}
		return nil, errors.Join(errs...)
	}
	raw := map[string]any{}
	if _, err := toml.Decode(text, &raw); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	return raw, nil
}

// present reports whether the key path (strings for table keys, ints for array
// indexes) was written in the file.
func present(raw any, path ...any) bool {
	cur := raw
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				return false
			}
			if cur, ok = m[k]; !ok {
				return false
			}
		case int:
			switch s := cur.(type) {
			case []map[string]any:
				if k >= len(s) {
					return false
				}
				cur = s[k]
			case []any:
				if k >= len(s) {
					return false
				}
				cur = s[k]
			default:
				return false
			}
		}
	}
	return true
}

// FieldError is a validation failure of one field in one config file.
type FieldError struct {
	File  string
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
}

// Unwrap lets callers test for errdefs.IsInvalidArgument.
func (e *FieldError) Unwrap() error { return errdefs.ErrInvalidArgument }

func fieldErr(file, field, format string, args ...any) error {
	return &FieldError{File: file, Field: field, Msg: fmt.Sprintf(format, args...)}
}

// resolve makes a relative path relative to base; empty stays empty.
func resolve(base, p string) string {
	if p == "" || filepath.IsAbs(p) || base == "" {
		return p
	}
	return filepath.Join(base, p)
}

// ReadCredentials reads a "username:password" file, refusing one that group or
// others can read.
func ReadCredentials(path string) (user, pass string, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", "", fmt.Errorf("credentials file %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", "", fmt.Errorf("credentials file %s: mode %#o is too open, want 0600", path, perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("credentials file %s: %w", path, err)
	}
	line := strings.TrimSpace(string(b))
	user, pass, ok := strings.Cut(line, ":")
	if !ok || user == "" || strings.ContainsAny(line, "\n\r") {
		return "", "", fmt.Errorf("credentials file %s: want one line \"username:password\"", path)
	}
	return user, pass, nil
}
