package conf

import (
	"errors"
	"path/filepath"
	"strings"

	"github.com/hopless/hopless/internal/nodetoken"
)

// NRI is the NRI plugin's configuration: the file given with --config to an external
// plugin, or the text containerd hands a pre-installed one from
// /etc/nri/conf.d/NN-hopless.conf. The registries and masters come from node.toml,
// the file the in-process plugin reads too.
type NRI struct {
	// NodeConfig is node.toml. Required.
	NodeConfig string `toml:"node_config"`
	// NodeName is this node's name: the key of its master order and its pins'
	// source. Default: $NODE_NAME, else the host name (resolved by the plugin).
	NodeName string `toml:"node_name"`
	// Hosts is whether the plugin writes hosts.toml: "manage", "off", or "auto"
	// (default): manage unless containerd is hopless's own build, whose in-process
	// plugin balances pulls itself.
	Hosts string `toml:"hosts"`
	// ConfigPath is containerd's registry config_path, the one directory under which
	// the plugin writes <host>/hosts.toml. Default "/etc/containerd/certs.d".
	ConfigPath string `toml:"config_path"`
	// StateDir keeps what the plugin owns and the hosts.toml it replaced. Default
	// "/var/lib/hopless-nri".
	StateDir string `toml:"state_dir"`
	// ContainerdSocket is containerd's gRPC socket, for CRI checks and image
	// lookups. Default "/run/containerd/containerd.sock".
	ContainerdSocket string `toml:"containerd_socket"`
	// PinsTokenFile holds this node's pins token (registryd node-token), mode 0600.
	// Empty: the plugin reports no pins.
	PinsTokenFile string `toml:"pins_token_file"`
	// MetricsListen is the address of the plugin's /metrics, e.g.
	// "127.0.0.1:9761". Empty: no metrics listener.
	MetricsListen string `toml:"metrics_listen"`
	// Kubeconfig is a kubeconfig file for reporting setup problems as events on
	// the node's Node object. Empty: in-cluster credentials when the plugin runs in
	// a pod, else no events.
	Kubeconfig string `toml:"kubeconfig"`
	// LogLevel is one of debug, info, warn, error. Default info.
	LogLevel string `toml:"log_level"`
	// LogFile receives the log, appended (mode 0600). Default: standard error, which
	// containerd discards for a pre-installed plugin: set it there.
	LogFile string `toml:"log_file"`
}

// Hosts modes of the NRI plugin.
const (
	HostsAuto   = "auto"
	HostsManage = "manage"
	HostsOff    = "off"
)

// Defaults of the NRI plugin.
const (
	DefaultNRIConfigPath       = "/etc/containerd/certs.d"
	DefaultNRIStateDir         = "/var/lib/hopless-nri"
	DefaultNRIContainerdSocket = "/run/containerd/containerd.sock"
)

// LoadNRI reads, defaults and validates an NRI plugin configuration file.
func LoadNRI(path string) (*NRI, error) { return loadFile[NRI](path) }

// DecodeNRI is LoadNRI for configuration text that containerd passes to a
// pre-installed plugin; name is used in errors, and relative paths are taken
// relative to baseDir.
func DecodeNRI(name, text, baseDir string) (*NRI, error) { return decodeText[NRI](name, text, baseDir) }

func (n *NRI) applyDefaults(raw map[string]any, base string) {
	n.NodeConfig = resolve(base, n.NodeConfig)
	n.PinsTokenFile = resolve(base, n.PinsTokenFile)
	n.LogFile = resolve(base, n.LogFile)
	n.Kubeconfig = resolve(base, n.Kubeconfig)
	if !present(raw, "hosts") {
		n.Hosts = HostsAuto
	}
	if !present(raw, "config_path") {
		n.ConfigPath = DefaultNRIConfigPath
	}
	if !present(raw, "state_dir") {
		n.StateDir = DefaultNRIStateDir
	}
	if !present(raw, "containerd_socket") {
		n.ContainerdSocket = DefaultNRIContainerdSocket
	}
	if !present(raw, "log_level") {
		n.LogLevel = DefaultLogLevel
	}
}

// Validate checks an NRI plugin configuration; file names the source in errors.
func (n *NRI) Validate(file string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if n.NodeConfig == "" {
		add(fieldErr(file, "node_config", "is required: the node.toml that lists the registries and masters"))
	}
	if n.NodeName != "" && !nodetoken.ValidName(n.NodeName) {
		add(fieldErr(file, "node_name", "must be a node name (letters, digits, '.', '_', '-'), got %q", n.NodeName))
	}
	switch n.Hosts {
	case HostsAuto, HostsManage, HostsOff:
	default:
		add(fieldErr(file, "hosts", "must be one of auto, manage, off, got %q", n.Hosts))
	}
	for _, p := range []struct{ field, v string }{
		{"config_path", n.ConfigPath}, {"state_dir", n.StateDir}, {"containerd_socket", n.ContainerdSocket},
	} {
		if !filepath.IsAbs(p.v) {
			add(fieldErr(file, p.field, "must be an absolute path, got %q", p.v))
		}
	}
	if filepath.IsAbs(n.StateDir) && filepath.IsAbs(n.ConfigPath) &&
		(filepath.Clean(n.ConfigPath) == filepath.Clean(n.StateDir) || isUnder(n.StateDir, n.ConfigPath)) {
		add(fieldErr(file, "state_dir", "must not be under config_path %q, where containerd reads host directories", n.ConfigPath))
	}
	add(prefixed(file, "pins_token_file", checkSecretFile(n.PinsTokenFile)))
	if n.MetricsListen != "" {
		if err := checkListen(n.MetricsListen); err != nil {
			add(fieldErr(file, "metrics_listen", "%v", err))
		}
	}
	switch n.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add(fieldErr(file, "log_level", "must be one of debug, info, warn, error, got %q", n.LogLevel))
	}
	return errors.Join(errs...)
}

// isUnder reports whether p is inside dir.
func isUnder(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}
