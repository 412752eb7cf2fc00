package ctrconf

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"

	"github.com/hopless/hopless/install/hostfs"
)

const (
	configPath = "/etc/containerd/config.toml"
	dropIn     = "/etc/containerd/conf.d/50-hopless.toml"
	glob       = "/etc/containerd/conf.d/*.toml"
)

func TestParseMain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		text    string
		want    Main
		wantErr string
	}{
		{
			name:    "version 2",
			text:    "version = 2\n[plugins.'io.containerd.grpc.v1.cri']\n",
			wantErr: configPath + " is config version 2; hopless needs version 3 or later: run `containerd config migrate` on it first",
		},
		{
			name:    "no version is version 1",
			text:    "imports = ['/a.toml']\n",
			wantErr: configPath + " is config version 1; hopless needs version 3 or later: run `containerd config migrate` on it first",
		},
		{
			name: "version 3",
			text: "version = 3\nimports = ['/a/*.toml', 'b.toml']\n[plugins.'x']\n  imports = ['/not/top']\n",
			want: Main{Version: 3, Imports: []string{"/a/*.toml", "b.toml"}},
		},
		{
			name: "version 4",
			text: "version = 4\n",
			want: Main{Version: 4},
		},
		{
			name:    "not TOML",
			text:    "version = 3\n[plugins\n",
			wantErr: configPath + " is not valid TOML: ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseMain(configPath, []byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("ParseMain = %+v, %v; want error %q", got, err, tt.wantErr)
				}
				if !reflect.DeepEqual(got, Main{}) {
					t.Errorf("ParseMain returned %+v with its error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseMain = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestImports(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		imports []string
		want    bool
	}{
		{"none", nil, false},
		{"absolute glob", []string{glob}, true},
		{"relative glob, against the config's directory", []string{"conf.d/*.toml"}, true},
		{"relative glob with dot-dot", []string{"../containerd/conf.d/*.toml"}, true},
		{"unclean absolute glob", []string{"/etc/containerd//conf.d/./*.toml"}, true},
		{"exact path", []string{dropIn}, true},
		{"relative exact path", []string{"conf.d/50-hopless.toml"}, true},
		{"glob of another suffix", []string{"/etc/containerd/conf.d/*.conf"}, false},
		{"glob of another directory", []string{"/etc/containerd/*.toml"}, false},
		{"relative glob of the wrong directory", []string{"*.toml"}, false},
		{"exact path of another file", []string{"/etc/containerd/conf.d/49-other.toml"}, false},
		{"second import matches", []string{"/etc/other/*.toml", "conf.d/*"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := Imports(Main{Version: 3, Imports: tt.imports}, configPath, dropIn); got != tt.want {
				t.Errorf("Imports(%q) = %v, want %v", tt.imports, got, tt.want)
			}
		})
	}
}

func TestAddImport(t *testing.T) {
	t.Parallel()
	const rest = "\n# the node's own settings\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n"
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{
			name: "no imports: the line is prepended, the rest byte-identical",
			in:   "version = 3\n" + rest,
			want: "# imports added by hopless-install\nimports = ['" + glob + "']\nversion = 3\n" + rest,
		},
		{
			name: "single-line imports: the glob appended",
			in:   "version = 3\nimports = ['/a/*.toml']\n" + rest,
			want: "version = 3\nimports = ['/a/*.toml', '" + glob + "']\n" + rest,
		},
		{
			name: "two imports, double quotes, trailing comma",
			in:   "version = 3\nimports = [\"/a.toml\", \"/b/*.toml\", ]\n" + rest,
			want: "version = 3\nimports = [\"/a.toml\", \"/b/*.toml\", '" + glob + "']\n" + rest,
		},
		{
			name: "empty imports",
			in:   "version = 3\nimports = []\n" + rest,
			want: "version = 3\nimports = ['" + glob + "']\n" + rest,
		},
		{
			name: "imports with a trailing comment",
			in:   "version = 3\n  imports=['/a/*.toml']   # mine\n" + rest,
			want: "version = 3\n  imports=['/a/*.toml', '" + glob + "']   # mine\n" + rest,
		},
		{
			name: "a trailing comment holding brackets",
			in:   "version = 3\nimports = ['/a/[ab]*.toml'] # see [docs]\n" + rest,
			want: "version = 3\nimports = ['/a/[ab]*.toml', '" + glob + "'] # see [docs]\n" + rest,
		},
		{
			name: "CRLF line endings kept",
			in:   "version = 3\r\nimports = ['/a.toml']\r\n[plugins.'x']\r\n",
			want: "version = 3\r\nimports = ['/a.toml', '" + glob + "']\r\n[plugins.'x']\r\n",
		},
		{
			name:    "multi-line imports",
			in:      "version = 3\nimports = [\n  '/a/*.toml',\n]\n" + rest,
			wantErr: configPath + ": its imports array spans several lines; add '" + glob + "' to it by hand",
		},
		{
			name: "a plugin table's own imports key is not the top-level key",
			in:   "version = 3\n[plugins.'io.containerd.x']\n  imports = ['/p.toml']\n",
			want: "# imports added by hopless-install\nimports = ['" + glob + "']\nversion = 3\n[plugins.'io.containerd.x']\n  imports = ['/p.toml']\n",
		},
		{
			name: "imports key in a plugin table, top-level imports edited",
			in:   "version = 3\nimports = ['/a.toml']\n[plugins.'io.containerd.x']\n  imports = ['/p.toml']\n",
			want: "version = 3\nimports = ['/a.toml', '" + glob + "']\n[plugins.'io.containerd.x']\n  imports = ['/p.toml']\n",
		},
		{
			name:    "quoted imports key",
			in:      "version = 3\n\"imports\" = ['/a.toml']\n",
			wantErr: configPath + ": found no single-line imports array to add '" + glob + "' to; add it by hand",
		},
		{
			name:    "version 2",
			in:      "version = 2\n",
			wantErr: configPath + " is config version 2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := AddImport(configPath, []byte(tt.in), glob)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("AddImport = %q, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("AddImport =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// hostRoot makes a host root holding files (node path -> content).
func hostRoot(t *testing.T, files map[string]string) hostfs.Root {
	t.Helper()
	dir := t.TempDir()
	for p, text := range files {
		f := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return hostfs.Root{Dir: dir}
}

const mainText = `version = 3
imports = ['conf.d/*.toml']
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
`

func TestLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ourDropIn := []byte("version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n")
	tests := []struct {
		name    string
		files   map[string]string
		main    string
		data    []byte
		check   func(t *testing.T, cfg *srvconfig.Config)
		wantErr string
	}{
		{
			name: "the drop-in merged deep into the plugin table",
			data: ourDropIn,
			check: func(t *testing.T, cfg *srvconfig.Config) {
				images := Section(cfg, CRIImages)
				if images["snapshotter"] != "native" {
					t.Errorf("snapshotter = %v, want main's native kept", images["snapshotter"])
				}
				if got := ConfigPath(cfg); got != "/etc/containerd/certs.d" {
					t.Errorf("config_path = %q, want the drop-in's", got)
				}
			},
		},
		{
			name:  "the planned drop-in replaces the file on the node",
			files: map[string]string{dropIn: "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/old'\n"},
			data:  ourDropIn,
			check: func(t *testing.T, cfg *srvconfig.Config) {
				if got := ConfigPath(cfg); got != "/etc/containerd/certs.d" {
					t.Errorf("config_path = %q, want the planned drop-in's", got)
				}
			},
		},
		{
			name:  "nil DropInData leaves the drop-in on the node out",
			files: map[string]string{dropIn: string(ourDropIn)},
			check: func(t *testing.T, cfg *srvconfig.Config) {
				if got := ConfigPath(cfg); got != "" {
					t.Errorf("config_path = %q, want none: the drop-in is left out", got)
				}
				if images := Section(cfg, CRIImages); images["snapshotter"] != "native" {
					t.Errorf("snapshotter = %v, want native", images["snapshotter"])
				}
			},
		},
		{
			name: "other imported files merged in name order, the drop-in in its place",
			files: map[string]string{
				"/etc/containerd/conf.d/10-a.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'a'\n  stats_collect_period = 5\n",
				"/etc/containerd/conf.d/90-z.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'z'\n",
			},
			data: []byte("version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'hopless'\n  stats_collect_period = 7\n"),
			check: func(t *testing.T, cfg *srvconfig.Config) {
				images := Section(cfg, CRIImages)
				if images["snapshotter"] != "z" {
					t.Errorf("snapshotter = %v, want 90-z's, merged last", images["snapshotter"])
				}
				if v, _ := images["stats_collect_period"].(int64); v != 7 {
					t.Errorf("stats_collect_period = %v, want the drop-in's 7, merged after 10-a", images["stats_collect_period"])
				}
			},
		},
		{
			name:  "staged files ignored",
			files: map[string]string{"/etc/containerd/conf.d/" + hostfs.TempPrefix + "x.toml": "not [ TOML"},
			data:  ourDropIn,
			check: func(t *testing.T, cfg *srvconfig.Config) {
				if got := ConfigPath(cfg); got != "/etc/containerd/certs.d" {
					t.Errorf("config_path = %q", got)
				}
			},
		},
		{
			name: "an exact import of the drop-in",
			main: "version = 3\nimports = ['" + dropIn + "']\n",
			data: ourDropIn,
			check: func(t *testing.T, cfg *srvconfig.Config) {
				if got := ConfigPath(cfg); got != "/etc/containerd/certs.d" {
					t.Errorf("config_path = %q", got)
				}
			},
		},
		{
			name:    "a drop-in that is not TOML",
			data:    []byte("version = 3\n[plugins\n"),
			wantErr: "containerd would not load " + configPath + " with its imports: ",
		},
		{
			name:    "another imported file that is not TOML",
			files:   map[string]string{"/etc/containerd/conf.d/10-bad.toml": "= 1\n"},
			data:    ourDropIn,
			wantErr: "containerd would not load " + configPath + " with its imports: ",
		},
		{
			name:    "main version 2",
			main:    "version = 2\n",
			wantErr: configPath + " is config version 2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			main := tt.main
			if main == "" {
				main = mainText
			}
			root := hostRoot(t, tt.files)
			cfg, err := Load(ctx, Candidate{Root: root, ConfigPath: configPath, Main: []byte(main), DropIn: dropIn, DropInData: tt.data})
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("Load: %v, want error %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}

// loadText merges config.toml text (and imported files on a host root) with no
// drop-in.
func loadText(t *testing.T, main string, files map[string]string) *srvconfig.Config {
	t.Helper()
	cfg, err := Load(context.Background(), Candidate{Root: hostRoot(t, files), ConfigPath: configPath, Main: []byte(main), DropIn: dropIn})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestCheckInprocess(t *testing.T) {
	t.Parallel()
	const hopless = "\n[plugins.'io.containerd.hopless.v1.hopless']\n  node_config = '/etc/hopless/node.toml'\n"
	tests := []struct {
		name    string
		main    string
		files   map[string]string
		wantErr string
	}{
		{
			name: "ok",
			main: "version = 3\n" + hopless,
		},
		{
			name: "ok, with transfer-service defaults set",
			main: "version = 3\n" + hopless + "[plugins.'io.containerd.cri.v1.images']\n  disable_snapshot_annotations = true\n  max_concurrent_downloads = 3\n",
		},
		{
			name:    "no hopless section",
			main:    "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n",
			wantErr: "N: the merged config has no [plugins.'io.containerd.hopless.v1.hopless'] section",
		},
		{
			name:    "disabled_plugins lists the hopless plugin",
			main:    "version = 3\ndisabled_plugins = ['io.containerd.hopless.v1.hopless']\n" + hopless,
			wantErr: "N: disabled_plugins lists io.containerd.hopless.v1.hopless; remove it",
		},
		{
			name: "a local-pull trigger named",
			main: "version = 3\n" + hopless + "[plugins.'io.containerd.cri.v1.images']\n  use_local_image_pull = true\n",
			wantErr: "N: [plugins.'io.containerd.cri.v1.images'] sets use_local_image_pull = true: " +
				"CRI would pull through its local path, past hopless; remove these settings",
		},
		{
			name:  "triggers from an imported file, every one named",
			main:  "version = 3\nimports = ['conf.d/*.toml']\n" + hopless,
			files: map[string]string{"/etc/containerd/conf.d/10-x.toml": "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  discard_unpacked_layers = true\n  max_concurrent_downloads = 8\n"},
			wantErr: "N: [plugins.'io.containerd.cri.v1.images'] sets discard_unpacked_layers = true, max_concurrent_downloads = 8 (not 3): " +
				"CRI would pull",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckInprocess(loadText(t, tt.main, tt.files), "N")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("CheckInprocess: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckNRI(t *testing.T) {
	t.Parallel()
	const registry = "\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d'\n"
	tests := []struct {
		name    string
		main    string
		wantErr string
	}{
		{
			name: "ok",
			main: "version = 3\n" + registry,
		},
		{
			name: "NRI enabled explicitly",
			main: "version = 3\n[plugins.'io.containerd.nri.v1.nri']\n  disable = false\n" + registry,
		},
		{
			name:    "NRI in disabled_plugins",
			main:    "version = 3\ndisabled_plugins = ['io.containerd.nri.v1.nri']\n" + registry,
			wantErr: "N: NRI (io.containerd.nri.v1.nri) is disabled; hopless-nri needs it",
		},
		{
			name:    "NRI disable = true",
			main:    "version = 3\n[plugins.'io.containerd.nri.v1.nri']\n  disable = true\n" + registry,
			wantErr: "N: NRI (io.containerd.nri.v1.nri) is disabled; hopless-nri needs it",
		},
		{
			name:    "no config_path",
			main:    "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n",
			wantErr: "N: [plugins.'io.containerd.cri.v1.images'.registry] has no config_path: containerd would read no hosts.toml",
		},
		{
			name:    "two directories",
			main:    "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = 'a:b'\n",
			wantErr: `N: [plugins.'io.containerd.cri.v1.images'.registry] config_path "a:b" lists several directories; hopless-nri needs one`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckNRI(loadText(t, tt.main, nil), "N")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("CheckNRI: %v, want %q", err, tt.wantErr)
			}
		})
	}
}
