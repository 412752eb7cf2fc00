package crilocal

import (
	"reflect"
	"testing"

	"github.com/BurntSushi/toml"
)

// triggerCases are CRI images settings, as TOML (the body of
// [plugins.'io.containerd.cri.v1.images']) and as containerd encodes them in JSON,
// with the triggers they make on Linux and on Windows.
var triggerCases = []struct {
	name    string
	toml    string
	json    string
	linux   []Trigger
	windows []Trigger
}{
	{
		name: "empty section",
		toml: "",
		json: `{}`,
	},
	{
		name:    "use_local_image_pull",
		toml:    "use_local_image_pull = true\n",
		json:    `{"useLocalImagePull": true}`,
		linux:   []Trigger{{"use_local_image_pull", "true"}},
		windows: []Trigger{{"use_local_image_pull", "true"}},
	},
	{
		name: "use_local_image_pull false",
		toml: "use_local_image_pull = false\n",
		json: `{"useLocalImagePull": false}`,
	},
	{
		name:  "disable_snapshot_annotations false",
		toml:  "disable_snapshot_annotations = false\n",
		json:  `{"disableSnapshotAnnotations": false}`,
		linux: []Trigger{{"disable_snapshot_annotations", "false"}},
	},
	{
		name:    "disable_snapshot_annotations true",
		toml:    "disable_snapshot_annotations = true\n",
		json:    `{"disableSnapshotAnnotations": true}`,
		windows: []Trigger{{"disable_snapshot_annotations", "true"}},
	},
	{
		name:    "discard_unpacked_layers",
		toml:    "discard_unpacked_layers = true\n",
		json:    `{"discardUnpackedLayers": true}`,
		linux:   []Trigger{{"discard_unpacked_layers", "true"}},
		windows: []Trigger{{"discard_unpacked_layers", "true"}},
	},
	{
		name: "registry mirrors, configs and auths, keys sorted",
		toml: `[registry.mirrors."quay.io"]
endpoint = ["https://q"]
[registry.mirrors."docker.io"]
endpoint = ["https://d"]
[registry.configs."b.example".tls]
insecure_skip_verify = true
[registry.configs."a.example".auth]
username = "u"
[registry.auths."https://gcr.io"]
username = "u"
`,
		json: `{"registry": {"mirrors": {"quay.io": {"endpoint": ["https://q"]}, "docker.io": {"endpoint": ["https://d"]}},
			"configs": {"b.example": {"tls": {"insecure_skip_verify": true}}, "a.example": {"auth": {"username": "u"}}},
			"auths": {"https://gcr.io": {"username": "u"}}}}`,
		linux: []Trigger{
			{"registry.mirrors", `{"docker.io", "quay.io"}`},
			{"registry.configs", `{"a.example", "b.example"}`},
			{"registry.auths", `{"https://gcr.io"}`},
		},
		windows: []Trigger{
			{"registry.mirrors", `{"docker.io", "quay.io"}`},
			{"registry.configs", `{"a.example", "b.example"}`},
			{"registry.auths", `{"https://gcr.io"}`},
		},
	},
	{
		name: "registry config_path alone",
		toml: "[registry]\nconfig_path = \"/etc/containerd/certs.d\"\n",
		json: `{"registry": {"configPath": "/etc/containerd/certs.d", "mirrors": {}, "configs": null}}`,
	},
	{
		name:    "max_concurrent_downloads not 3",
		toml:    "max_concurrent_downloads = 10\n",
		json:    `{"maxConcurrentDownloads": 10}`,
		linux:   []Trigger{{"max_concurrent_downloads", "10 (not 3)"}},
		windows: []Trigger{{"max_concurrent_downloads", "10 (not 3)"}},
	},
	{
		name: "max_concurrent_downloads 3",
		toml: "max_concurrent_downloads = 3\n",
		json: `{"maxConcurrentDownloads": 3}`,
	},
	{
		name:    "max_concurrent_downloads 0",
		toml:    "max_concurrent_downloads = 0\n",
		json:    `{"maxConcurrentDownloads": 0}`,
		linux:   []Trigger{{"max_concurrent_downloads", "0 (not 3)"}},
		windows: []Trigger{{"max_concurrent_downloads", "0 (not 3)"}},
	},
	{
		name:    "image_pull_with_sync_fs",
		toml:    "image_pull_with_sync_fs = true\n",
		json:    `{"imagePullWithSyncFs": true}`,
		linux:   []Trigger{{"image_pull_with_sync_fs", "true"}},
		windows: []Trigger{{"image_pull_with_sync_fs", "true"}},
	},
	{
		name: "everything, in Settings order",
		toml: `image_pull_with_sync_fs = true
max_concurrent_downloads = 1
discard_unpacked_layers = true
disable_snapshot_annotations = false
use_local_image_pull = true
snapshotter = "overlayfs"
[registry.auths.x]
username = "u"
`,
		json: `{"imagePullWithSyncFs": true, "maxConcurrentDownloads": 1, "discardUnpackedLayers": true,
			"disableSnapshotAnnotations": false, "useLocalImagePull": true, "snapshotter": "overlayfs",
			"registry": {"auths": {"x": {"username": "u"}}}}`,
		linux: []Trigger{
			{"use_local_image_pull", "true"}, {"disable_snapshot_annotations", "false"}, {"discard_unpacked_layers", "true"},
			{"registry.auths", `{"x"}`}, {"max_concurrent_downloads", "1 (not 3)"}, {"image_pull_with_sync_fs", "true"},
		},
		windows: []Trigger{
			{"use_local_image_pull", "true"}, {"discard_unpacked_layers", "true"},
			{"registry.auths", `{"x"}`}, {"max_concurrent_downloads", "1 (not 3)"}, {"image_pull_with_sync_fs", "true"},
		},
	},
	{
		name: "the defaults containerd writes",
		toml: `disable_snapshot_annotations = true
discard_unpacked_layers = false
max_concurrent_downloads = 3
image_pull_with_sync_fs = false
use_local_image_pull = false
[registry]
config_path = ""
`,
		json: `{"disableSnapshotAnnotations": true, "discardUnpackedLayers": false, "maxConcurrentDownloads": 3,
			"imagePullWithSyncFs": false, "useLocalImagePull": false, "registry": {"configPath": ""}}`,
		windows: []Trigger{{"disable_snapshot_annotations", "true"}},
	},
}

func TestFromTOMLTriggers(t *testing.T) {
	t.Parallel()
	for _, tt := range triggerCases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			section := map[string]any{}
			if _, err := toml.Decode(tt.toml, &section); err != nil {
				t.Fatal(err)
			}
			c, err := FromTOML(section)
			if err != nil {
				t.Fatal(err)
			}
			if got := Triggers(c, "linux"); !reflect.DeepEqual(got, tt.linux) {
				t.Errorf("Triggers(linux) = %q, want %q", got, tt.linux)
			}
			if got := Triggers(c, "windows"); !reflect.DeepEqual(got, tt.windows) {
				t.Errorf("Triggers(windows) = %q, want %q", got, tt.windows)
			}
		})
	}
}

func TestFromJSONParity(t *testing.T) {
	t.Parallel()
	for _, tt := range triggerCases {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			section := map[string]any{}
			if _, err := toml.Decode(tt.toml, &section); err != nil {
				t.Fatal(err)
			}
			fromTOML, err := FromTOML(section)
			if err != nil {
				t.Fatal(err)
			}
			fromJSON, err := FromJSON([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			for _, goos := range []string{"linux", "windows"} {
				j, tm := Triggers(fromJSON, goos), Triggers(fromTOML, goos)
				if !reflect.DeepEqual(j, tm) {
					t.Errorf("%s: JSON triggers %q, TOML triggers %q", goos, j, tm)
				}
			}
		})
	}
}

func TestFromTOMLNil(t *testing.T) {
	t.Parallel()
	c, err := FromTOML(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Images{}) {
		t.Errorf("FromTOML(nil) = %+v, want the zero Images", c)
	}
	for _, goos := range []string{"linux", "windows"} {
		if tr := Triggers(c, goos); tr != nil {
			t.Errorf("Triggers(FromTOML(nil), %s) = %q, want none", goos, tr)
		}
	}
}

func TestFromErrors(t *testing.T) {
	t.Parallel()
	if _, err := FromJSON([]byte(`{"useLocalImagePull": "yes"}`)); err == nil {
		t.Error("FromJSON of a string for a bool: got no error")
	}
	if _, err := FromTOML(map[string]any{"use_local_image_pull": "yes"}); err == nil {
		t.Error("FromTOML of a string for a bool: got no error")
	}
}

func TestSettingsOrder(t *testing.T) {
	t.Parallel()
	// The "everything" case names every setting; its Linux triggers come in
	// Settings order.
	var all []Trigger
	for _, tt := range triggerCases {
		if tt.name == "everything, in Settings order" {
			all = tt.linux
		}
	}
	var got []string
	for _, tr := range all {
		got = append(got, tr.Setting)
	}
	want := []string{"use_local_image_pull", "disable_snapshot_annotations", "discard_unpacked_layers",
		"registry.auths", "max_concurrent_downloads", "image_pull_with_sync_fs"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("case lists %q", got)
	}
	idx := map[string]int{}
	for i, s := range Settings() {
		idx[s] = i
	}
	for i := 1; i < len(got); i++ {
		if idx[got[i-1]] >= idx[got[i]] {
			t.Errorf("%s before %s, not in Settings order %q", got[i-1], got[i], Settings())
		}
	}
	if tr := (Trigger{"max_concurrent_downloads", "1 (not 3)"}).String(); tr != "max_concurrent_downloads = 1 (not 3)" {
		t.Errorf("Trigger.String() = %q", tr)
	}
}
