package hostfstest

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestTreeAndDiff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(dir string) error
		skip   []string
		except []string
		want   []string
	}{
		{name: "unchanged", change: func(string) error { return nil }},
		{name: "content", change: func(d string) error { return os.WriteFile(filepath.Join(d, "etc", "a"), []byte("b"), 0o644) },
			want: []string{"changed /etc/a: -rw-r--r-- 3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d, was -rw-r--r-- ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}},
		{name: "mode", change: func(d string) error { return os.Chmod(filepath.Join(d, "etc", "a"), 0o600) },
			want: []string{"changed /etc/a: -rw------- ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb, was -rw-r--r-- ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}},
		{name: "extra and missing", change: func(d string) error {
			if err := os.Remove(filepath.Join(d, "etc", "a")); err != nil {
				return err
			}
			return os.Mkdir(filepath.Join(d, "opt"), 0o755)
		}, want: []string{"extra /opt", "missing /etc/a"}},
		{name: "link", change: func(d string) error {
			if err := os.Remove(filepath.Join(d, "run")); err != nil {
				return err
			}
			return os.Symlink("/elsewhere", filepath.Join(d, "run"))
		}, want: []string{"changed /run: Lrwxrwxrwx /elsewhere, was Lrwxrwxrwx /etc"}},
		{name: "skipped", change: func(d string) error { return os.WriteFile(filepath.Join(d, "var", "lib", "x"), nil, 0o644) },
			skip: []string{"/var/lib"}},
		{name: "except only needs the path", change: func(d string) error { return os.WriteFile(filepath.Join(d, "etc", "a"), []byte("c"), 0o644) },
			except: []string{"/etc/a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := t.TempDir()
			for _, p := range []string{"etc", "var/lib"} {
				if err := os.MkdirAll(filepath.Join(d, p), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(d, "etc", "a"), []byte("a"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(d, "etc", "a"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("/etc", filepath.Join(d, "run")); err != nil {
				t.Fatal(err)
			}
			before, err := Tree(d, tc.skip...)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := before["/etc/a"]; !ok || before["/"] != "" {
				t.Fatalf("Tree = %v, want node paths below the root", before)
			}
			if err := tc.change(d); err != nil {
				t.Fatal(err)
			}
			after, err := Tree(d, tc.skip...)
			if err != nil {
				t.Fatal(err)
			}
			if got := Diff(before, after, tc.except...); !slices.Equal(got, tc.want) {
				t.Errorf("Diff = %q, want %q", got, tc.want)
			}
		})
	}
}
