package conf

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// LoadNode reads, defaults and validates a node.toml.
func LoadNode(path string) (*Node, error) { return loadFile[Node](path) }

// LoadRegistryd reads, defaults and validates a registryd.toml.
func LoadRegistryd(path string) (*Registryd, error) { return loadFile[Registryd](path) }

// config is a configuration that defaults its unset keys, with relative paths taken
// relative to base, and validates itself, naming file in errors.
type config[T any] interface {
	*T
	applyDefaults(raw map[string]any, base string)
	Validate(file string) error
}

// loadFile reads, defaults and validates the file at path.
func loadFile[T any, P config[T]](path string) (*T, error) {
	var v T
	raw, err := decodeFile(path, &v)
	if err != nil {
		return nil, err
	}
	return finish[T, P](&v, raw, path, filepath.Dir(path))
}

// decodeText decodes, defaults and validates configuration text that came from
// elsewhere; name is used in errors, relative paths are relative to baseDir.
func decodeText[T any, P config[T]](name, text, baseDir string) (*T, error) {
	var v T
	raw, err := decode(name, text, &v)
	if err != nil {
		return nil, err
	}
	return finish[T, P](&v, raw, name, baseDir)
}

func finish[T any, P config[T]](v *T, raw map[string]any, name, base string) (*T, error) {
	p := P(v)
	p.applyDefaults(raw, base)
	if err := p.Validate(name); err != nil {
		return nil, err
	}
	return v, nil
}

// DecodeNode decodes, defaults and validates node configuration that is embedded in
// another file (containerd's config.toml); name is used in error messages and relative
// paths are taken relative to baseDir.
func DecodeNode(name, text, baseDir string) (*Node, error) {
	return decodeText[Node](name, text, baseDir)
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
//
// The raw tree is decoded first and checked against v's type by checkTable, so that an
// unknown key, a value of the wrong type or a bad duration is reported with its exact
// indexed path (registry[1].endpoint[0].wieght). The TOML decoder alone names only the
// unindexed key and matches keys case-insensitively, which would let "Weight = 0"
// through and hide it from present.
func decode(name, text string, v any) (map[string]any, error) {
	raw := map[string]any{}
	if _, err := toml.Decode(text, &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, fmt.Errorf("%s: line %d: %s: %s: %w", name, pe.Position.Line, oneLine(pe.LastKey), oneLine(pe.Message), errdefs.ErrInvalidArgument)
			}
			return nil, fmt.Errorf("%s: line %d: %s: %w", name, pe.Position.Line, oneLine(pe.Message), errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("%s: %s: %w", name, oneLine(err.Error()), errdefs.ErrInvalidArgument)
	}
	if errs := checkTable(name, "", raw, reflect.TypeOf(v).Elem()); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// checkTable has vetted every key and value; these are backstops.
	md, err := toml.Decode(text, v)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", name, oneLine(err.Error()), errdefs.ErrInvalidArgument)
	}
	var errs []error
	for _, k := range md.Undecoded() {
		// The decoder leaves the keys inside a free-form table (map[string]any) undecoded.
		if !freeForm(reflect.TypeOf(v).Elem(), k) {
			errs = append(errs, fieldErr(name, k.String(), "unknown key"))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return raw, nil
}

// oneLine escapes the line breaks in a TOML decoder's message, which may quote the
// text: errors.Join separates the problems of a file by newlines, each naming the file.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r", `\r`), "\n", `\n`)
}

var (
	durationType = reflect.TypeFor[Duration]()
	sizeType     = reflect.TypeFor[Size]()
	spaceType    = reflect.TypeFor[Space]()
	freeFormType = reflect.TypeFor[map[string]any]()
)

// tomlFields maps the TOML keys of the struct type t to their field types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}

// freeForm reports whether the key k lies inside a free-form table of the struct type
// t, such as storage.parameters.
func freeForm(t reflect.Type, k toml.Key) bool {
	for _, name := range k {
		for t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t == freeFormType {
			return true
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		ft, ok := tomlFields(t)[name]
		if !ok {
			return false
		}
		t = ft
	}
	return false
}

// checkTable reports every key of the TOML table m that matches no field of the struct
// type t exactly, and every value that does not fit its field. prefix is the field path
// of m ("" for the document).
func checkTable(file, prefix string, m map[string]any, t reflect.Type) []error {
	fields := tomlFields(t)
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		p := joinKey(prefix, k)
		ft, ok := fields[k]
		if !ok {
			errs = append(errs, fieldErr(file, p, "unknown key"))
			continue
		}
		errs = append(errs, checkValue(file, p, m[k], ft)...)
	}
	return errs
}

func checkValue(file, p string, v any, t reflect.Type) []error {
	wrong := func(want string) []error {
		return []error{fieldErr(file, p, "must be %s, got %s", want, tomlType(v))}
	}
	switch {
	case t == sizeType:
		switch v := v.(type) {
		case int64:
			if v < 0 {
				return []error{fieldErr(file, p, "must be >= 0, got %d", v)}
			}
		case string:
			if _, err := ParseSize(v); err != nil {
				return []error{fieldErr(file, p, "%v", err)}
			}
		default:
			return wrong(`a number of bytes or a size string such as "256MiB"`)
		}
	case t == spaceType:
		var sp Space
		if err := sp.UnmarshalTOML(v); err != nil {
			return []error{fieldErr(file, p, "%v", err)}
		}
	case t == freeFormType:
		// A free-form table, such as a storage driver's parameters: any content.
		if _, ok := v.(map[string]any); !ok {
			return wrong("a table")
		}
	case t == durationType:
		s, ok := v.(string)
		if !ok {
			return wrong(`a duration string such as "500ms"`)
		}
		var d Duration
		if err := d.UnmarshalText([]byte(s)); err != nil {
			return []error{fieldErr(file, p, "%v", err)}
		}
	case t.Kind() == reflect.String:
		if _, ok := v.(string); !ok {
			return wrong("a string")
		}
	case t.Kind() == reflect.Bool:
		if _, ok := v.(bool); !ok {
			return wrong("true or false")
		}
	case t.Kind() == reflect.Float64:
		switch n := v.(type) {
		case float64:
		case int64:
			// The decoder refuses an integer that a float64 cannot hold exactly.
			if n < -(1<<53-1) || n > 1<<53-1 {
				return []error{fieldErr(file, p, "integer %d is out of range", n)}
			}
		default:
			return wrong("a number")
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		n, ok := v.(int64)
		if !ok {
			return wrong("an integer")
		}
		if reflect.New(t).Elem().OverflowInt(n) {
			return []error{fieldErr(file, p, "integer %d is out of range", n)}
		}
	case t.Kind() == reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return wrong("a table")
		}
		return checkTable(file, p, m, t)
	case t.Kind() == reflect.Slice:
		var elems []any
		switch s := v.(type) {
		case []map[string]any:
			for _, e := range s {
				elems = append(elems, e)
			}
		case []any:
			elems = s
		default:
			return wrong("an array")
		}
		var errs []error
		for i, e := range elems {
			errs = append(errs, checkValue(file, fmt.Sprintf("%s[%d]", p, i), e, t.Elem())...)
		}
		return errs
	}
	return nil
}

// tomlType describes a decoded TOML value for an error message.
func tomlType(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("string %q", v)
	case int64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return fmt.Sprintf("float %v", v)
	case bool:
		return fmt.Sprintf("boolean %v", v)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "an array"
	default:
		return "a date-time"
	}
}

var bareKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func joinKey(prefix, k string) string {
	if !bareKeyRE.MatchString(k) {
		k = strconv.Quote(k)
	}
	if prefix == "" {
		return k
	}
	return prefix + "." + k
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

// Error is one line, whatever the values it quotes hold (a path from the config
// may have a line break in it): every line of an error names its file.
func (e *FieldError) Error() string {
	return oneLine(fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg))
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
// others can read. Errors name the file but never quote its content.
func ReadCredentials(path string) (user, pass string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("credentials file %s: %w", path, err)
	}
	defer f.Close()
	// Stat the open file, not the path, so that the mode checked is that of the
	// content read.
	fi, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("credentials file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", "", fmt.Errorf("credentials file %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", "", fmt.Errorf("credentials file %s: mode %#o is too open, want 0600", path, perm)
	}
	b, err := io.ReadAll(f)
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
