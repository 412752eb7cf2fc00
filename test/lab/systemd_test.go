package lab

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestUnitExecStart(t *testing.T) {
	unit := "[Unit]\nDescription=x\nExecStart=/not/in/service\n\n[Service]\nType=notify\nExecStart=/usr/local/bin/containerd\n"
	for _, tc := range []struct {
		name    string
		dropins map[string]string
		want    []string
		err     string
	}{
		{name: "unit alone", want: []string{"/usr/local/bin/containerd"}},
		{name: "reset and replace", dropins: map[string]string{
			"50-hopless.conf": "[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd --config /etc/containerd/config.toml\n",
		}, want: []string{"/opt/hopless/bin/containerd", "--config", "/etc/containerd/config.toml"}},
		{name: "lexical order, the later drop-in wins", dropins: map[string]string{
			"90-late.conf":  "[Service]\nExecStart=\nExecStart=/late\n",
			"10-early.conf": "[Service]\nExecStart=\nExecStart=/early\n",
		}, want: []string{"/late"}},
		{name: "only .conf files count", dropins: map[string]string{
			"50-hopless.conf.bak": "[Service]\nExecStart=\nExecStart=/backup\n",
		}, want: []string{"/usr/local/bin/containerd"}},
		{name: "another section's ExecStart is not the service's", dropins: map[string]string{
			"50-x.conf": "[Install]\nExecStart=\n",
		}, want: []string{"/usr/local/bin/containerd"}},
		{name: "a second ExecStart without a reset", dropins: map[string]string{
			"50-hopless.conf": "[Service]\nExecStart=/opt/hopless/bin/containerd\n",
		}, err: "has 2 ExecStart lines"},
		{name: "a reset alone", dropins: map[string]string{
			"50-hopless.conf": "[Service]\nExecStart=\n",
		}, err: "has 0 ExecStart lines"},
		{name: "comments and continuation lines", dropins: map[string]string{
			"50-hopless.conf": "# a comment\n[Service]\n; ExecStart=/commented\nExecStart=\nExecStart = /opt/hopless/bin/containerd \\\n  --config /etc/containerd/config.toml\n",
		}, want: []string{"/opt/hopless/bin/containerd", "--config", "/etc/containerd/config.toml"}},
		{name: "a prefix", dropins: map[string]string{
			"50-hopless.conf": "[Service]\nExecStart=\nExecStart=-/opt/hopless/bin/containerd\n",
		}, err: "prefix"},
		{name: "a variable", dropins: map[string]string{
			"50-x.conf": "[Service]\nExecStart=\nExecStart=/opt/hopless/bin/containerd $OPTS\n",
		}, err: "expansion"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := writeFile(filepath.Join(root, HostContainerdUnit), []byte(unit), 0o644); err != nil {
				t.Fatal(err)
			}
			for name, body := range tc.dropins {
				if err := writeFile(filepath.Join(root, HostContainerdUnit+".d", name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := UnitExecStart(root, ContainerdUnit)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := UnitExecStart(t.TempDir(), ContainerdUnit); err == nil || !strings.Contains(err.Error(), ContainerdUnit) {
		t.Errorf("a missing unit: %v, want an error naming it", err)
	}
}

func TestMountsUnder(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	body := `22 27 0:21 / /proc rw,relatime - proc proc rw
90 27 0:21 / /tmp/root/proc rw,relatime - proc proc rw
91 27 0:22 / /tmp/root/my\040dir rw - tmpfs tmpfs rw
92 27 0:23 / /tmp/rootless rw - tmpfs tmpfs rw
93 27 0:24 / /tmp/root rw - tmpfs tmpfs rw
`
	if err := os.WriteFile(mi, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := mountsUnder(mi, "/tmp/root/")
	want := []string{"/tmp/root/proc", "/tmp/root/my dir", "/tmp/root"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("mountsUnder = %q, %v; want %q", got, err, want)
	}
}
