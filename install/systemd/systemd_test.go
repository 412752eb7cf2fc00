package systemd

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hopless/hopless/install/hostfs"
)

const unit = "containerd.service"

// writeRoot makes a host root holding files (node path -> content); a content
// starting with "->" makes a symlink to the rest.
func writeRoot(t *testing.T, files map[string]string) hostfs.Root {
	t.Helper()
	dir := t.TempDir()
	for p, text := range files {
		f := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(text, "->"); ok {
			if err := os.Symlink(target, f); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return hostfs.Root{Dir: dir}
}

const (
	libUnit = "/lib/systemd/system/containerd.service"
	etcD    = "/etc/systemd/system/containerd.service.d/"
	stock   = "[Unit]\nDescription=containerd\n\n[Service]\nExecStartPre=-/sbin/modprobe overlay\nExecStart=/usr/bin/containerd\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n"
)

func TestExecStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		files   map[string]string
		skip    string
		want    []string
		wantErr string
	}{
		{
			name:  "unit in /lib/systemd/system",
			files: map[string]string{libUnit: stock},
			want:  []string{"/usr/bin/containerd"},
		},
		{
			name:  "unit in /usr/local/lib/systemd/system, where containerd's tarball puts it",
			files: map[string]string{"/usr/local/lib/systemd/system/containerd.service": stock},
			want:  []string{"/usr/bin/containerd"},
		},
		{
			name: "/etc's unit wins over /lib's",
			files: map[string]string{
				libUnit:                                  stock,
				"/etc/systemd/system/containerd.service": "[Service]\nExecStart=/usr/local/bin/containerd --etc\n",
			},
			want: []string{"/usr/local/bin/containerd", "--etc"},
		},
		{
			name: "drop-ins in name order, an empty ExecStart= resets",
			files: map[string]string{
				libUnit:               stock,
				etcD + "20-b.conf":    "[Service]\nExecStart=\nExecStart=/b/containerd --b\n",
				etcD + "10-a.conf":    "[Service]\nExecStart=\nExecStart=/a/containerd --a\n",
				etcD + "30-env.conf":  "[Service]\nEnvironment=X=1\n",
				etcD + "README":       "[Service]\nExecStart=/not/a/drop-in\n",
				etcD + "15-x.conf.bk": "[Service]\nExecStart=/not/a/drop-in\n",
			},
			want: []string{"/b/containerd", "--b"},
		},
		{
			name: "drop-ins of every directory in one name order, /etc's winning a name",
			files: map[string]string{
				libUnit: stock,
				"/lib/systemd/system/containerd.service.d/40-x.conf": "[Service]\nExecStart=\nExecStart=/lib/x\n",
				"/lib/systemd/system/containerd.service.d/10-a.conf": "[Service]\nExecStart=\nExecStart=/lib/a\n",
				etcD + "40-x.conf": "[Service]\nExecStart=\nExecStart=/etc/x\n",
				"/run/systemd/system/containerd.service.d/30-run.conf": "[Service]\nExecStart=\nExecStart=/run/containerd\n",
			},
			want: []string{"/etc/x"},
		},
		{
			name: "skip leaves the installer's drop-in out",
			files: map[string]string{
				libUnit:                  stock,
				etcD + "50-hopless.conf": "[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd\n",
			},
			skip: "50-hopless.conf",
			want: []string{"/usr/bin/containerd"},
		},
		{
			name: "without skip the installer's drop-in counts",
			files: map[string]string{
				libUnit:                  stock,
				etcD + "50-hopless.conf": "[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd\n",
			},
			want: []string{"/opt/hopless/bin/containerd"},
		},
		{
			name: "ExecStart outside [Service] ignored",
			files: map[string]string{
				libUnit: "[Unit]\nExecStart=/unit\n[Service]\n# ExecStart=/comment\n; ExecStart=/comment\nExecStart = /usr/bin/containerd  --x\n[X-Other]\nExecStart=/other\n",
			},
			want: []string{"/usr/bin/containerd", "--x"},
		},
		{
			name: "a continued line",
			files: map[string]string{
				libUnit: "[Service]\nExecStart=/usr/bin/containerd \\\n  --config /etc/c.toml \\\n# a comment inside\n  --log-level debug\nRestart=always\n",
			},
			want: []string{"/usr/bin/containerd", "--config", "/etc/c.toml", "--log-level", "debug"},
		},
		{
			name: "an escaped backslash at the end does not continue",
			files: map[string]string{
				libUnit: "[Service]\nExecStart=/usr/bin/containerd --x \\\\\nRestart=always\n",
			},
			want: []string{"/usr/bin/containerd", "--x", `\`},
		},
		{
			name: "two ExecStart lines without a reset",
			files: map[string]string{
				libUnit:          stock,
				etcD + "10.conf": "[Service]\nExecStart=/usr/bin/containerd --again\n",
			},
			wantErr: "unit containerd.service has 2 ExecStart lines after its drop-ins, want 1",
		},
		{
			name: "a reset without a new ExecStart",
			files: map[string]string{
				libUnit:          stock,
				etcD + "10.conf": "[Service]\nExecStart=\n",
			},
			wantErr: "unit containerd.service has 0 ExecStart lines after its drop-ins, want 1",
		},
		{
			name:    "missing unit",
			files:   map[string]string{"/lib/systemd/system/docker.service": stock},
			wantErr: "unit containerd.service not found on the node in /etc/systemd/system, /run/systemd/system, /usr/local/lib/systemd/system, /usr/lib/systemd/system, /lib/systemd/system",
		},
		{
			name: "a symlinked /etc/systemd/system resolved inside the root",
			files: map[string]string{
				"/etc/systemd/system":                       "->/srv/units",
				"/srv/units/containerd.service":             "[Service]\nExecStart=/srv/containerd\n",
				"/srv/units/containerd.service.d/10-a.conf": "[Service]\nExecStart=\nExecStart=/srv/containerd --dropin\n",
			},
			want: []string{"/srv/containerd", "--dropin"},
		},
		{
			name: "a unit symlinked with an absolute link, resolved inside the root",
			files: map[string]string{
				"/etc/systemd/system/containerd.service": "->/opt/units/containerd.service",
				"/opt/units/containerd.service":          "[Service]\nExecStart=/opt/containerd\n",
			},
			want: []string{"/opt/containerd"},
		},
		{
			name:    "a prefix refused",
			files:   map[string]string{libUnit: "[Service]\nExecStart=-/usr/bin/containerd\n"},
			wantErr: `ExecStart "-/usr/bin/containerd" has a prefix the installer does not carry over`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ExecStart(writeRoot(t, tt.files), unit, tt.skip)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ExecStart = %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ExecStart = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSplitCommand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "/usr/bin/containerd", want: []string{"/usr/bin/containerd"}},
		{in: "/usr/bin/containerd  --a\tb \t c  ", want: []string{"/usr/bin/containerd", "--a", "b", "c"}},
		{in: `/bin/c "a b" c`, want: []string{"/bin/c", "a b", "c"}},
		{in: `/bin/c 'a b' "it's" '"q"'`, want: []string{"/bin/c", "a b", "it's", `"q"`}},
		{in: `/bin/c --config="/etc/a b.toml"`, want: []string{"/bin/c", "--config=/etc/a b.toml"}},
		{in: `/bin/c "" x`, want: []string{"/bin/c", "", "x"}},
		{in: `/bin/c "a\"b" a\\b a\sb "\t"`, want: []string{"/bin/c", `a"b`, `a\b`, "a b", "\t"}},
		{in: `/bin/c "tab	inside"`, want: []string{"/bin/c", "tab\tinside"}},
		{in: "-/usr/bin/containerd", wantErr: "has a prefix the installer does not carry over"},
		{in: "@/usr/bin/containerd containerd", wantErr: "has a prefix the installer does not carry over"},
		{in: "+/usr/bin/containerd", wantErr: "has a prefix the installer does not carry over"},
		{in: "!/usr/bin/containerd", wantErr: "has a prefix the installer does not carry over"},
		{in: ":/usr/bin/containerd", wantErr: "has a prefix the installer does not carry over"},
		{in: "containerd --config x", wantErr: "does not start with an absolute path"},
		{in: `"" /bin/c`, wantErr: "does not start with an absolute path"},
		{in: "", wantErr: `ExecStart "" does not start with an absolute path`},
		{in: "   ", wantErr: "does not start with an absolute path"},
		{in: `/bin/c "a b`, wantErr: "has an unclosed quote"},
		{in: `/bin/c 'a b`, wantErr: "has an unclosed quote"},
		{in: `/bin/c a\`, wantErr: "ends in a backslash"},
		{in: `/bin/c \x41`, wantErr: `has an escape \x the installer does not read`},
	}
	for _, tt := range tests {
		got, err := SplitCommand(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SplitCommand(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestDropIn(t *testing.T) {
	t.Parallel()
	got := string(DropIn([]string{"/opt/hopless/bin/containerd", "--config", "/etc/a b.toml"}))
	want := "# Written by hopless-install: containerd runs hopless's build, with the unit's own arguments.\n" +
		"# hopless-install uninstall removes this file.\n[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd --config \"/etc/a b.toml\"\n"
	if got != want {
		t.Errorf("DropIn =\n%s\nwant\n%s", got, want)
	}
}

func TestDropInRoundTrip(t *testing.T) {
	t.Parallel()
	for _, argv := range [][]string{
		{"/opt/hopless/bin/containerd"},
		{"/opt/hopless/bin/containerd", "--config", "/etc/containerd/my config.toml"},
		{"/opt/hopless/bin/containerd", "--log-level", "debug", "a\tb", `q"uote`, `back\slash`, "it's", ""},
		{"/opt/hopless bin/containerd", "--x=a b"},
	} {
		root := writeRoot(t, map[string]string{
			libUnit:                  stock,
			etcD + "50-hopless.conf": string(DropIn(argv)),
		})
		got, err := ExecStart(root, unit, "")
		if err != nil {
			t.Errorf("ExecStart of DropIn(%q): %v\n%s", argv, err, DropIn(argv))
			continue
		}
		if !reflect.DeepEqual(got, argv) {
			t.Errorf("ExecStart of DropIn(%q) = %q\n%s", argv, got, DropIn(argv))
		}
	}
}

func TestCommandRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if err := (Command{Argv: []string{"true"}}).Restart(ctx); err != nil {
		t.Errorf("true: %v", err)
	}
	err := (Command{Argv: []string{"sh", "-c", "echo out; echo boom >&2; exit 3"}}).Restart(ctx)
	if err == nil {
		t.Fatal("exit 3: got no error")
	}
	if want := `restart command "sh -c echo out; echo boom >&2; exit 3": exit status 3: out` + "\nboom"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if err := (Command{Argv: []string{"/nonexistent/restart"}}).Restart(ctx); err == nil || !strings.Contains(err.Error(), "/nonexistent/restart") {
		t.Errorf("missing command: %v", err)
	}
	if s := (Command{Argv: []string{"systemctl", "restart", "containerd"}}).String(); s != `command "systemctl restart containerd"` {
		t.Errorf("String() = %q", s)
	}
}

func TestDropInDir(t *testing.T) {
	t.Parallel()
	if got := DropInDir("containerd.service"); got != "/etc/systemd/system/containerd.service.d" {
		t.Errorf("DropInDir = %q", got)
	}
}
