// Package systemd is what the installer needs of systemd: the containerd unit's
// ExecStart as its files and drop-ins define it, a drop-in that runs another
// binary with the same arguments, and a restart of the unit.
package systemd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"

	"github.com/hopless/hopless/install/hostfs"
)

// UnitDirs are where unit files live, the first found winning, as systemd orders them.
// /usr/local/lib/systemd/system is where containerd's release tarball puts its unit.
func UnitDirs() []string {
	return []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}
}

// DropInDir is where the installer's drop-in for unit goes.
func DropInDir(unit string) string { return "/etc/systemd/system/" + unit + ".d" }

// ExecStart is the unit's effective ExecStart (split into words) on the node,
// reading the unit file and then its drop-ins in name order; skip names a drop-in
// left out, the installer's own. It fails when the unit is not found or does not end
// with exactly one ExecStart.
func ExecStart(root hostfs.Root, unit, skip string) ([]string, error) {
	var unitFile string
	for _, d := range UnitDirs() {
		p, err := root.Path(filepath.Join(d, unit))
		if err != nil {
			return nil, err
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			unitFile = p
			break
		}
	}
	if unitFile == "" {
		return nil, fmt.Errorf("unit %s not found on the node in %s", unit, strings.Join(UnitDirs(), ", "))
	}
	files := []string{unitFile}
	var dropIns []string
	for _, d := range UnitDirs() {
		p, err := root.Path(filepath.Join(d, unit+".d"))
		if err != nil {
			return nil, err
		}
		ents, err := os.ReadDir(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading drop-ins of %s: %w", unit, err)
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".conf") && e.Name() != skip && !slices.ContainsFunc(dropIns, func(s string) bool { return filepath.Base(s) == e.Name() }) {
				dropIns = append(dropIns, filepath.Join(p, e.Name()))
			}
		}
	}
	slices.SortFunc(dropIns, func(a, b string) int { return strings.Compare(filepath.Base(a), filepath.Base(b)) })
	files = append(files, dropIns...)
	var execs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f, err)
		}
		execs = applyExecStart(execs, b)
	}
	if len(execs) != 1 {
		return nil, fmt.Errorf("unit %s has %d ExecStart lines after its drop-ins, want 1", unit, len(execs))
	}
	return SplitCommand(execs[0])
}

// applyExecStart applies the ExecStart lines of one unit file's [Service] section
// to execs: an empty one resets the list.
func applyExecStart(execs []string, b []byte) []string {
	section := ""
	for _, l := range unitLines(b) {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
			continue
		case strings.HasPrefix(l, "["):
			section = l
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || section != "[Service]" || strings.TrimSpace(k) != "ExecStart" {
			continue
		}
		v = strings.TrimSpace(v)
		if v == "" {
			execs = nil
		} else {
			execs = append(execs, v)
		}
	}
	return execs
}

// unitLines are the logical lines of a unit file, as systemd reads them: a line
// that ends in an unescaped backslash goes on with the next one, the backslash
// turned into a space, and comment lines inside such a continuation are dropped.
func unitLines(b []byte) []string {
	var out []string
	var cont strings.Builder
	continued := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := sc.Text()
		t := strings.TrimSpace(l)
		comment := strings.HasPrefix(t, "#") || strings.HasPrefix(t, ";")
		if comment && continued {
			continue
		}
		if n := len(t) - len(strings.TrimRight(t, `\`)); !comment && n%2 == 1 {
			cont.WriteString(t[:len(t)-1] + " ")
			continued = true
			continue
		}
		out = append(out, cont.String()+l)
		cont.Reset()
		continued = false
	}
	if continued {
		out = append(out, cont.String())
	}
	return out
}

// SplitCommand splits an ExecStart value into words as systemd does: spaces
// separate them, double or single quotes group them, and a backslash escapes the
// next character (C-style: \t, \n, \s for a space, \\, \", \'). systemd's prefixes
// (-, @, +, !, :) are refused, as the installer would have to carry their meaning
// over, and so is an escape it does not read.
func SplitCommand(s string) ([]string, error) {
	if s != "" && strings.ContainsAny(s[:1], "-@+!:") {
		return nil, fmt.Errorf("ExecStart %q has a prefix the installer does not carry over", s)
	}
	var out []string
	var cur strings.Builder
	inWord, escaped := false, false
	var quote rune
	for _, r := range s {
		switch {
		case escaped:
			u, ok := unescape[r]
			if !ok {
				return nil, fmt.Errorf("ExecStart %q has an escape \\%c the installer does not read", s, r)
			}
			cur.WriteRune(u)
			escaped = false
		case r == '\\':
			escaped, inWord = true, true
		case quote != 0 && r == quote:
			quote = 0
		case quote == 0 && (r == '"' || r == '\''):
			quote, inWord = r, true
		case quote == 0 && (r == ' ' || r == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("ExecStart %q has an unclosed quote", s)
	}
	if escaped {
		return nil, fmt.Errorf("ExecStart %q ends in a backslash", s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	if len(out) == 0 || !filepath.IsAbs(out[0]) {
		return nil, fmt.Errorf("ExecStart %q does not start with an absolute path", s)
	}
	return out, nil
}

// unescape maps the character after a backslash to what it stands for.
var unescape = map[rune]rune{
	'a': '\a', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t', 'v': '\v', 's': ' ',
	'\\': '\\', '"': '"', '\'': '\'',
}

// DropIn is a drop-in that resets ExecStart to argv.
func DropIn(argv []string) []byte {
	words := make([]string, len(argv))
	for i, w := range argv {
		if w == "" || strings.ContainsAny(w, " \t\"'\\") {
			w = strconv.Quote(w)
		}
		words[i] = w
	}
	return []byte("# Written by hopless-install: containerd runs hopless's build, with the unit's own arguments.\n" +
		"# hopless-install uninstall removes this file.\n[Service]\nExecStart=\nExecStart=" + strings.Join(words, " ") + "\n")
}

// Restarter restarts containerd after its files changed.
type Restarter interface {
	Restart(ctx context.Context) error
	String() string
}

// DBus restarts a unit through systemd's private D-Bus socket of the node (there is
// no need for a bus daemon), after a daemon-reload so that drop-ins take effect.
type DBus struct {
	// Socket is the node's /run/systemd/private, resolved under the host root.
	Socket string
	Unit   string
}

func (d DBus) String() string { return "systemd (" + d.Unit + " through " + d.Socket + ")" }

// Restart reloads systemd and restarts the unit, waiting for the job to finish.
func (d DBus) Restart(ctx context.Context) error {
	conn, err := sddbus.NewConnection(func() (*godbus.Conn, error) {
		c, err := godbus.Dial("unix:path="+d.Socket, godbus.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			_ = c.Close()
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return fmt.Errorf("connecting to systemd at %s: %w", d.Socket, err)
	}
	defer conn.Close()
	if err := conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemd daemon-reload: %w", err)
	}
	done := make(chan string, 1)
	if _, err := conn.RestartUnitContext(ctx, d.Unit, "replace", done); err != nil {
		return fmt.Errorf("restarting %s: %w", d.Unit, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("restarting %s: systemd's job ended %q", d.Unit, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("restarting %s: %w", d.Unit, ctx.Err())
	}
}

// Command restarts containerd by running a command, for nodes without systemd.
type Command struct {
	Argv []string
}

func (c Command) String() string { return "command " + strconv.Quote(strings.Join(c.Argv, " ")) }

// Restart runs the command; a non-zero exit is an error carrying its output.
func (c Command) Restart(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("restart command %q: %w: %s", strings.Join(c.Argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
