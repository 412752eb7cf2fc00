// Package lab stands up a whole cluster's image-pull path on one machine: an upstream
// registry, registryd masters on 127.0.1.N:5001 and containerd nodes, each with its
// own root, state and socket. Every process is recorded by PID in DIR/lab.json and
// stopped only through that PID.
package lab

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Node modes.
const (
	// ModeStock runs stock containerd with hosts.toml listing the masters.
	ModeStock = "stock"
	// ModeInprocess runs our containerd build (bin/containerd), whose hopless plugin
	// balances the image host over the masters.
	ModeInprocess = "inprocess"
)

// Fixed lab addresses. Masters are 127.0.1.N:5001; the image host is an address where
// nothing listens, so a pull can only be served by the hosts that hosts.toml lists.
const (
	UpstreamPath = "deckhouse/ce"
	LocalPrefix  = "system/deckhouse"
	stateFile    = "lab.json"
	marker       = ".hopless-lab"
	readyTimeout = 20 * time.Second
	stopGrace    = 10 * time.Second
)

// A slot is a separate loopback network, 127.<slot>.0.0/16, so that labs in
// different slots can run at once (tests use this to run in parallel).

// UpstreamAddr is the upstream's address in slot.
func UpstreamAddr(slot int) string { return fmt.Sprintf("127.%d.3.1:5000", slot) }

// ImageHost is the image host that nodes pull, in slot.
func ImageHost(slot int) string { return fmt.Sprintf("127.%d.2.1:5001", slot) }

// MasterAddr is the listen address of master i (1-based) in slot.
func MasterAddr(slot, i int) string { return fmt.Sprintf("127.%d.1.%d:5001", slot, i) }

// NodeMetricsAddr is containerd's metrics address on node i (1-based) in slot.
func NodeMetricsAddr(slot, i int) string { return fmt.Sprintf("127.%d.6.%d:1338", slot, i) }

// NRIMetricsAddr is the metrics address of node i's hopless-nri in slot.
func NRIMetricsAddr(slot, i int) string { return fmt.Sprintf("127.%d.6.%d:1339", slot, i) }

// ServiceName is the name every master's certificate carries besides its address:
// the lab's stand-in for the cluster's registry Service (a headless Service over the
// masters), which in-cluster clients reach the masters by. Nothing resolves it; a
// client dials one master's address for it (see the e2e tests of the read API).
const ServiceName = "registry.hopless-lab.svc"

// MasterMetricsAddr is the metrics address of master i (1-based) in slot.
func MasterMetricsAddr(slot, i int) string { return fmt.Sprintf("127.%d.1.%d:9101", slot, i) }

// MasterPprofAddr is the debug.pprof_listen address of master i (1-based) in slot,
// used when RegistrydOptions.Pprof is set.
func MasterPprofAddr(slot, i int) string { return fmt.Sprintf("127.%d.1.%d:6060", slot, i) }

// Options say what Up starts.
type Options struct {
	Dir     string
	Masters int
	Nodes   int
	// Mode is every node's mode, or, with NodeModes, the lab's default mode.
	Mode string
	// NodeModes, if set, is each node's own mode, node-1 first: exactly one per
	// node. Empty means every node is Mode.
	NodeModes []string
	// Slot picks the loopback network 127.<slot>.0.0/16; 0 is the default.
	Slot int
	// BinDir holds registryd and hopless-lab; ToolsDir holds containerd-stock and crictl.
	BinDir   string
	ToolsDir string
	// Registryd tunes the masters; zero values keep registryd's defaults.
	Registryd RegistrydOptions
	// Proxies is the number of stock distribution proxies to start, the
	// benchmarks' baseline (see baseline.go); 0 starts none.
	Proxies int
	// NginxToProxies sends the nginx nodes' hops least_conn to the stock
	// proxies instead of the masters, the system as clusters run it today (see
	// PullRefFor for what such a node pulls). It needs Proxies and a node in
	// ModeNginx.
	NginxToProxies bool
	// Weights are the masters' weights in the nodes' hopless config (inprocess mode);
	// empty means 1 each.
	Weights []int
	// Fallback lets inprocess nodes fall back to the image host's own hosts.toml
	// (which points at the upstream) when every master is down.
	Fallback bool
	// NodeCredentials is a "user:password" file (mode 0600) that inprocess nodes
	// answer the masters' auth challenges with (registry.auth.credentials_file).
	NodeCredentials string
	// CRIImagesExtra is raw TOML lines added to every node's
	// [plugins.'io.containerd.cri.v1.images'] table, e.g.
	// "discard_unpacked_layers = true".
	CRIImagesExtra string
	// HoplessExtra is raw TOML lines added at the top of the inprocess nodes'
	// hopless plugin section, e.g. "cri_local_pull = 'warn'".
	HoplessExtra string
	// RegistryExtra is raw TOML lines added to the image host's [[registry]] table
	// of the inprocess nodes, e.g. "hedge = { budget_percent = 0 }".
	RegistryExtra string
	// NoCRIWait makes a node count as started once containerd's socket accepts
	// connections, instead of once CRI answers: for nodes whose CRI is meant to
	// fail.
	NoCRIWait bool
	// NRIPlugin is how ModeNRI runs hopless-nri: NRIExternal (default) or
	// NRIPreinstalled.
	NRIPlugin string
	// NRIExtra is raw TOML lines added to the NRI plugin's configuration.
	NRIExtra string
	// CRIConfigPath replaces CRI's registry config_path (by default the node's
	// certs.d); "{{dir}}" in it is the node's directory.
	CRIConfigPath string
	// Containers lets the nodes run pods and containers: Debian's runc, the shim
	// beside containerd-stock, and a sandbox image of bin/lab-pause in the
	// upstream (containers.go). Pods use the host network: there is no CNI.
	Containers bool
	// Storage is the masters' and the stock proxies' storage: StorageFilesystem
	// (default) or StorageS3, one bucket for all of them on a SeaweedFS server
	// (s3.go).
	Storage string
	// NodeCAs gives nodes, by name, a CA file to trust in place of the lab's CA:
	// a wrong CA on one node.
	NodeCAs map[string]string
}

// RegistrydOptions tune the masters' registryd.toml.
type RegistrydOptions struct {
	// TagTTL is cache.tag_ttl, e.g. "2s".
	TagTTL string `json:"tag_ttl,omitempty"`
	// MaxBytes is storage.max_bytes, e.g. "64MiB".
	MaxBytes string `json:"max_bytes,omitempty"`
	// EvictInterval is storage.evict_interval.
	EvictInterval string `json:"evict_interval,omitempty"`
	// TTL is storage.ttl, e.g. "1m".
	TTL string `json:"ttl,omitempty"`
	// EvictGrace is storage.evict_grace, on shared storage (--storage s3).
	EvictGrace string `json:"evict_grace,omitempty"`
	// ScrubInterval is storage.scrub_interval, the least time between two scrub
	// passes, e.g. "2s".
	ScrubInterval string `json:"scrub_interval,omitempty"`
	// PeerHealthInterval is peers.health_interval, e.g. "1h" to leave marking a
	// peer down to the failures of requests to it.
	PeerHealthInterval string `json:"peer_health_interval,omitempty"`
	// NoPeers leaves the peers section out: each master fills on its own.
	NoPeers bool `json:"no_peers,omitempty"`
	// StorageTmpfs, e.g. "24m", puts each master's storage root, and each stock
	// proxy's storage directory, on a tmpfs of that size (tmpfs.go); it needs root.
	StorageTmpfs string `json:"storage_tmpfs,omitempty"`
	// PinTTL is api.pin_ttl, e.g. "10s".
	PinTTL string `json:"pin_ttl,omitempty"`
	// Pprof serves each master's profiles on MasterPprofAddr (debug.pprof_listen).
	Pprof bool `json:"pprof,omitempty"`
}

// Master is one registryd.
type Master struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Metrics string `json:"metrics"`
	Log     string `json:"log"`
}

// Node is one containerd.
type Node struct {
	Name   string `json:"name"`
	Sock   string `json:"sock"`
	Crictl string `json:"crictl"`
	Dir    string `json:"dir"`
	// HostRoot is, for a node started by StartHostRootNode, the host root it runs
	// chrooted into; Dir then holds only its crictl.yaml and log.
	HostRoot string `json:"host_root,omitempty"`
	// Mode is the node's mode; empty (a host-root node, an older lab.json) means
	// the lab's Mode.
	Mode string `json:"mode,omitempty"`
	// NRIPlugin is how the node runs hopless-nri (NRIExternal, NRIPreinstalled),
	// empty for none.
	NRIPlugin string `json:"nri_plugin,omitempty"`
	// CA is the CA file the node trusts for the masters and the upstream; empty
	// is the lab's CA.
	CA string `json:"ca,omitempty"`
}

// caOf is the CA file node n trusts.
func (l *Lab) caOf(n Node) string {
	if n.CA != "" {
		return n.CA
	}
	return l.CA
}

// Lab is a running (or recorded) lab.
type Lab struct {
	Dir string `json:"dir"`
	// Mode is the lab's default node mode; NodeMode says each node's own.
	Mode      string   `json:"mode"`
	Slot      int      `json:"slot"`
	BinDir    string   `json:"bin_dir"`
	ToolsDir  string   `json:"tools_dir"`
	CA        string   `json:"ca"`
	Upstream  string   `json:"upstream"`
	AccessLog string   `json:"access_log"`
	ImageHost string   `json:"image_host"`
	Masters   []Master `json:"masters"`
	// APIToken is the file holding the masters' /hopless/v1 API token.
	APIToken  string           `json:"api_token"`
	Registryd RegistrydOptions `json:"registryd"`
	Nodes     []Node           `json:"nodes"`
	Procs     []*Proc          `json:"procs"`
	Weights   []int            `json:"weights,omitempty"`
	Fallback  bool             `json:"fallback,omitempty"`
	// NodeCredentials is the Option of the same name.
	NodeCredentials string `json:"node_credentials,omitempty"`
	// CRIImagesExtra, HoplessExtra and NoCRIWait are the Options of the same
	// names.
	CRIImagesExtra string `json:"cri_images_extra,omitempty"`
	HoplessExtra   string `json:"hopless_extra,omitempty"`
	RegistryExtra  string `json:"registry_extra,omitempty"`
	NoCRIWait      bool   `json:"no_cri_wait,omitempty"`
	// NRIPlugin and NRIExtra are the Options of the same names (ModeNRI).
	NRIPlugin string `json:"nri_plugin,omitempty"`
	NRIExtra  string `json:"nri_extra,omitempty"`
	// CRIConfigPath and Containers are the Options of the same names.
	CRIConfigPath string `json:"cri_config_path,omitempty"`
	Containers    bool   `json:"containers,omitempty"`
	// Storage is the Option of the same name.
	Storage string `json:"storage,omitempty"`
	// NodeCAs is the Option of the same name.
	NodeCAs map[string]string `json:"node_cas,omitempty"`
	// NginxToProxies says that the nginx nodes' hops go to the stock proxies
	// (Options.NginxToProxies, or HopToProxies since).
	NginxToProxies bool `json:"nginx_to_proxies,omitempty"`
}

// NodeMode is node i's (1-based) mode: the lab's Mode unless the node has one of
// its own.
func (l *Lab) NodeMode(i int) string {
	if i >= 1 && i <= len(l.Nodes) {
		return l.modeOf(l.Nodes[i-1])
	}
	return l.Mode
}

// nodeModes is every node's mode, node-1 first.
func (l *Lab) nodeModes() []string {
	modes := make([]string, len(l.Nodes))
	for i := range modes {
		modes[i] = l.NodeMode(i + 1)
	}
	return modes
}

// FaultsFile is where the upstream reads the faults it injects (see WriteFaults).
func (l *Lab) FaultsFile() string { return filepath.Join(l.Dir, "upstream", "faults.json") }

// Open loads the lab recorded in dir.
func Open(dir string) (*Lab, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("lab dir %q: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no lab is up in %s (no %s)", dir, stateFile)
		}
		return nil, fmt.Errorf("reading lab state: %w", err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lab state %s is corrupt: %w", filepath.Join(dir, stateFile), err)
	}
	return &l, nil
}

// Up starts a lab. On any failure it stops what it started.
func Up(ctx context.Context, o Options) (*Lab, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("lab dir %q: %w", o.Dir, err)
	}
	if old, err := Open(dir); err == nil {
		for _, p := range old.Procs {
			if p.Alive() {
				return nil, fmt.Errorf("a lab is already up in %s (%s has pid %d); run hopless-lab down --dir %s first", dir, p.Name, p.PID, dir)
			}
		}
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	addrs := []string{UpstreamAddr(o.Slot)}
	if o.Storage == StorageS3 {
		addrs = append(addrs, s3Addrs(o.Slot)...)
	}
	for i := 1; i <= o.Masters; i++ {
		addrs = append(addrs, MasterAddr(o.Slot, i), MasterMetricsAddr(o.Slot, i))
		if o.Registryd.Pprof {
			addrs = append(addrs, MasterPprofAddr(o.Slot, i))
		}
	}
	for _, a := range addrs {
		if err := checkFree(a); err != nil {
			return nil, err
		}
	}
	l := &Lab{
		Dir: dir, Mode: o.Mode, BinDir: o.BinDir, ToolsDir: o.ToolsDir,
		CA:              filepath.Join(dir, "ca", "ca.pem"),
		Slot:            o.Slot,
		Upstream:        UpstreamAddr(o.Slot),
		AccessLog:       filepath.Join(dir, "upstream", "access.log"),
		ImageHost:       ImageHost(o.Slot),
		APIToken:        filepath.Join(dir, "secrets", "api.token"),
		Registryd:       o.Registryd,
		Weights:         o.Weights,
		Fallback:        o.Fallback,
		NodeCredentials: o.NodeCredentials,

		CRIImagesExtra: o.CRIImagesExtra,
		HoplessExtra:   o.HoplessExtra,
		RegistryExtra:  o.RegistryExtra,
		NoCRIWait:      o.NoCRIWait,
		NRIPlugin:      o.NRIPlugin,
		NRIExtra:       o.NRIExtra,
		CRIConfigPath:  o.CRIConfigPath,
		Containers:     o.Containers,
		Storage:        o.Storage,
		NginxToProxies: o.NginxToProxies,
		NodeCAs:        o.NodeCAs,
	}
	if l.NRIPlugin == "" && slices.Contains(o.modes(), ModeNRI) {
		l.NRIPlugin = NRIExternal
	}
	if err := l.up(ctx, o); err != nil {
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, err
	}
	return l, nil
}

func (o *Options) check() error {
	if o.Dir == "" {
		return errors.New("lab: --dir is required")
	}
	if o.Masters < 1 || o.Masters > 200 {
		return fmt.Errorf("lab: --masters must be 1..200, got %d", o.Masters)
	}
	if o.Nodes < 0 || o.Nodes > 50 {
		return fmt.Errorf("lab: --nodes must be 0..50, got %d", o.Nodes)
	}
	if o.Slot < 0 || o.Slot > 255 {
		return fmt.Errorf("lab: --slot must be 0..255, got %d", o.Slot)
	}
	if err := o.checkModes(); err != nil {
		return err
	}
	if o.Containers {
		if err := checkContainers(o); err != nil {
			return err
		}
	}
	switch o.Storage {
	case StorageFilesystem:
	case StorageS3:
		if o.Registryd.StorageTmpfs != "" {
			return errors.New("lab: --storage s3 takes no storage tmpfs: the masters' storage is the bucket")
		}
		if _, err := os.Stat(filepath.Join(o.ToolsDir, "weed")); err != nil {
			return fmt.Errorf("lab: %s is missing (run make tools): %w", filepath.Join(o.ToolsDir, "weed"), err)
		}
	default:
		if o.Registryd.EvictGrace != "" {
			return errors.New("lab: evict_grace needs --storage s3, where the masters share storage")
		}
		return fmt.Errorf("lab: --storage %q is not supported; supported: filesystem (the default), %s", o.Storage, StorageS3)
	}
	if len(o.Weights) > 0 && len(o.Weights) != o.Masters {
		return fmt.Errorf("lab: --weights lists %d weights for %d masters", len(o.Weights), o.Masters)
	}
	for _, f := range []string{filepath.Join(o.BinDir, "registryd"), filepath.Join(o.BinDir, "hopless-lab"), filepath.Join(o.BinDir, "containerd"),
		filepath.Join(o.ToolsDir, "containerd-stock"), filepath.Join(o.ToolsDir, "crictl")} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("lab: %s is missing (run make build tools): %w", f, err)
		}
	}
	return nil
}

// supportedMode reports whether m is a node mode.
func supportedMode(m string) bool {
	switch m {
	case ModeStock, ModeInprocess, ModeNginx, ModeNRI:
		return true
	}
	return false
}

const supportedModes = ModeStock + ", " + ModeInprocess + ", " + ModeNginx + ", " + ModeNRI

// nodeMode is node i's (1-based) mode.
func (o *Options) nodeMode(i int) string {
	if i >= 1 && i <= len(o.NodeModes) {
		return o.NodeModes[i-1]
	}
	return o.Mode
}

// nodeModes is every node's mode, node-1 first.
func (o *Options) nodeModes() []string {
	modes := make([]string, o.Nodes)
	for i := range modes {
		modes[i] = o.nodeMode(i + 1)
	}
	return modes
}

// modes are the modes in use, for the checks that need a node of some mode: Mode
// alone (even with no nodes, as before NodeModes), or NodeModes.
func (o *Options) modes() []string {
	if len(o.NodeModes) > 0 {
		return o.NodeModes
	}
	return []string{o.Mode}
}

// modesFlag says the modes in use as the flags that set them, for errors.
func (o *Options) modesFlag() string {
	if len(o.NodeModes) > 0 {
		return "--node-modes " + strings.Join(o.NodeModes, ",")
	}
	return "--mode " + o.Mode
}

// nodeNRIPlugin is how node i (1-based) runs hopless-nri: always in ModeNRI
// (NRIExternal unless NRIPlugin says otherwise), beside an inprocess node only if
// NRIPlugin asks for it, never otherwise.
func (o *Options) nodeNRIPlugin(i int) string {
	switch o.nodeMode(i) {
	case ModeNRI:
		if o.NRIPlugin == "" {
			return NRIExternal
		}
		return o.NRIPlugin
	case ModeInprocess:
		return o.NRIPlugin
	}
	return ""
}

// checkModes checks Mode, NodeModes and the options that need a node of some
// mode. An empty Mode with NodeModes becomes node-1's mode.
func (o *Options) checkModes() error {
	if o.Mode == "" && len(o.NodeModes) > 0 {
		o.Mode = o.NodeModes[0]
	}
	if !supportedMode(o.Mode) {
		return fmt.Errorf("lab: --mode %q is not supported; supported: %s", o.Mode, supportedModes)
	}
	if len(o.NodeModes) > 0 && len(o.NodeModes) != o.Nodes {
		return fmt.Errorf("lab: --node-modes lists %d modes for %d nodes; give one per node", len(o.NodeModes), o.Nodes)
	}
	for i, m := range o.NodeModes {
		if !supportedMode(m) {
			return fmt.Errorf("lab: --node-modes: node-%d's mode %q is not supported; supported: %s", i+1, m, supportedModes)
		}
	}
	modes := o.modes()
	nri, inprocess, nginx := slices.Contains(modes, ModeNRI), slices.Contains(modes, ModeInprocess), slices.Contains(modes, ModeNginx)
	if o.NRIPlugin != "" && o.NRIPlugin != NRIExternal && o.NRIPlugin != NRIPreinstalled {
		return fmt.Errorf("lab: --nri-plugin %q is not supported; supported: %s, %s", o.NRIPlugin, NRIExternal, NRIPreinstalled)
	}
	if o.NRIPlugin != "" && !nri && !inprocess {
		return fmt.Errorf("lab: --nri-plugin needs a node in mode %s (or %s, beside the hopless plugin), got %s", ModeNRI, ModeInprocess, o.modesFlag())
	}
	if nri || o.NRIPlugin != "" {
		if _, err := os.Stat(filepath.Join(o.BinDir, "hopless-nri")); err != nil {
			return fmt.Errorf("lab: %s is missing (run make build): %w", filepath.Join(o.BinDir, "hopless-nri"), err)
		}
	}
	if nginx {
		if err := checkNginx(o.ToolsDir); err != nil {
			return err
		}
	}
	if (o.HoplessExtra != "" || o.RegistryExtra != "") && !inprocess {
		return fmt.Errorf("lab: hopless extra config needs a node in mode %s, got %s", ModeInprocess, o.modesFlag())
	}
	if o.NginxToProxies {
		if o.Proxies < 1 {
			return errors.New("lab: --nginx-to-proxies needs stock proxies (--proxies N)")
		}
		if !nginx {
			return fmt.Errorf("lab: --nginx-to-proxies needs a node in mode %s, got %s", ModeNginx, o.modesFlag())
		}
	}
	return nil
}

// prepareDir makes dir a fresh lab dir. It refuses a non-empty dir that is not one,
// so that a typo never wipes someone's files.
func prepareDir(dir string) error {
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading lab dir: %w", err)
	case len(ents) > 0:
		if _, err := os.Stat(filepath.Join(dir, marker)); err != nil {
			return fmt.Errorf("%s is not empty and is not a lab dir; choose an empty or new dir", dir)
		}
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("cleaning old lab dir: %w", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating lab dir: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, marker), nil, 0o644)
}

func checkFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("lab address %s is busy (is another lab up?): %w", addr, err)
	}
	return ln.Close()
}

func (l *Lab) up(ctx context.Context, o Options) error {
	ca, err := NewCA(filepath.Join(l.Dir, "ca"))
	if err != nil {
		return err
	}
	if err := l.writeSecrets(); err != nil {
		return err
	}
	if err := l.startUpstream(ctx, ca); err != nil {
		return err
	}
	if l.Storage == StorageS3 {
		if err := l.startS3(ctx, ca); err != nil {
			return err
		}
	}
	if l.Containers {
		if err := l.pushPause(ctx); err != nil {
			return err
		}
	}
	for i := 1; i <= o.Masters; i++ {
		l.Masters = append(l.Masters, Master{Name: fmt.Sprintf("master-%d", i), Addr: MasterAddr(l.Slot, i), Metrics: MasterMetricsAddr(l.Slot, i),
			Log: filepath.Join(l.Dir, fmt.Sprintf("master-%d", i), "log")})
	}
	// TLS stays end to end through an NGINX hop, so the certificates of whatever
	// the hops pass to must name the hops' addresses too.
	hops := nginxIPs(l.Slot, o.nodeModes())
	masterHops, proxyHops := hops, []net.IP(nil)
	if o.NginxToProxies {
		masterHops, proxyHops = nil, hops
	}
	for i := 1; i <= o.Masters; i++ {
		if err := l.startMaster(ctx, ca, i, masterHops...); err != nil {
			return err
		}
	}
	if err := l.startProxies(ctx, ca, o.Proxies, proxyHops...); err != nil {
		return err
	}
	for i := 1; i <= o.Nodes; i++ {
		if err := l.startNode(ctx, i, o.nodeMode(i), o.nodeNRIPlugin(i)); err != nil {
			return err
		}
	}
	return l.writeEnv()
}

func (l *Lab) startUpstream(ctx context.Context, ca *CA) error {
	d := filepath.Join(l.Dir, "upstream")
	if err := ca.Issue(d, net.ParseIP(strings.Split(l.Upstream, ":")[0])); err != nil {
		return err
	}
	args := []string{filepath.Join(l.BinDir, "hopless-lab"), "upstream",
		"--addr", l.Upstream, "--cert", filepath.Join(d, "cert.pem"), "--key", filepath.Join(d, "key.pem"),
		"--storage", filepath.Join(d, "data"), "--access-log", l.AccessLog, "--faults", l.FaultsFile()}
	return l.launch(ctx, "upstream", args, filepath.Join(d, "log"), httpsReady(ca.Pool(), "https://"+l.Upstream+"/v2/"))
}

func (l *Lab) proc(name string) *Proc {
	for _, p := range l.Procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// startMaster starts master i with a certificate for its own address and
// extraIPs (the nginx nodes' hops, when they go to the masters).
func (l *Lab) startMaster(ctx context.Context, ca *CA, i int, extraIPs ...net.IP) error {
	name := fmt.Sprintf("master-%d", i)
	d := filepath.Join(l.Dir, name)
	addr := MasterAddr(l.Slot, i)
	if err := ca.IssueService(d, append([]net.IP{net.ParseIP(strings.Split(addr, ":")[0])}, extraIPs...)...); err != nil {
		return err
	}
	if err := l.mountStorage(d); err != nil {
		return err
	}
	cfg, err := l.registrydConfig(name, i)
	if err != nil {
		return err
	}
	conf := filepath.Join(d, "registryd.toml")
	if err := writeFile(conf, cfg, 0o644); err != nil {
		return err
	}
	args := []string{filepath.Join(l.BinDir, "registryd"), "serve", "--config", conf}
	p := &Proc{Name: name, Args: args, Log: filepath.Join(d, "log"), Tag: l.Dir}
	if l.Storage == StorageS3 {
		// distribution's s3 driver has no CA setting; its SDK reads a CA bundle from
		// AWS_CA_BUNDLE: the lab's CA, which signed the S3 server's certificate.
		p.Env = []string{"AWS_CA_BUNDLE=" + l.CA}
	}
	return l.launchProc(ctx, p, httpsReady(ca.Pool(), "https://"+addr+"/readyz"))
}

// startNode starts node i in mode, with hopless-nri run as nriPlugin says (empty:
// none).
func (l *Lab) startNode(ctx context.Context, i int, mode, nriPlugin string) error {
	name := fmt.Sprintf("node-%d", i)
	d := filepath.Join(l.Dir, name)
	sock, err := l.socketPath(name)
	if err != nil {
		return err
	}
	n := Node{Name: name, Dir: d, Sock: sock, Crictl: filepath.Join(d, "crictl.yaml"), Mode: mode, NRIPlugin: nriPlugin, CA: l.NodeCAs[name]}
	if mode == ModeNginx {
		if err := l.startNginx(ctx, i); err != nil {
			return err
		}
	}
	if err := l.writeNodeConfig(n, i); err != nil {
		return err
	}
	l.Nodes = append(l.Nodes, n)
	bin := filepath.Join(l.ToolsDir, "containerd-stock")
	if mode == ModeInprocess {
		bin = filepath.Join(l.BinDir, "containerd")
	}
	args := []string{bin, "--config", filepath.Join(d, "config.toml")}
	if err := l.launch(ctx, name, args, filepath.Join(d, "log"), l.nodeReady(i)); err != nil {
		return err
	}
	switch nriPlugin {
	case "":
		return nil
	case NRIPreinstalled:
		return waitReady(ctx, l.proc(name), readyTimeout, l.nriReady(i))
	default:
		return l.startNRI(ctx, i)
	}
}

// nodeReady is node i's readiness check: CRI answers crictl version, or, with
// NoCRIWait, containerd's socket accepts a connection.
func (l *Lab) nodeReady(i int) func(context.Context) error {
	if l.NoCRIWait {
		return func(ctx context.Context) error {
			if i < 1 || i > len(l.Nodes) {
				return fmt.Errorf("lab has no node %d", i)
			}
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", l.Nodes[i-1].Sock)
			if err != nil {
				return err
			}
			return c.Close()
		}
	}
	return func(ctx context.Context) error {
		_, err := l.Crictl(ctx, i, "version")
		return err
	}
}

// launch starts a process, records it, and waits until ready passes.
func (l *Lab) launch(ctx context.Context, name string, args []string, logPath string, ready func(context.Context) error) error {
	return l.launchProc(ctx, &Proc{Name: name, Args: args, Log: logPath, Tag: l.Dir}, ready)
}

// launchProc is launch for a process record of its own (with Env).
func (l *Lab) launchProc(ctx context.Context, p *Proc, ready func(context.Context) error) error {
	if _, err := spawn(p); err != nil {
		return err
	}
	return l.run(ctx, p, ready)
}

// run records a started process, replacing the record of the same name, and waits
// until ready passes. A nil ready passes at once, or, for a host-root process, once
// hostroot-exec has exec'd its program.
func (l *Lab) run(ctx context.Context, p *Proc, ready func(context.Context) error) error {
	if ready == nil {
		ready = func(context.Context) error { return p.checkExeced() }
	}
	if old := l.proc(p.Name); old != nil {
		*old = *p
	} else {
		l.Procs = append(l.Procs, p)
	}
	if err := l.save(); err != nil {
		return err
	}
	return waitReady(ctx, p, readyTimeout, ready)
}

func httpsReady(pool *x509.CertPool, url string) func(context.Context) error {
	return httpsReadyTLS(&tls.Config{RootCAs: pool}, url)
}

// httpsReadyTLS is httpsReady with the client's TLS settings.
func httpsReadyTLS(cfg *tls.Config, url string) func(context.Context) error {
	c := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg},
	}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding lab state: %w", err)
	}
	return writeFile(filepath.Join(l.Dir, stateFile), b, 0o644)
}

// writeEnv writes lab.env, which a shell can source.
func (l *Lab) writeEnv() error {
	var masters []string
	for _, m := range l.Masters {
		masters = append(masters, m.Addr)
	}
	var b strings.Builder
	kv := func(k, v string) { fmt.Fprintf(&b, "%s=%s\n", k, shellQuote(v)) }
	kv("LAB_DIR", l.Dir)
	kv("LAB_MODE", l.Mode)
	kv("LAB_UPSTREAM", l.Upstream)
	kv("LAB_UPSTREAM_PATH", UpstreamPath)
	kv("LAB_MASTERS", strings.Join(masters, " "))
	kv("LAB_CA", l.CA)
	kv("LAB_IMAGE_HOST", l.ImageHost)
	kv("LAB_IMAGE_PREFIX", l.ImageHost+"/"+LocalPrefix)
	kv("LAB_NODES", strconv.Itoa(len(l.Nodes)))
	for i, n := range l.Nodes {
		kv(fmt.Sprintf("LAB_NODE_%d_SOCK", i+1), n.Sock)
		kv(fmt.Sprintf("LAB_NODE_%d_MODE", i+1), l.NodeMode(i+1))
		kv(fmt.Sprintf("LAB_CRICTL_%d", i+1), n.Crictl)
	}
	kv("LAB_CRICTL_BIN", filepath.Join(l.ToolsDir, "crictl"))
	return writeFile(filepath.Join(l.Dir, "lab.env"), []byte(b.String()), 0o644)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Down stops every recorded process, nodes first, and removes the state file. The
// logs and data stay for inspection.
func (l *Lab) Down() error {
	var errs []error
	l.syncProcs()
	// Pods first, while their containerd runs: their shims and sandboxes are not
	// children of any lab process.
	l.removePods()
	for i := len(l.Procs) - 1; i >= 0; i-- {
		if err := l.Procs[i].Stop(stopGraceFor(l.Procs[i].Name)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := l.unmountStorage(); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{stateFile, "lab.env"} {
		if err := os.Remove(filepath.Join(l.Dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(l.shortSocketDir()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// maxSocketPath leaves room for containerd's ".ttrpc" suffix within the 108 bytes of
// a unix socket address.
const maxSocketPath = 100

// socketPath is where node name's containerd listens: in its dir, or, when that path
// is too long for a unix socket (deep test dirs), in a short per-lab dir under the
// system temp dir.
func (l *Lab) socketPath(name string) (string, error) {
	p := filepath.Join(l.Dir, name, "containerd.sock")
	if len(p)+len(".ttrpc") <= maxSocketPath {
		return p, nil
	}
	d := l.shortSocketDir()
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("creating socket dir: %w", err)
	}
	return filepath.Join(d, name+".sock"), nil
}

func (l *Lab) shortSocketDir() string {
	sum := sha256.Sum256([]byte(l.Dir))
	return filepath.Join(os.TempDir(), "hopless-lab-"+hex.EncodeToString(sum[:6]))
}

// Status describes one process of the lab.
type Status struct {
	Name  string
	PID   int
	Alive bool
	Addr  string
}

// Status lists every process and whether it runs.
func (l *Lab) Status() []Status {
	l.syncProcs()
	addr := map[string]string{"upstream": l.Upstream, S3Name: S3Endpoint(l.Slot)}
	for _, m := range l.Masters {
		addr[m.Name] = m.Addr
	}
	for _, n := range l.Nodes {
		addr[n.Name] = n.Sock
	}
	for i := range l.Nodes {
		addr[NginxName(i+1)] = NginxAddr(l.Slot, i+1)
	}
	var out []Status
	for _, p := range l.Procs {
		out = append(out, Status{Name: p.Name, PID: p.PID, Alive: p.Alive(), Addr: addr[p.Name]})
	}
	return out
}

// Signal sends sig to the named process ("upstream", "master-2", "node-1").
func (l *Lab) Signal(name string, sig syscall.Signal) error {
	l.syncProcs()
	p := l.proc(name)
	if p == nil {
		return fmt.Errorf("lab has no process %q", name)
	}
	return p.Signal(sig)
}

// Stop stops the named process gracefully.
func (l *Lab) Stop(name string) error {
	l.syncProcs()
	p := l.proc(name)
	if p == nil {
		return fmt.Errorf("lab has no process %q", name)
	}
	return p.Stop(stopGraceFor(name))
}

// Start starts the named process again with its original command line and waits
// until it answers. A host-root node runs what its unit and drop-ins say now; another
// host-root process runs its command again and is waited for only until it starts.
func (l *Lab) Start(ctx context.Context, name string) error {
	l.syncProcs()
	p := l.proc(name)
	if p == nil {
		return fmt.Errorf("lab has no process %q", name)
	}
	if p.Alive() {
		return fmt.Errorf("%s is already running (pid %d)", name, p.PID)
	}
	if i, err := l.NodeIndex(name); err == nil && l.Nodes[i-1].HostRoot != "" {
		return l.startHostRootNode(ctx, i)
	}
	if p.HostRoot != "" {
		np, err := startHostRoot(name, p.HostRoot, p.Args, p.Log)
		if err != nil {
			return err
		}
		return l.run(ctx, np, nil)
	}
	pool, err := LoadPool(l.CA)
	if err != nil {
		return err
	}
	return l.startProc(ctx, p, &tls.Config{RootCAs: pool})
}

// startProc starts p, a stopped process of the lab, again; its readiness check
// connects with cfg.
func (l *Lab) startProc(ctx context.Context, p *Proc, cfg *tls.Config) error {
	name := p.Name
	pool := cfg.RootCAs
	var ready func(context.Context) error
	switch {
	case name == "upstream":
		ready = httpsReady(pool, "https://"+l.Upstream+"/v2/")
	case name == S3Name:
		np, err := start(name, p.Args, p.Log, l.Dir)
		if err != nil {
			return err
		}
		if err := l.run(ctx, np, func(context.Context) error { return nil }); err != nil {
			return err
		}
		return waitReady(ctx, np, s3ReadyTimeout, l.s3Ready())
	case strings.HasPrefix(name, "master-"):
		for _, m := range l.Masters {
			if m.Name == name {
				ready = httpsReadyTLS(cfg, "https://"+m.Addr+"/readyz")
			}
		}
	case strings.HasPrefix(name, "node-"):
		i, _ := strconv.Atoi(strings.TrimPrefix(name, "node-"))
		ready = l.nodeReady(i)
	case strings.HasPrefix(name, nriPrefix):
		i, _ := strconv.Atoi(strings.TrimPrefix(name, nriPrefix))
		ready = l.nriReady(i)
	case strings.HasPrefix(name, proxyPrefix):
		ready = l.proxyReady(cfg, name)
	case strings.HasPrefix(name, nginxPrefix):
		ready = l.nginxReady(pool, name)
	}
	return l.launchProc(ctx, &Proc{Name: name, Args: p.Args, Log: p.Log, Tag: l.Dir, Env: p.Env}, ready)
}

// Crictl runs crictl against node i (1-based) and returns its combined output.
func (l *Lab) Crictl(ctx context.Context, node int, args ...string) (string, error) {
	if node < 1 || node > len(l.Nodes) {
		return "", fmt.Errorf("lab has no node %d", node)
	}
	full := append([]string{"--config", l.Nodes[node-1].Crictl}, args...)
	out, err := exec.CommandContext(ctx, filepath.Join(l.ToolsDir, "crictl"), full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s on node-%d: %w: %s", strings.Join(args, " "), node, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// PullRefFor is the reference that node (1-based) pulls for an upstream
// repository: PullRef, except on an nginx node whose hop goes to the stock
// proxies (NginxToProxies), which know no local prefix: there it is the
// repository's upstream name, ImageHost/deckhouse/ce/X:tag.
func (l *Lab) PullRefFor(node int, repo, tag string) string {
	if l.NginxToProxies && l.NodeMode(node) == ModeNginx {
		return l.ImageHost + "/" + repo + ":" + tag
	}
	return l.PullRef(repo, tag)
}

// PullRef is the reference a node pulls for an upstream repository: repositories
// under the upstream path go through the local prefix alias, as in a real cluster.
func (l *Lab) PullRef(repo, tag string) string {
	if rest, ok := strings.CutPrefix(repo, UpstreamPath+"/"); ok {
		return l.ImageHost + "/" + LocalPrefix + "/" + rest + ":" + tag
	}
	return l.ImageHost + "/" + repo + ":" + tag
}
