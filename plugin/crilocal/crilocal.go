// Package crilocal tells which settings of CRI's images config make CRI pull through
// its local path, which never reaches the transfer service (and so never reaches
// hopless). It mirrors containerd's CheckLocalImagePullConfigs. The plugin checks
// the config containerd decoded (as JSON); the installer checks the TOML it is about
// to merge, before anything is written.
package crilocal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// Images are the fields of CRI's images config that matter, under containerd's JSON
// names and the TOML keys of [plugins.'io.containerd.cri.v1.images']. Pointers tell
// a field that is missing (a default, or a containerd that renamed it) from one that
// is set to its zero value.
type Images struct {
	UseLocalImagePull          *bool `json:"useLocalImagePull" toml:"use_local_image_pull"`
	DisableSnapshotAnnotations *bool `json:"disableSnapshotAnnotations" toml:"disable_snapshot_annotations"`
	DiscardUnpackedLayers      *bool `json:"discardUnpackedLayers" toml:"discard_unpacked_layers"`
	MaxConcurrentDownloads     *int  `json:"maxConcurrentDownloads" toml:"max_concurrent_downloads"`
	ImagePullWithSyncFs        *bool `json:"imagePullWithSyncFs" toml:"image_pull_with_sync_fs"`
	Registry                   struct {
		Mirrors map[string]any `json:"mirrors" toml:"mirrors"`
		Configs map[string]any `json:"configs" toml:"configs"`
		Auths   map[string]any `json:"auths" toml:"auths"`
	} `json:"registry" toml:"registry"`
}

// FromJSON decodes CRI's images config as containerd encodes it.
func FromJSON(b []byte) (Images, error) {
	var c Images
	if err := json.Unmarshal(b, &c); err != nil {
		return Images{}, fmt.Errorf("decoding CRI's images config: %w", err)
	}
	return c, nil
}

// FromTOML decodes the [plugins.'io.containerd.cri.v1.images'] table of a decoded
// config.toml; a nil table is CRI's defaults.
func FromTOML(section map[string]any) (Images, error) {
	var c Images
	if section == nil {
		return c, nil
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(section); err != nil {
		return Images{}, fmt.Errorf("encoding CRI's images config: %w", err)
	}
	if _, err := toml.Decode(b.String(), &c); err != nil {
		return Images{}, fmt.Errorf("decoding CRI's images config: %w", err)
	}
	return c, nil
}

// Trigger is one CRI setting that sends pulls down the local path.
type Trigger struct {
	// Setting is the TOML key in CRI's images section.
	Setting string
	// Value says what it is set to.
	Value string
}

func (t Trigger) String() string { return t.Setting + " = " + t.Value }

// Settings are the TOML keys of every trigger, in the order Triggers reports them.
func Settings() []string {
	return []string{
		"use_local_image_pull", "disable_snapshot_annotations", "discard_unpacked_layers",
		"registry.mirrors", "registry.configs", "registry.auths",
		"max_concurrent_downloads", "image_pull_with_sync_fs",
	}
}

// Triggers are the settings of c that make CRI pull through its local path on goos,
// in the order of Settings.
func Triggers(c Images, goos string) []Trigger {
	is := func(b *bool, want bool) bool { return b != nil && *b == want }
	var out []Trigger
	if is(c.UseLocalImagePull, true) {
		out = append(out, Trigger{"use_local_image_pull", "true"})
	}
	// Snapshot annotations are the transfer service's business on Linux, where CRI
	// disables them by default; on Windows it is the other way round.
	if goos == "windows" && is(c.DisableSnapshotAnnotations, true) {
		out = append(out, Trigger{"disable_snapshot_annotations", "true"})
	} else if goos != "windows" && is(c.DisableSnapshotAnnotations, false) {
		out = append(out, Trigger{"disable_snapshot_annotations", "false"})
	}
	if is(c.DiscardUnpackedLayers, true) {
		out = append(out, Trigger{"discard_unpacked_layers", "true"})
	}
	for _, r := range []struct {
		setting string
		m       map[string]any
	}{
		{"registry.mirrors", c.Registry.Mirrors},
		{"registry.configs", c.Registry.Configs},
		{"registry.auths", c.Registry.Auths},
	} {
		if len(r.m) > 0 {
			keys := make([]string, 0, len(r.m))
			for k := range r.m {
				keys = append(keys, fmt.Sprintf("%q", k))
			}
			slices.Sort(keys)
			out = append(out, Trigger{r.setting, "{" + strings.Join(keys, ", ") + "}"})
		}
	}
	if c.MaxConcurrentDownloads != nil && *c.MaxConcurrentDownloads != 3 {
		out = append(out, Trigger{"max_concurrent_downloads", fmt.Sprintf("%d (not 3)", *c.MaxConcurrentDownloads)})
	}
	if is(c.ImagePullWithSyncFs, true) {
		out = append(out, Trigger{"image_pull_with_sync_fs", "true"})
	}
	return out
}
