package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// UnitExecStart is the command line that systemd would run for unit (e.g.
// "containerd.service") of a host root: the ExecStart of
// hostRoot/etc/systemd/system/UNIT and of its drop-ins UNIT.d/*.conf, read in lexical
// order, where an empty ExecStart= drops the ones before it. Exactly one must be left.
// Command prefixes (-, @, +, !, :), specifiers (%n) and variables ($X) are not
// supported and are refused, naming the file; %% and $$ are a literal % and $.
func UnitExecStart(hostRoot, unit string) ([]string, error) {
	dir := filepath.Join(hostRoot, "etc", "systemd", "system")
	files := []string{filepath.Join(dir, unit)}
	dropins, err := filepath.Glob(filepath.Join(dir, unit+".d", "*.conf"))
	if err != nil {
		return nil, fmt.Errorf("listing the drop-ins of %s: %w", unit, err)
	}
	sort.Strings(dropins)
	files = append(files, dropins...)
	type execStart struct{ value, file string }
	var cmds []execStart
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading unit %s: %w", unit, err)
		}
		for _, v := range serviceValues(string(b), "ExecStart") {
			if v == "" {
				cmds = nil
				continue
			}
			cmds = append(cmds, execStart{v, f})
		}
	}
	switch len(cmds) {
	case 0:
		return nil, fmt.Errorf("unit %s (%s) has no ExecStart", unit, strings.Join(files, ", "))
	case 1:
	default:
		var where []string
		for _, c := range cmds {
			where = append(where, c.file)
		}
		return nil, fmt.Errorf("unit %s has %d ExecStart commands (from %s); a service runs one: a drop-in that replaces it must reset it with an empty ExecStart= first",
			unit, len(cmds), strings.Join(where, ", "))
	}
	argv, err := splitExecStart(cmds[0].value)
	if err != nil {
		return nil, fmt.Errorf("ExecStart of unit %s in %s: %w", unit, cmds[0].file, err)
	}
	return argv, nil
}

// serviceValues returns the values of key in the [Service] sections of a unit file,
// in order. Lines ending in a backslash continue on the next line.
func serviceValues(unit, key string) []string {
	var out []string
	section := ""
	lines := strings.Split(unit, "\n")
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[i])
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && section == "Service" && strings.TrimSpace(k) == key {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// splitExecStart splits a command line as systemd does, simplified: words separated
// by white space, double or single quotes around a word or part of one, and
// backslash escaping the next character.
func splitExecStart(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("empty command")
	}
	if strings.ContainsAny(s[:1], "-@+!:") {
		return nil, fmt.Errorf("command prefix %q is not supported by the lab: %s", s[:1], s)
	}
	var (
		words  []string
		word   strings.Builder
		inWord bool
		quote  byte
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("trailing backslash: %s", s)
			}
			i++
			word.WriteByte(s[i])
			inWord = true
		case quote != 0:
			if c == quote {
				quote = 0
			} else if err := literal(&word, s, &i); err != nil {
				return nil, err
			}
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		default:
			if err := literal(&word, s, &i); err != nil {
				return nil, err
			}
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote: %s", quote, s)
	}
	if inWord {
		words = append(words, word.String())
	}
	if len(words) == 0 || !filepath.IsAbs(words[0]) {
		return nil, errors.New("the program must be an absolute path: " + s)
	}
	return words, nil
}

// literal writes s[*i] to w, but refuses a specifier or a variable, which the lab
// does not expand; %% and $$ are written as one % or $.
func literal(w *strings.Builder, s string, i *int) error {
	c := s[*i]
	if c != '%' && c != '$' {
		w.WriteByte(c)
		return nil
	}
	if *i+1 < len(s) && s[*i+1] == c {
		w.WriteByte(c)
		*i++
		return nil
	}
	what := "specifier"
	if c == '$' {
		what = "variable"
	}
	return fmt.Errorf("%s at %q is not supported by the lab (write %c%c for a literal %c): %s", what, s[*i:min(len(s), *i+8)], c, c, c, s)
}
