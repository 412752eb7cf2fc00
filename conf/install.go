package conf

import (
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Install is hopless-install's configuration (install.toml): where the node's
// containerd keeps its files, the registries node.toml lists, the files to copy
// onto the node and how the NRI plugin runs. Every path but a file's source is a
// path on the node, as containerd and the plugins will see it, not inside the
// installer's container.
type Install struct {
	// NodeName is the node's name, for its pins token. Default: the installer's
	// --node-name, else $NODE_NAME, else the node's /etc/hostname.
	NodeName   string            `toml:"node_name"`
	Containerd InstallContainerd `toml:"containerd"`
	// Registries are node.toml's [[registry]] tables. They are checked as node.toml
	// when the installer has placed the files they name, before anything lands.
	Registries []Registry `toml:"registry"`
	// Files are copied from the installer's files directory onto the node.
	Files []InstallFile `toml:"file"`
	NRI   InstallNRI    `toml:"nri"`

	// RegistryTables are the [[registry]] tables as written, which node.toml
	// repeats without the defaults filled in.
	RegistryTables []map[string]any `toml:"-"`
}

// InstallContainerd says where the node's containerd keeps its files.
type InstallContainerd struct {
	// Config is containerd's config.toml. Default /etc/containerd/config.toml.
	Config string `toml:"config"`
	// ImportsDir receives the installer's drop-in, which config.toml imports.
	// Default /etc/containerd/conf.d (containerd 2.2 and later import it by default).
	ImportsDir string `toml:"imports_dir"`
	// Socket is containerd's gRPC socket. Default /run/containerd/containerd.sock.
	Socket string `toml:"socket"`
	// Unit is containerd's systemd unit. Default containerd.service.
	Unit string `toml:"unit"`
	// MetricsAddress, when set, is where containerd serves /v1/metrics (the
	// hopless plugin's balancer metrics in inprocess mode), e.g. ":1338". Empty
	// leaves the node's setting alone.
	MetricsAddress string `toml:"metrics_address"`
	// RestartTimeout bounds the wait for CRI to answer after a restart; past it the
	// installer rolls back. Default 60s; at least 1s.
	RestartTimeout Duration `toml:"restart_timeout"`
}

// InstallFile is one file copied onto the node.
type InstallFile struct {
	// Source is the file in the installer's files directory (a relative path) or an
	// absolute path in the installer's container. Required.
	Source string `toml:"source"`
	// Dest is where it goes on the node: an absolute path. Required.
	Dest string `toml:"dest"`
	// Mode is its octal mode. Default "0644"; credentials want "0600".
	Mode string `toml:"mode"`
}

// InstallNRI configures hopless-nri on the node.
type InstallNRI struct {
	// Plugin is "external" (a DaemonSet connects to the NRI socket; the installer
	// writes its config) or "preinstalled" (containerd launches it from PluginDir).
	// Default external.
	Plugin string `toml:"plugin"`
	// Index is the pre-installed plugin's two-digit launch order. Default "10".
	Index string `toml:"index"`
	// PluginDir and ConfDir are containerd's NRI plugin_path and plugin_config_path.
	// Defaults /opt/nri/plugins and /etc/nri/conf.d.
	PluginDir string `toml:"plugin_dir"`
	ConfDir   string `toml:"conf_dir"`
	// Hosts is the plugin's hosts setting; default "manage" in nri mode and "auto"
	// beside our containerd build.
	Hosts string `toml:"hosts"`
	// MetricsListen is the plugin's metrics address; empty serves none.
	MetricsListen string `toml:"metrics_listen"`
	// NodeKeyFile is the masters' node key, in the files directory: the installer
	// derives this node's pins token from it (mode 0600 on the node). Optional;
	// without it the plugin reports no pins.
	NodeKeyFile string `toml:"node_key_file"`
	// StateDir is the plugin's state directory. Default /var/lib/hopless/nri.
	StateDir string `toml:"state_dir"`
	// LogLevel is the plugin's log level. Default info.
	LogLevel string `toml:"log_level"`
}

// NRI plugin placements (InstallNRI.Plugin).
const (
	NRIPluginExternal     = "external"
	NRIPluginPreinstalled = "preinstalled"
)

// Defaults of install.toml.
const (
	DefaultContainerdConfig     = "/etc/containerd/config.toml"
	DefaultContainerdImportsDir = "/etc/containerd/conf.d"
	DefaultContainerdSocket     = "/run/containerd/containerd.sock"
	DefaultContainerdUnit       = "containerd.service"
	DefaultRestartTimeout       = 60 * time.Second
	DefaultInstallFileMode      = "0644"
	DefaultNRIPluginDir         = "/opt/nri/plugins"
	DefaultNRIConfDir           = "/etc/nri/conf.d"
	DefaultNRIIndex             = "10"
	DefaultInstallNRIStateDir   = "/var/lib/hopless/nri"
)

// LoadInstall reads, defaults and validates an install.toml.
func LoadInstall(path string) (*Install, error) { return loadFile[Install](path) }

func (in *Install) applyDefaults(raw map[string]any, _ string) {
	def := func(s *string, v string, key ...any) {
		if !present(raw, key...) {
			*s = v
		}
	}
	c := &in.Containerd
	def(&c.Config, DefaultContainerdConfig, "containerd", "config")
	def(&c.ImportsDir, DefaultContainerdImportsDir, "containerd", "imports_dir")
	def(&c.Socket, DefaultContainerdSocket, "containerd", "socket")
	def(&c.Unit, DefaultContainerdUnit, "containerd", "unit")
	if !present(raw, "containerd", "restart_timeout") {
		c.RestartTimeout = Duration{DefaultRestartTimeout}
	}
	for i := range in.Files {
		def(&in.Files[i].Mode, DefaultInstallFileMode, "file", i, "mode")
	}
	n := &in.NRI
	def(&n.Plugin, NRIPluginExternal, "nri", "plugin")
	def(&n.Index, DefaultNRIIndex, "nri", "index")
	def(&n.PluginDir, DefaultNRIPluginDir, "nri", "plugin_dir")
	def(&n.ConfDir, DefaultNRIConfDir, "nri", "conf_dir")
	def(&n.StateDir, DefaultInstallNRIStateDir, "nri", "state_dir")
	def(&n.LogLevel, DefaultLogLevel, "nri", "log_level")
	in.RegistryTables = nil
	switch regs := raw["registry"].(type) {
	case []map[string]any:
		in.RegistryTables = regs
	case []any:
		// An inline array, registry = [{ host = ... }]: checkValue made each a table.
		for _, r := range regs {
			if m, ok := r.(map[string]any); ok {
				in.RegistryTables = append(in.RegistryTables, m)
			}
		}
	}
}

// Validate checks an installer configuration. The registries' files are not
// looked at here: they name paths on the node, which the installer checks once
// it has staged them.
func (in *Install) Validate(file string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	absPath := func(field, v string) {
		if !strings.HasPrefix(v, "/") || path.Clean(v) != v {
			add(fieldErr(file, field, "must be a clean absolute path, got %q", v))
		}
	}
	c := in.Containerd
	absPath("containerd.config", c.Config)
	absPath("containerd.imports_dir", c.ImportsDir)
	absPath("containerd.socket", c.Socket)
	if c.MetricsAddress != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddress); err != nil {
			add(fieldErr(file, "containerd.metrics_address", "must be host:port, got %q", c.MetricsAddress))
		}
	}
	if !unitRE.MatchString(c.Unit) {
		add(fieldErr(file, "containerd.unit", "must be a systemd service name such as containerd.service, got %q", c.Unit))
	}
	if c.RestartTimeout.Duration < time.Second {
		add(fieldErr(file, "containerd.restart_timeout", "must be at least 1s, got %s", c.RestartTimeout.Duration))
	}
	if len(in.Registries) == 0 {
		add(fieldErr(file, "registry", "is required: at least one [[registry]] with its host and endpoints"))
	}
	for i, r := range in.Registries {
		if r.Host == "" {
			add(fieldErr(file, fmt.Sprintf("registry[%d].host", i), "is required"))
		}
	}
	dests := map[string]int{}
	for i, f := range in.Files {
		p := fmt.Sprintf("file[%d]", i)
		if f.Source == "" {
			add(fieldErr(file, p+".source", "is required"))
		} else if path.Clean(f.Source) != f.Source || strings.HasPrefix(f.Source, "../") || f.Source == ".." {
			add(fieldErr(file, p+".source", "must be a clean path inside the files directory or an absolute path, got %q", f.Source))
		}
		absPath(p+".dest", f.Dest)
		if j, dup := dests[f.Dest]; dup {
			add(fieldErr(file, p+".dest", "%s is file[%d].dest already", f.Dest, j))
		}
		dests[f.Dest] = i
		if _, err := ParseFileMode(f.Mode); err != nil {
			add(fieldErr(file, p+".mode", "%v", err))
		}
	}
	n := in.NRI
	switch n.Plugin {
	case NRIPluginExternal, NRIPluginPreinstalled:
	default:
		add(fieldErr(file, "nri.plugin", "must be %s or %s, got %q", NRIPluginExternal, NRIPluginPreinstalled, n.Plugin))
	}
	if !nriIndexRE.MatchString(n.Index) {
		add(fieldErr(file, "nri.index", "must be two digits, got %q", n.Index))
	}
	absPath("nri.plugin_dir", n.PluginDir)
	absPath("nri.conf_dir", n.ConfDir)
	absPath("nri.state_dir", n.StateDir)
	switch n.Hosts {
	case "", HostsAuto, HostsManage, HostsOff:
	default:
		add(fieldErr(file, "nri.hosts", "must be one of auto, manage, off, got %q", n.Hosts))
	}
	if n.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(n.MetricsListen); err != nil {
			add(fieldErr(file, "nri.metrics_listen", "must be host:port, got %q", n.MetricsListen))
		}
	}
	switch n.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add(fieldErr(file, "nri.log_level", "must be one of debug, info, warn, error, got %q", n.LogLevel))
	}
	return errors.Join(errs...)
}

// ParseFileMode parses an octal permission string such as "0600".
func ParseFileMode(s string) (uint32, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 || s == "" {
		return 0, fmt.Errorf("must be an octal mode such as \"0644\" or \"0600\", got %q", s)
	}
	return uint32(m), nil
}

var (
	nriIndexRE = regexp.MustCompile(`^[0-9]{2}$`)
	unitRE     = regexp.MustCompile(`^[A-Za-z0-9:_.@-]+\.service$`)
)
