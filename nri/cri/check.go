package cri

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Plugins of containerd's plugin graph that Check looks at, by type and ID.
const (
	imagesType = "io.containerd.cri.v1"
	imagesID   = "images"
	nriType    = "io.containerd.nri.v1"
	nriID      = "nri"
	// HoplessType and HoplessID are the plugin that only hopless's own containerd
	// build registers.
	HoplessType = "io.containerd.hopless.v1"
	HoplessID   = "hopless"
)

// Exports of CRI's images plugin.
const (
	exportConfigPath = "RegistryConfigPath"
	exportDiscard    = "DiscardUnpackedLayers"
)

// configPathKey is the TOML key of CRI's registry config_path in a config.toml of
// version 3 or later; configPathKeyV2 is the same key in a version 2 config.toml,
// which containerd migrates on load.
const (
	imagesSection   = "plugins.'io.containerd.cri.v1.images'"
	configPathKey   = imagesSection + ".registry.config_path"
	configPathKeyV2 = `plugins."io.containerd.grpc.v1.cri".registry.config_path`
)

// PullMode is how CRI pulls images, as far as containerd shows it over its socket.
//
// containerd 2.1 and later pull CRI images through the transfer service, unless one of
// these CRI images settings sends them down the local path (the containerd client's
// own pull): use_local_image_pull = true, disable_snapshot_annotations = false (on
// Linux), discard_unpacked_layers = true, max_concurrent_downloads other than 3,
// image_pull_with_sync_fs = true, or any of the deprecated registry.mirrors,
// registry.configs and registry.auths. Only discard_unpacked_layers (an export of the
// images plugin) and the registry ones (deprecation warnings) can be seen over the
// socket, so the mode is PullLocal or PullUnknown, never known to be the transfer
// service.
//
// Both modes read hosts.toml from registry.config_path; only the transfer service
// goes through hopless's in-process plugin, which hosts.toml mode does not need.
type PullMode string

const (
	// PullLocal: a setting that containerd shows sends CRI pulls down the local path.
	PullLocal PullMode = "local"
	// PullUnknown: no visible setting does; a setting that is not visible still may.
	PullUnknown PullMode = "unknown"
)

// NRIState is what containerd shows of its NRI plugin (io.containerd.nri.v1.nri).
type NRIState string

const (
	// NRIDisabled: the plugin is not in the graph (it is in disabled_plugins).
	NRIDisabled NRIState = "disabled"
	// NRIFailed: the plugin failed to load; Report.NRIError says why.
	NRIFailed NRIState = "failed"
	// NRIUnknown: the plugin loaded, but its disable setting is not visible, so NRI
	// may still be off. A plugin that got connected knows it is on.
	NRIUnknown NRIState = "unknown"
)

// Plugin is one plugin as containerd's introspection service lists it.
type Plugin struct {
	// Listed: the plugin is in the graph. One in disabled_plugins is not.
	Listed bool
	// InitErr is why the plugin did not load ("skip plugin" included); empty when it
	// loaded.
	InitErr string
	// Exports are the key-value pairs that the plugin published.
	Exports map[string]string
}

// Loaded says whether the plugin is in the graph and loaded.
func (p Plugin) Loaded() bool { return p.Listed && p.InitErr == "" }

// Report is what Check found out about a containerd.
type Report struct {
	// Socket is the containerd socket that was asked.
	Socket string
	// Images is CRI's images plugin (io.containerd.cri.v1.images).
	Images Plugin
	// ConfigPath is CRI's registry config_path as the images plugin exports it, with
	// containerd's Linux default (/etc/containerd/certs.d:/etc/docker/certs.d) in
	// place of an unset one. It is empty only when registry.mirrors are set instead.
	ConfigPath string
	// ConfigPathReported says whether the images plugin exported ConfigPath at all.
	ConfigPathReported bool
	// PullMode is how CRI pulls, as far as it shows.
	PullMode PullMode
	// LocalPull lists the visible settings that make PullMode PullLocal.
	LocalPull []string
	// NRI is the state of containerd's NRI plugin, and NRIError its load error.
	NRI      NRIState
	NRIError string
	// HoplessBuild says whether this containerd is hopless's own build, which
	// registers the plugin HoplessType.HoplessID (whether or not it loaded).
	HoplessBuild bool
}

// Check asks containerd's introspection service for its plugins and deprecation
// warnings, and reports what they say about CRI's pulls.
func (c *Client) Check(ctx context.Context) (Report, error) {
	if err := needDeadline(ctx, "checking containerd socket "+c.socket); err != nil {
		return Report{}, err
	}
	pl, err := c.intro.Plugins(ctx, &introspection.PluginsRequest{})
	if err != nil {
		return Report{}, fmt.Errorf("listing the plugins of containerd socket %s: %w", c.socket, errgrpc.ToNative(err))
	}
	srv, err := c.intro.Server(ctx, &emptypb.Empty{})
	if err != nil {
		return Report{}, fmt.Errorf("asking containerd socket %s for its server info: %w", c.socket, errgrpc.ToNative(err))
	}
	return newReport(c.socket, pl.GetPlugins(), srv.GetDeprecations()), nil
}

// newReport builds the Report of the containerd at socket from its plugin list and
// deprecation warnings.
func newReport(socket string, plugins []*introspection.Plugin, deprecations []*introspection.DeprecationWarning) Report {
	find := func(typ, id string) Plugin {
		i := slices.IndexFunc(plugins, func(p *introspection.Plugin) bool { return p.GetType() == typ && p.GetID() == id })
		if i < 0 {
			return Plugin{}
		}
		p := plugins[i]
		return Plugin{Listed: true, InitErr: p.GetInitErr().GetMessage(), Exports: p.GetExports()}
	}
	r := Report{Socket: socket, Images: find(imagesType, imagesID), PullMode: PullUnknown}
	r.ConfigPath, r.ConfigPathReported = r.Images.Exports[exportConfigPath]
	if r.Images.Exports[exportDiscard] == "true" {
		r.LocalPull = append(r.LocalPull, "discard_unpacked_layers = true")
	}
	// The deprecated registry settings, each of which also sends CRI's pulls down the
	// local path, show as deprecation warnings of CRI's images plugin.
	for _, d := range []struct{ id, setting string }{
		{"io.containerd.deprecation/cri-registry-mirrors", "registry.mirrors"},
		{"io.containerd.deprecation/cri-registry-configs", "registry.configs"},
		{"io.containerd.deprecation/cri-registry-auths", "registry.auths"},
	} {
		if slices.ContainsFunc(deprecations, func(w *introspection.DeprecationWarning) bool { return w.GetID() == d.id }) {
			r.LocalPull = append(r.LocalPull, d.setting)
		}
	}
	if len(r.LocalPull) > 0 {
		r.PullMode = PullLocal
	}
	switch n := find(nriType, nriID); {
	case !n.Listed:
		r.NRI = NRIDisabled
	case n.InitErr != "":
		r.NRI, r.NRIError = NRIFailed, n.InitErr
	default:
		r.NRI = NRIUnknown
	}
	r.HoplessBuild = find(HoplessType, HoplessID).Listed
	return r
}

// Problem is one setting of containerd that makes CRI ignore the hosts.toml in a
// directory.
type Problem struct {
	// Setting is the TOML key at fault in containerd's config.toml.
	Setting string
	// Value is what containerd reports for it.
	Value string
	// Why says what follows from it.
	Why string
	// Fix says what to do instead.
	Fix string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("%s is %s: %s; %s", p.Setting, p.Value, p.Why, p.Fix)
}

// Problems lists what makes CRI ignore a hosts.toml written into dir/<host>/, each
// a *Problem; none means CRI reads it. The rules, for containerd 2.x:
//
//   - CRI's images plugin must be loaded, and must report its config_path.
//   - config_path must not be empty: CRI then resolves registries by the deprecated
//     registry.mirrors and reads no hosts.toml.
//   - The transfer service, which CRI pulls through unless a setting sends pulls down
//     the local path (see PullMode), takes config_path as one directory: a list such
//     as containerd's default /etc/containerd/certs.d:/etc/docker/certs.d names no
//     directory at all, so no hosts.toml is read. Unless PullMode is PullLocal,
//     config_path must be dir itself (compared after filepath.Clean).
//   - The local path splits config_path at ':' and takes, for each host, the first
//     directory that has a directory for it. With PullMode PullLocal, dir must be the
//     first of the list (or the only one). It then stops working as soon as the
//     setting that forces the local path goes, so dir alone is the better fix anyway.
func (r Report) Problems(dir string) []error {
	fix := fmt.Sprintf("set %s = %q (in a version 2 config.toml: %s) and restart containerd",
		configPathKey, dir, configPathKeyV2)
	switch {
	case !r.Images.Listed:
		return []error{&Problem{imagesSection, "not loaded",
			"containerd at " + r.Socket + " has no CRI images plugin (disabled_plugins lists it, or the build has none), so CRI pulls nothing",
			"remove 'io.containerd.cri.v1.images' from disabled_plugins and restart containerd"}}
	case r.Images.InitErr != "":
		return []error{&Problem{imagesSection, "not loaded",
			"containerd at " + r.Socket + " failed to load CRI's images plugin: " + r.Images.InitErr,
			"fix what containerd's log says of the plugin and restart containerd"}}
	case !r.ConfigPathReported:
		return []error{&Problem{configPathKey, "not reported",
			"CRI's images plugin of containerd at " + r.Socket + " does not export " + exportConfigPath +
				", so it cannot be told where CRI reads hosts.toml from", fix}}
	case r.ConfigPath == "":
		return []error{&Problem{configPathKey, `""`,
			"CRI resolves registries by the deprecated registry.mirrors and reads no hosts.toml", "remove registry.mirrors and " + fix}}
	}
	dirs := filepath.SplitList(r.ConfigPath)
	same := func(d string) bool { return filepath.Clean(d) == filepath.Clean(dir) }
	switch {
	case len(dirs) == 1 && same(dirs[0]):
		return nil
	case len(dirs) == 1:
		return []error{&Problem{configPathKey, fmt.Sprintf("%q", r.ConfigPath),
			"CRI reads hosts.toml from there, not from " + dir, fix}}
	case r.PullMode == PullLocal && same(dirs[0]):
		return nil
	case r.PullMode == PullLocal:
		return []error{&Problem{configPathKey, fmt.Sprintf("%q", r.ConfigPath),
			"CRI pulls down the local path (" + strings.Join(r.LocalPull, ", ") + "), which takes each host's hosts.toml " +
				"from the first of these directories that has one, and " + dir + " is not the first", fix}}
	default:
		return []error{&Problem{configPathKey, fmt.Sprintf("%q", r.ConfigPath),
			fmt.Sprintf("it lists %d directories, and the transfer service, which CRI pulls through unless a setting "+
				"sends pulls down the local path, takes it as one directory of that name and reads no hosts.toml", len(dirs)), fix}}
	}
}
