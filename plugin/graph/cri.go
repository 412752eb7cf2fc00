package graph

import (
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"

	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/status"
)

// criSection names CRI's images config section in messages.
const criSection = "[plugins.'io.containerd.cri.v1.images']"

// criImages are the fields of CRI's images config (an internal type of containerd,
// read through its JSON tags) that make CRI pull through its local path instead of
// the transfer service: containerd's CheckLocalImagePullConfigs. Pointers tell a
// field that is missing (a containerd that renamed it) from one that is false.
type criImages struct {
	UseLocalImagePull          *bool `json:"useLocalImagePull"`
	DisableSnapshotAnnotations *bool `json:"disableSnapshotAnnotations"`
	DiscardUnpackedLayers      *bool `json:"discardUnpackedLayers"`
	MaxConcurrentDownloads     *int  `json:"maxConcurrentDownloads"`
	ImagePullWithSyncFs        *bool `json:"imagePullWithSyncFs"`
	Registry                   struct {
		Mirrors map[string]json.RawMessage `json:"mirrors"`
		Configs map[string]json.RawMessage `json:"configs"`
		Auths   map[string]json.RawMessage `json:"auths"`
	} `json:"registry"`
}

// criTrigger is one CRI setting that sends pulls down the local path.
type criTrigger struct {
	// Setting is the TOML key in CRI's images section.
	Setting string
	// Value says what it is set to.
	Value string
}

func (t criTrigger) String() string { return t.Setting + " = " + t.Value }

// criSettings are the TOML keys of every trigger, the setting label of
// hopless_plugin_cri_local_pull.
func criSettings() []string {
	return []string{
		"use_local_image_pull", "disable_snapshot_annotations", "discard_unpacked_layers",
		"registry.mirrors", "registry.configs", "registry.auths",
		"max_concurrent_downloads", "image_pull_with_sync_fs",
	}
}

// localPullTriggers are the settings of CRI's images config (as JSON) that make CRI
// pull through its local path on goos, in the order of criSettings.
func localPullTriggers(configJSON []byte, goos string) ([]criTrigger, error) {
	var c criImages
	if err := json.Unmarshal(configJSON, &c); err != nil {
		return nil, fmt.Errorf("decoding CRI's images config: %w", err)
	}
	is := func(b *bool, want bool) bool { return b != nil && *b == want }
	var out []criTrigger
	if is(c.UseLocalImagePull, true) {
		out = append(out, criTrigger{"use_local_image_pull", "true"})
	}
	// Snapshot annotations are the transfer service's business on Linux, where CRI
	// disables them by default; on Windows it is the other way round.
	if goos == "windows" && is(c.DisableSnapshotAnnotations, true) {
		out = append(out, criTrigger{"disable_snapshot_annotations", "true"})
	} else if goos != "windows" && is(c.DisableSnapshotAnnotations, false) {
		out = append(out, criTrigger{"disable_snapshot_annotations", "false"})
	}
	if is(c.DiscardUnpackedLayers, true) {
		out = append(out, criTrigger{"discard_unpacked_layers", "true"})
	}
	for _, r := range []struct {
		setting string
		m       map[string]json.RawMessage
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
			out = append(out, criTrigger{r.setting, "{" + strings.Join(keys, ", ") + "}"})
		}
	}
	if c.MaxConcurrentDownloads != nil && *c.MaxConcurrentDownloads != 3 {
		out = append(out, criTrigger{"max_concurrent_downloads", fmt.Sprintf("%d (not 3)", *c.MaxConcurrentDownloads)})
	}
	if is(c.ImagePullWithSyncFs, true) {
		out = append(out, criTrigger{"image_pull_with_sync_fs", "true"})
	}
	return out, nil
}

// wrapCRIImages checks CRI's images config before CRI's own InitFn runs. When
// hopless serves image hosts and the config would make CRI pull through its local
// path, which never reaches the transfer service, CRI's images plugin fails (with
// cri_local_pull = "refuse") or an error is logged (with "warn").
func wrapCRIImages(r plugin.Registration, m *metrics) plugin.Registration {
	inner := r.InitFn
	r.Requires = append(slices.Clone(r.Requires), config.Type)
	r.InitFn = func(ic *plugin.InitContext) (any, error) {
		v, err := ic.GetByID(config.Type, config.ID)
		if err != nil {
			// Not configured: nothing to bypass. Broken: the transfer plugin has
			// failed already, and CRI with it.
			return inner(ic)
		}
		in := v.(*Instance)
		if err := checkCRI(ic, in, m); err != nil {
			return nil, err
		}
		return inner(ic)
	}
	return r
}

// checkCRI runs the CRI check against ic.Config for in and records its result.
func checkCRI(ic *plugin.InitContext, in *Instance, m *metrics) error {
	b, err := json.Marshal(ic.Config)
	if err != nil {
		return fmt.Errorf("hopless: encoding CRI's images config to check it: %w", err)
	}
	triggers, err := localPullTriggers(b, runtime.GOOS)
	if err != nil {
		return fmt.Errorf("hopless: %w", err)
	}
	var settings []string
	for _, t := range triggers {
		settings = append(settings, t.Setting)
	}
	m.criLocalPull(settings)
	check := status.CRICheck{Checked: true, Mode: in.Settings.CRILocalPull, Settings: settings}
	if len(triggers) == 0 {
		in.setCRICheck(check)
		return nil
	}
	var desc []string
	for _, t := range triggers {
		desc = append(desc, t.String())
	}
	msg := fmt.Sprintf("%s sets %s: CRI would pull through its local path, which bypasses hopless",
		criSection, strings.Join(desc, ", "))
	if in.Settings.CRILocalPull == config.CRILocalPullRefuse {
		check.Refused = true
		in.setCRICheck(check)
		return fmt.Errorf("hopless: %s; remove these settings (the transfer service's own section has max_concurrent_downloads), "+
			"or set cri_local_pull = %q in %s to let CRI pull past hopless: %w",
			msg, config.CRILocalPullWarn, config.Section, errdefs.ErrFailedPrecondition)
	}
	in.setCRICheck(check)
	log.G(ic.Context).WithField("settings", settings).Error(msg + "; cri_local_pull = \"warn\" lets it")
	return nil
}
