package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ModeNRI runs stock containerd with NRI on and hopless-nri keeping the image
// host's hosts.toml pointed at the masters, in the node's order.
const ModeNRI = "nri"

// Ways of running the NRI plugin in ModeNRI (Options.NRIPlugin).
const (
	// NRIExternal runs bin/hopless-nri as its own process that connects to the
	// node's NRI socket, as a DaemonSet does.
	NRIExternal = "external"
	// NRIPreinstalled puts it in the node's NRI plugin directory as 10-hopless,
	// for containerd to launch.
	NRIPreinstalled = "preinstalled"
)

// nriPrefix names the external plugins' processes: nri-1 runs beside node-1.
const nriPrefix = "nri-"

// NRIPluginName is the pre-installed plugin's file name, index and name.
const NRIPluginName = "10-hopless"

// NRIDir is node's NRI directory: its socket, plugins and their configs.
func (n Node) NRIDir() string { return filepath.Join(n.Dir, "nri") }

// NRISocket is node's NRI socket.
func (n Node) NRISocket() string { return filepath.Join(n.NRIDir(), "nri.sock") }

// NRIPluginDir and NRIConfDir are where node's containerd looks for pre-installed
// NRI plugins and their configs.
func (n Node) NRIPluginDir() string { return filepath.Join(n.NRIDir(), "plugins") }

// NRIConfDir is where node's containerd looks for pre-installed plugins' configs.
func (n Node) NRIConfDir() string { return filepath.Join(n.NRIDir(), "conf.d") }

// NRIConfig is the NRI plugin's configuration file of node.
func (n Node) NRIConfig() string { return filepath.Join(n.Dir, "hopless", "nri.toml") }

// NRIStateDir is the NRI plugin's state directory on node.
func (n Node) NRIStateDir() string { return filepath.Join(n.Dir, "nri-state") }

// NRILog is the NRI plugin's log on node.
func (n Node) NRILog() string { return filepath.Join(n.Dir, "hopless", "nri.log") }

// HostsToml is the path of node's hosts.toml for host.
func (n Node) HostsToml(host string) string {
	return filepath.Join(n.Dir, "certs.d", host, "hosts.toml")
}

// writeNRIConfig writes node i's node.toml and the plugin's configuration, its
// pins token, and, for a pre-installed plugin, the binary and config in the NRI
// directories. The binary is staged beside the plugin directory and renamed in:
// containerd refuses to start NRI, and CRI with it, when it finds a file in the
// plugin directory whose name is not NN-name.
func (l *Lab) writeNRIConfig(n Node, i int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# hopless lab: the masters of %s for %s\n[[registry]]\nhost = %q\n[registry.tls]\nca = %q\n", l.ImageHost, n.Name, l.ImageHost, l.caOf(n))
	for j, m := range l.Masters {
		w := 1
		if len(l.Weights) > j {
			w = l.Weights[j]
		}
		fmt.Fprintf(&b, "[[registry.endpoint]]\nurl = \"https://%s\"\nweight = %d\n", m.Addr, w)
	}
	nodeToml := filepath.Join(n.Dir, "hopless", "node.toml")
	if err := writeFile(nodeToml, []byte(b.String()), 0o644); err != nil {
		return err
	}
	token, err := l.NodeToken(n.Name)
	if err != nil {
		return fmt.Errorf("deriving %s's pins token: %w", n.Name, err)
	}
	tokenFile := filepath.Join(n.Dir, "hopless", "node.token")
	if err := writeFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	// Beside our containerd build, the plugin is left to find out that it must
	// leave hosts.toml alone.
	hostsMode := "manage"
	if l.modeOf(n) == ModeInprocess {
		hostsMode = "auto"
	}
	cfg := fmt.Sprintf(`# hopless-nri of lab node %s
node_config = %q
node_name = %q
hosts = %q
config_path = %q
state_dir = %q
containerd_socket = %q
pins_token_file = %q
metrics_listen = %q
log_level = "debug"
log_file = %q
`, n.Name, nodeToml, n.Name, hostsMode, filepath.Join(n.Dir, "certs.d"), n.NRIStateDir(), n.Sock, tokenFile, NRIMetricsAddr(l.Slot, i), n.NRILog())
	if l.NRIExtra != "" {
		cfg += "# Options.NRIExtra\n" + l.NRIExtra + "\n"
	}
	if err := writeFile(n.NRIConfig(), []byte(cfg), 0o644); err != nil {
		return err
	}
	for _, d := range []string{n.NRIPluginDir(), n.NRIConfDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if n.NRIPlugin != NRIPreinstalled {
		return nil
	}
	if err := writeFile(filepath.Join(n.NRIConfDir(), NRIPluginName+".conf"), []byte(cfg), 0o644); err != nil {
		return err
	}
	return installFile(filepath.Join(l.BinDir, "hopless-nri"), filepath.Join(n.NRIDir(), "stage"), filepath.Join(n.NRIPluginDir(), NRIPluginName))
}

// installFile copies src to dst through a file in stage, renamed into place.
func installFile(src, stage, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	defer in.Close()
	if err := os.MkdirAll(stage, 0o700); err != nil {
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	tmp, err := os.CreateTemp(stage, filepath.Base(dst)+".*")
	if err != nil {
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	return nil
}

// startNRI starts node i's external NRI plugin, once its containerd runs.
func (l *Lab) startNRI(ctx context.Context, i int) error {
	n := l.Nodes[i-1]
	name := fmt.Sprintf("%s%d", nriPrefix, i)
	args := []string{filepath.Join(l.BinDir, "hopless-nri"), "run", "--config", n.NRIConfig(), "--socket", n.NRISocket()}
	return l.launch(ctx, name, args, filepath.Join(n.Dir, "nri.out"), l.nriReady(i))
}

// nriReady passes once node i's plugin serves its metrics and, on a node in
// ModeNRI, has written the image host's hosts.toml.
func (l *Lab) nriReady(i int) func(context.Context) error {
	return func(ctx context.Context) error {
		if i < 1 || i > len(l.Nodes) {
			return fmt.Errorf("lab has no node %d", i)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+NRIMetricsAddr(l.Slot, i)+"/metrics", nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("hopless-nri metrics: %s", resp.Status)
		}
		if l.NodeMode(i) != ModeNRI {
			return nil
		}
		b, err := os.ReadFile(l.Nodes[i-1].HostsToml(l.ImageHost))
		if err != nil {
			return err
		}
		if !strings.HasPrefix(string(b), "# managed by hopless-nri") {
			return fmt.Errorf("%s is not written by hopless-nri yet", l.Nodes[i-1].HostsToml(l.ImageHost))
		}
		return nil
	}
}
