package conf

import (
	"fmt"
	"maps"
)

// secretParameter is a storage.parameters key that names a secret file, and the
// driver parameter that gets the file's content.
type secretParameter struct{ file, param string }

// secretParameters lets the s3 driver's keys live in files of mode 0600 instead of
// in registryd.toml.
func secretParameters() []secretParameter {
	return []secretParameter{{"accesskey_file", "accesskey"}, {"secretkey_file", "secretkey"}}
}

// resolveSecretParameters makes the secret files' paths relative to base.
func (s *Storage) resolveSecretParameters(base string) {
	for _, sp := range secretParameters() {
		if p, ok := s.Parameters[sp.file].(string); ok {
			s.Parameters[sp.file] = resolve(base, p)
		}
	}
}

func (s Storage) validateSecretParameters(file string) []error {
	var errs []error
	for _, sp := range secretParameters() {
		v, ok := s.Parameters[sp.file]
		if !ok {
			continue
		}
		field := "storage.parameters." + sp.file
		p, isStr := v.(string)
		switch {
		case !isStr || p == "":
			errs = append(errs, fieldErr(file, field, "must be the path of a file, got %v", v))
		case s.Parameters[sp.param] != nil:
			errs = append(errs, fieldErr(file, field, "conflicts with storage.parameters.%s; set one of them", sp.param))
		default:
			if err := checkSecretFile(p); err != nil {
				errs = append(errs, fieldErr(file, field, "%v", err))
			}
		}
	}
	return errs
}

// DriverParameters returns the parameters for the storage driver: Parameters with
// every secret file key (accesskey_file, secretkey_file) replaced by its file's
// content, read as ReadToken reads a token.
func (s Storage) DriverParameters() (map[string]any, error) {
	out := maps.Clone(s.Parameters)
	for _, sp := range secretParameters() {
		v, ok := out[sp.file]
		if !ok {
			continue
		}
		p, isStr := v.(string)
		if !isStr {
			return nil, fmt.Errorf("storage.parameters.%s: want a path, got %T", sp.file, v)
		}
		secret, err := ReadToken(p)
		if err != nil {
			return nil, fmt.Errorf("reading storage.parameters.%s: %w", sp.file, err)
		}
		delete(out, sp.file)
		out[sp.param] = secret
	}
	return out, nil
}
