package lab

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/plugin/config"
)

// HoplessSection is the key of the hopless plugin's section in containerd's
// config.toml, [plugins.'<HoplessSection>']: the plugin's type and ID, as
// plugin/config defines them.
const HoplessSection = config.Type + "." + config.ID

// containerdConfig is a node's config.toml: its own root, state and sockets, the
// native snapshotter, NRI off (one NRI socket per machine), and a single config_path
// dir, which the transfer service needs to read hosts.toml.
var containerdConfig = template.Must(template.New("config.toml").Funcs(template.FuncMap{"indent": indent}).Parse(`# containerd of lab {{.Name}}
version = 4
root = '{{.Dir}}/root'
state = '{{.Dir}}/state'
imports = []
disabled_plugins = [
{{- if not .NRI}}
  'io.containerd.nri.v1.nri',
{{- end}}
{{- range .Disabled}}
  '{{.}}',
{{- end}}
]

[plugins.'io.containerd.server.v1.grpc']
  address = '{{.Sock}}'

[plugins.'io.containerd.server.v1.ttrpc']
  address = '{{.Sock}}.ttrpc'
{{with .NRI}}
# NRI on, with this node's own socket and plugin directories.
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = '{{.NRISocket}}'
  plugin_path = '{{.NRIPluginDir}}'
  plugin_config_path = '{{.NRIConfDir}}'
{{end}}
[plugins.'io.containerd.internal.v1.opt']
  path = '{{.Dir}}/opt'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
{{- with .CRIImagesExtra}}
  # Options.CRIImagesExtra
{{indent .}}
{{- end}}
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = '{{.CRIConfigPath}}'
{{- with .Sandbox}}
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{{.}}'

# Containers run with Debian's runc; the shim is beside containerd. The sandbox may
# not lower its OOM score here (no CAP_SYS_RESOURCE): keep containerd's.
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '{{$.Runc}}'
{{- end}}

[plugins.'io.containerd.transfer.v1.local']
  config_path = '{{.Dir}}/certs.d'
  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
    platform = 'linux/amd64'
    snapshotter = 'native'
    differ = 'walking'
{{if .Hopless}}
# hopless: pulls of the image host go straight to the masters, balanced by weight and
# health inside containerd.
[plugins.'io.containerd.server.v1.metrics']
  address = '{{.Metrics}}'

# The debug socket serves the balancer's state (containerd hopless-status).
[plugins.'io.containerd.server.v1.debug']
  address = '{{.Sock}}.debug'

[plugins.'{{.Section}}']
{{- with .HoplessExtra}}
  # Options.HoplessExtra
{{indent .}}
{{- end}}
  [[plugins.'{{.Section}}'.registry]]
    host = '{{.Hopless.Host}}'
    fallback = {{.Hopless.Fallback}}
{{- with .RegistryExtra}}
    # Options.RegistryExtra
{{indent (indent .)}}
{{- end}}
    [plugins.'{{.Section}}'.registry.tls]
      ca = '{{.Hopless.CA}}'
{{- with .Hopless.Credentials}}
    [plugins.'{{$.Section}}'.registry.auth]
      credentials_file = '{{.}}'
{{- end}}
{{- range .Hopless.Endpoints}}
    [[plugins.'{{$.Section}}'.registry.endpoint]]
      url = 'https://{{.Addr}}'
      weight = {{.Weight}}
{{- end}}
{{end}}`))

// disabledPlugins are the plugins that the lab's containerd nodes (and host roots'
// distro configs) disable: snapshotters that do not work on this machine, and
// tracing.
func disabledPlugins() []string {
	return []string{
		"io.containerd.snapshotter.v1.overlayfs",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.blockfile",
		"io.containerd.snapshotter.v1.erofs",
		"io.containerd.differ.v1.erofs",
		"io.containerd.mount-handler.v1.erofs",
		"io.containerd.internal.v1.tracing",
		"io.containerd.tracing.processor.v1.otlp",
	}
}

// indent indents each line of raw TOML by two spaces, as the table it is in.
func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}

// hopless is the node's hopless plugin section (inprocess mode).
type hopless struct {
	Host        string
	CA          string
	Fallback    bool
	Credentials string
	Endpoints   []struct {
		Addr   string
		Weight int
	}
}

// hostsToml is the image host's hosts.toml: the masters, in order, with a short dial
// timeout (stock mode), or just a server (inprocess mode's original path).
var hostsToml = template.Must(template.New("hosts.toml").Parse(`# hopless lab: {{.Why}}
server = "https://{{.Server}}"
ca = "{{.CA}}"
{{range .Masters}}
[host."https://{{.}}"]
  capabilities = ["pull", "resolve"]
  ca = "{{$.CA}}"
  dial_timeout = "1s"
{{end}}`))

// upstreamHostsToml lets a node pull from the upstream, or from a stock proxy, with no
// masters in between (for baselines).
var upstreamHostsToml = template.Must(template.New("hosts.toml").Parse(`# hopless lab: {{.Why}}
server = "https://{{.Host}}"
ca = "{{.CA}}"
`))

func render(t *template.Template, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", t.Name(), err)
	}
	return b.Bytes(), nil
}

// modeOf is n's mode: its own, or the lab's.
func (l *Lab) modeOf(n Node) string {
	if n.Mode != "" {
		return n.Mode
	}
	return l.Mode
}

func (l *Lab) writeNodeConfig(n Node, i int) error {
	data := map[string]any{"Name": n.Name, "Dir": n.Dir, "Sock": n.Sock, "Hopless": (*hopless)(nil), "NRI": (*Node)(nil),
		"Section": HoplessSection, "CRIImagesExtra": l.CRIImagesExtra, "HoplessExtra": l.HoplessExtra, "RegistryExtra": l.RegistryExtra,
		"CRIConfigPath": filepath.Join(n.Dir, "certs.d"), "Sandbox": "", "Disabled": disabledPlugins()}
	if l.Containers {
		data["Sandbox"], data["Runc"] = l.SandboxImage(), runcPath(l.ToolsDir)
	}
	if l.CRIConfigPath != "" {
		data["CRIConfigPath"] = strings.ReplaceAll(l.CRIConfigPath, "{{dir}}", n.Dir)
	}
	var masters []string
	for _, m := range l.Masters {
		masters = append(masters, m.Addr)
	}
	ca := l.caOf(n)
	// The image host's hosts.toml is the node's original path: the masters in stock
	// mode; in inprocess mode, where the plugin reaches the masters, the upstream, which
	// a fallback pull then uses.
	hostsData := map[string]any{"Why": l.ImageHost + " is served by the masters", "Server": l.ImageHost, "CA": ca, "Masters": masters}
	mode := l.modeOf(n)
	if mode == ModeInprocess {
		h := &hopless{Host: l.ImageHost, CA: ca, Fallback: l.Fallback, Credentials: l.NodeCredentials}
		for j, m := range l.Masters {
			w := 1
			if len(l.Weights) > j {
				w = l.Weights[j]
			}
			h.Endpoints = append(h.Endpoints, struct {
				Addr   string
				Weight int
			}{m.Addr, w})
		}
		data["Hopless"] = h
		data["Metrics"] = NodeMetricsAddr(l.Slot, i)
		hostsData = map[string]any{"Why": "the hopless plugin serves " + l.ImageHost + "; a fallback pull goes to the upstream", "Server": l.Upstream, "CA": ca, "Masters": nil}
	}
	if mode == ModeNginx {
		hostsData = l.nginxHostsData(n, i)
	}
	if mode == ModeInprocess && n.NRIPlugin != "" {
		data["NRI"] = &n
		if err := l.writeNRIConfig(n, i); err != nil {
			return err
		}
	}
	if mode == ModeNRI {
		// What the node had before hopless: the image host alone, where nothing
		// listens. hopless-nri backs it up before its first write.
		hostsData = map[string]any{"Why": "the node's own hosts.toml, before hopless-nri", "Server": l.ImageHost, "CA": ca, "Masters": nil}
		data["NRI"] = &n
		if err := l.writeNRIConfig(n, i); err != nil {
			return err
		}
	}
	cfg, err := render(containerdConfig, data)
	if err != nil {
		return err
	}
	// The extra lines are raw TOML: a mistake in them is reported here, naming
	// them, rather than as a containerd that does not start.
	if _, err := toml.Decode(string(cfg), new(map[string]any)); err != nil {
		return fmt.Errorf("%s's config.toml is not valid TOML (check the CRI images and hopless extra lines): %w", n.Name, err)
	}
	if err := writeFile(filepath.Join(n.Dir, "config.toml"), cfg, 0o644); err != nil {
		return err
	}
	hosts, err := render(hostsToml, hostsData)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(n.Dir, "certs.d", l.ImageHost, "hosts.toml"), hosts, 0o644); err != nil {
		return err
	}
	direct := map[string]string{l.Upstream: "direct pulls from the upstream"}
	for _, p := range l.Proxies() {
		direct[p.Addr] = "pulls through " + p.Name + ", distribution's own proxy (a baseline)"
	}
	for host, why := range direct {
		up, err := render(upstreamHostsToml, map[string]any{"Host": host, "CA": ca, "Why": why})
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(n.Dir, "certs.d", host, "hosts.toml"), up, 0o644); err != nil {
			return err
		}
	}
	crictl := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n", n.Sock, n.Sock)
	return writeFile(n.Crictl, []byte(crictl), 0o644)
}
