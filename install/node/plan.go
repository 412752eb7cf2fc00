// Package node installs hopless onto one node's root filesystem, as seen from
// the installer's container at a host root: it plans every file for a mode,
// checks the result with containerd's and hopless's own loaders before anything
// lands, writes each file atomically with a backup of what it replaces, restarts
// containerd when asked (rolling back if CRI does not come back), and undoes all
// of it byte for byte.
package node

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/install/ctrconf"
	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/install/state"
	"github.com/hopless/hopless/install/systemd"
	"github.com/hopless/hopless/internal/nodetoken"
)

// Modes of a node.
const (
	// ModeInprocess runs hopless's containerd build, through a systemd drop-in.
	ModeInprocess = "inprocess"
	// ModeNRI keeps the node's containerd and adds hopless-nri.
	ModeNRI = "nri"
)

// Node paths the installer owns.
const (
	BinDir          = "/opt/hopless/bin"
	ConfDir         = "/etc/hopless"
	NodeConfig      = ConfDir + "/node.toml"
	NRIConfig       = ConfDir + "/nri.toml"
	PinsToken       = ConfDir + "/node.token"
	DropInName      = "50-hopless.toml"
	UnitDropInName  = "50-hopless.conf"
	nriPluginSuffix = "-hopless"
)

// want is one file the installer puts on the node.
type want struct {
	Path string
	Role string
	Data []byte
	Mode fs.FileMode
	// StageDir is where the file is staged before its rename, when not beside it:
	// never inside containerd's NRI plugin directory.
	StageDir string
	// nriConfig marks hopless-nri's configuration, which check loads with conf.
	nriConfig bool
}

// plan is everything a run writes, in the order it writes it: what containerd
// would start with only if everything before it is in place comes last.
type plan struct {
	files []want
	// hostsDir and nriState are the NRI plugin's config_path and state_dir.
	hostsDir, nriState string
}

func (p *plan) add(w want) { p.files = append(p.files, w) }

func (p *plan) lookup(path string) *want {
	for i := range p.files {
		if p.files[i].Path == path {
			return &p.files[i]
		}
	}
	return nil
}

// makePlan reads the node and works out every file for the run.
func (in *Installer) makePlan(ctx context.Context, st *state.State) (*plan, error) {
	c := in.Config
	p := &plan{}
	readBin := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(in.SourceDir, name))
		if err != nil {
			return nil, fmt.Errorf("reading the binary to install: %w", err)
		}
		return b, nil
	}

	mainPath, err := in.Root.Path(c.Containerd.Config)
	if err != nil {
		return nil, err
	}
	mainData, _, err := hostfs.ReadFile(mainPath)
	if err != nil {
		return nil, err
	}
	if mainData == nil {
		return nil, fmt.Errorf("containerd's config %s is not on the node: write it first (containerd config default), so that the installer adds to it", c.Containerd.Config)
	}
	main, err := ctrconf.ParseMain(c.Containerd.Config, mainData)
	if err != nil {
		return nil, err
	}
	dropIn := filepath.Join(c.Containerd.ImportsDir, DropInName)
	// The node's own settings, without any drop-in of an earlier install.
	own, err := ctrconf.Load(ctx, ctrconf.Candidate{Root: in.Root, ConfigPath: c.Containerd.Config, Main: mainData, DropIn: dropIn})
	if err != nil {
		return nil, err
	}

	if in.Mode == ModeInprocess {
		b, err := readBin("containerd")
		if err != nil {
			return nil, err
		}
		p.add(want{Path: BinDir + "/containerd", Role: "containerd (hopless build)", Data: b, Mode: 0o755})
	}
	if in.Mode == ModeNRI || c.NRI.Plugin == conf.NRIPluginPreinstalled {
		b, err := readBin("hopless-nri")
		if err != nil {
			return nil, err
		}
		p.add(want{Path: BinDir + "/hopless-nri", Role: "hopless-nri", Data: b, Mode: 0o755})
	}

	for _, f := range c.Files {
		src := f.Source
		if !filepath.IsAbs(src) {
			src = filepath.Join(in.FilesDir, src)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("reading file %s for %s: %w", src, f.Dest, err)
		}
		m, _ := conf.ParseFileMode(f.Mode)
		p.add(want{Path: f.Dest, Role: "file from " + f.Source, Data: b, Mode: fs.FileMode(m)})
	}
	node, err := encodeTOML(map[string]any{"registry": c.RegistryTables})
	if err != nil {
		return nil, fmt.Errorf("writing node.toml: %w", err)
	}
	p.add(want{Path: NodeConfig, Role: "node config", Data: append([]byte("# Written by hopless-install.\n"), node...), Mode: 0o644})

	tokenFile := ""
	if c.NRI.NodeKeyFile != "" {
		src := c.NRI.NodeKeyFile
		if !filepath.IsAbs(src) {
			src = filepath.Join(in.FilesDir, src)
		}
		key, err := conf.ReadToken(src)
		if err != nil {
			return nil, fmt.Errorf("reading nri.node_key_file: %w", err)
		}
		if len(key) < nodetoken.MinKeyBytes {
			return nil, fmt.Errorf("nri.node_key_file %s holds %d bytes, want at least %d", src, len(key), nodetoken.MinKeyBytes)
		}
		tok, err := nodetoken.Derive([]byte(key), in.NodeName)
		if err != nil {
			return nil, fmt.Errorf("deriving the pins token of node %q: %w", in.NodeName, err)
		}
		tokenFile = PinsToken
		p.add(want{Path: PinsToken, Role: "pins token", Data: []byte(tok + "\n"), Mode: 0o600})
	}

	// NRI runs in both modes: it reports the images in use; beside our containerd
	// it leaves hosts.toml alone.
	nriSection := ctrconf.Section(own, ctrconf.NRI)
	pluginDir, confDir := c.NRI.PluginDir, c.NRI.ConfDir
	if s, ok := nriSection["plugin_path"].(string); ok && s != "" {
		pluginDir = s
	}
	if s, ok := nriSection["plugin_config_path"].(string); ok && s != "" {
		confDir = s
	}
	socket := c.Containerd.Socket
	p.hostsDir = ctrconf.ConfigPath(own)
	setConfigPath := false
	if p.hostsDir == "" {
		p.hostsDir, setConfigPath = conf.DefaultNRIConfigPath, in.Mode == ModeNRI
	}
	p.nriState = c.NRI.StateDir
	hosts := c.NRI.Hosts
	if hosts == "" {
		hosts = conf.HostsManage
		if in.Mode == ModeInprocess {
			hosts = conf.HostsAuto
		}
	}
	logFile := ""
	if c.NRI.Plugin == conf.NRIPluginPreinstalled {
		// containerd discards a pre-installed plugin's standard error.
		logFile = p.nriState + "/plugin.log"
	}
	nri := nriText(nriSettings{NodeName: in.NodeName, Hosts: hosts, ConfigPath: p.hostsDir, StateDir: p.nriState,
		Socket: socket, TokenFile: tokenFile, Metrics: c.NRI.MetricsListen, LogLevel: c.NRI.LogLevel, LogFile: logFile})
	if c.NRI.Plugin == conf.NRIPluginPreinstalled {
		name := c.NRI.Index + nriPluginSuffix
		b, err := readBin("hopless-nri")
		if err != nil {
			return nil, err
		}
		// containerd refuses to start NRI, and CRI with it, over a file in its
		// plugin directory that is not named NN-name: stage beside the directory.
		p.add(want{Path: filepath.Join(confDir, name+".conf"), Role: "hopless-nri config (pre-installed)", Data: nri, Mode: 0o644, nriConfig: true})
		p.add(want{Path: filepath.Join(pluginDir, name), Role: "hopless-nri (pre-installed)", Data: b, Mode: 0o755, StageDir: filepath.Dir(pluginDir)})
	} else {
		p.add(want{Path: NRIConfig, Role: "hopless-nri config", Data: nri, Mode: 0o644, nriConfig: true})
	}

	var d strings.Builder
	fmt.Fprintf(&d, "# Written by hopless-install (%s mode); hopless-install uninstall removes it.\nversion = %d\n", in.Mode, main.Version)
	if in.Mode == ModeInprocess {
		fmt.Fprintf(&d, "\n# hopless's plugin in hopless's containerd build: pulls of the registries in\n# node.toml go straight to their masters.\n[plugins.'%s']\n  node_config = '%s'\n", ctrconf.Hopless, NodeConfig)
	}
	fmt.Fprintf(&d, "\n[plugins.'%s']\n  disable = false\n  plugin_path = '%s'\n  plugin_config_path = '%s'\n", ctrconf.NRI, pluginDir, confDir)
	if a := c.Containerd.MetricsAddress; a != "" {
		// Version 4 moved the server's settings into plugins.
		if main.Version >= 4 {
			fmt.Fprintf(&d, "\n[plugins.'io.containerd.server.v1.metrics']\n  address = '%s'\n", a)
		} else {
			fmt.Fprintf(&d, "\n[metrics]\n  address = '%s'\n", a)
		}
	}
	if setConfigPath {
		fmt.Fprintf(&d, "\n# hopless-nri keeps <config_path>/<host>/hosts.toml.\n[plugins.'%s'.registry]\n  config_path = '%s'\n", ctrconf.CRIImages, p.hostsDir)
	}
	p.add(want{Path: dropIn, Role: "containerd drop-in", Data: []byte(d.String()), Mode: 0o644})

	switch {
	case !ctrconf.Imports(main, c.Containerd.Config, dropIn):
		edited, err := ctrconf.AddImport(c.Containerd.Config, mainData, filepath.Join(c.Containerd.ImportsDir, "*.toml"))
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(mainPath)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", c.Containerd.Config, err)
		}
		p.add(want{Path: c.Containerd.Config, Role: "containerd config (imports added)", Data: edited, Mode: fi.Mode().Perm()})
	case st.Lookup(c.Containerd.Config) != nil:
		// An earlier run added the imports: the file stays the installer's, to be
		// restored on uninstall, with what it holds now.
		fi, err := os.Stat(mainPath)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", c.Containerd.Config, err)
		}
		p.add(want{Path: c.Containerd.Config, Role: "containerd config (imports added)", Data: mainData, Mode: fi.Mode().Perm()})
	}

	if in.Mode == ModeInprocess {
		argv, err := systemd.ExecStart(in.Root, c.Containerd.Unit, UnitDropInName)
		if err != nil {
			return nil, err
		}
		if err := in.checkVersion(ctx, argv[0]); err != nil {
			return nil, err
		}
		argv[0] = BinDir + "/containerd"
		p.add(want{Path: filepath.Join(systemd.DropInDir(c.Containerd.Unit), UnitDropInName), Role: "systemd drop-in", Data: systemd.DropIn(argv), Mode: 0o644})
	}
	return p, nil
}

type nriSettings struct {
	NodeName, Hosts, ConfigPath, StateDir, Socket, TokenFile, Metrics, LogLevel, LogFile string
}

// nriText is hopless-nri's configuration.
func nriText(s nriSettings) []byte {
	var b strings.Builder
	b.WriteString("# Written by hopless-install.\n")
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s = %q\n", k, v)
		}
	}
	kv("node_config", NodeConfig)
	kv("node_name", s.NodeName)
	kv("hosts", s.Hosts)
	kv("config_path", s.ConfigPath)
	kv("state_dir", s.StateDir)
	kv("containerd_socket", s.Socket)
	kv("pins_token_file", s.TokenFile)
	kv("metrics_listen", s.Metrics)
	kv("log_level", s.LogLevel)
	kv("log_file", s.LogFile)
	return []byte(b.String())
}

func encodeTOML(v any) ([]byte, error) {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
