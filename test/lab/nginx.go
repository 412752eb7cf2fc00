package lab

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
)

// ModeNginx is the system that hopless replaces: stock
// containerd whose hosts.toml lists one mirror, a per-node NGINX stream proxy
// that passes TCP through to the masters with least_conn. TLS stays end to end,
// from containerd to a master, so the masters' certificates also name every
// node's hop address.
const ModeNginx = "nginx"

// NginxAddr is the listen address of node i's (1-based) NGINX hop in slot.
func NginxAddr(slot, i int) string { return fmt.Sprintf("127.%d.5.%d:5001", slot, i) }

// NginxName is the lab process name of node i's (1-based) NGINX hop.
func NginxName(i int) string { return nginxPrefix + strconv.Itoa(i) }

const nginxPrefix = "nginx-"

// make tools unpacks Debian's nginx and its stream module into .tools/nginx,
// beside ToolsDir (.tools/bin).
func nginxBin(toolsDir string) string {
	return filepath.Join(toolsDir, "..", "nginx", "usr", "sbin", "nginx")
}

func nginxStreamModule(toolsDir string) string {
	return filepath.Join(toolsDir, "..", "nginx", "usr", "lib", "nginx", "modules", "ngx_stream_module.so")
}

// checkNginx fails unless make tools has unpacked nginx and its stream module.
func checkNginx(toolsDir string) error {
	for _, f := range []string{nginxBin(toolsDir), nginxStreamModule(toolsDir)} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("lab: %s is missing (run make tools): %w", f, err)
		}
	}
	return nil
}

// nginxConf is a node's hop, as real clusters configure it: plain TCP
// passthrough, least_conn over the masters, a 1 s connect timeout and a 1 h
// proxy timeout, no active health checks (only nginx's passive defaults,
// max_fails=1 fail_timeout=10s). It runs as one process with no workers
// (master_process off): a worker that handles every connection, so that lab
// down stops the whole hop through the one recorded PID.
var nginxConf = template.Must(template.New("nginx.conf").Parse(`# NGINX stream hop of lab {{.Node}}
load_module {{.Module}};
daemon off;
master_process off;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log;

events {
  worker_connections 1024;
}

stream {
  upstream masters {
    least_conn;
{{- range .Masters}}
    server {{.}};
{{- end}}
  }

  server {
    listen {{.Addr}};
    proxy_pass masters;
    proxy_connect_timeout 1s;
    proxy_timeout 1h;
  }
}
`))

// nginxIPs are the hop addresses of the nodes in nginx mode (modes[i] is node
// i+1's), which the certificates of what the hops pass to must name.
func nginxIPs(slot int, modes []string) []net.IP {
	var ips []net.IP
	for i, m := range modes {
		if m == ModeNginx {
			ips = append(ips, net.ParseIP(strings.Split(NginxAddr(slot, i+1), ":")[0]))
		}
	}
	return ips
}

// nginxBackends are what the hops pass to: the stock proxies with
// NginxToProxies, else the masters.
func (l *Lab) nginxBackends() []string {
	var addrs []string
	if l.NginxToProxies {
		for _, p := range l.Proxies() {
			addrs = append(addrs, p.Addr)
		}
		return addrs
	}
	for _, m := range l.Masters {
		addrs = append(addrs, m.Addr)
	}
	return addrs
}

// startNginx starts node i's hop, with its config, pid file and logs in
// DIR/nginx-i, and waits until a TLS request through it reaches a master (or, with
// NginxToProxies, a stock proxy).
func (l *Lab) startNginx(ctx context.Context, i int) error {
	name, addr := NginxName(i), NginxAddr(l.Slot, i)
	if err := checkFree(addr); err != nil {
		return err
	}
	d := filepath.Join(l.Dir, name)
	backends := l.nginxBackends()
	node := fmt.Sprintf("node-%d", i)
	if l.NginxToProxies {
		node += " (to the stock proxies)"
	}
	// nginx reads a relative path in its config from its prefix, not from here.
	module, err := filepath.Abs(nginxStreamModule(l.ToolsDir))
	if err != nil {
		return fmt.Errorf("nginx stream module path: %w", err)
	}
	cfg, err := render(nginxConf, map[string]any{"Node": node, "Module": module,
		"Dir": d, "Masters": backends, "Addr": addr})
	if err != nil {
		return err
	}
	conf := filepath.Join(d, "nginx.conf")
	if err := writeFile(conf, cfg, 0o644); err != nil {
		return err
	}
	pool, err := LoadPool(l.CA)
	if err != nil {
		return err
	}
	// -e: the error log before the config is read (Debian's default is stderr,
	// which the lab's log file catches anyway); -p keeps nginx out of /etc/nginx.
	args := []string{filepath.Clean(nginxBin(l.ToolsDir)), "-p", d + "/", "-e", filepath.Join(d, "error.log"), "-c", conf}
	return l.launch(ctx, name, args, filepath.Join(d, "log"), l.nginxReady(pool, name))
}

// nginxReady is the readiness check of the named hop: an HTTPS GET of a
// master's /readyz (a stock proxy's /v2/ with NginxToProxies) through it,
// which also checks that the certificate behind it names the hop's address.
func (l *Lab) nginxReady(pool *x509.CertPool, name string) func(context.Context) error {
	i, err := strconv.Atoi(strings.TrimPrefix(name, nginxPrefix))
	if err != nil || !strings.HasPrefix(name, nginxPrefix) {
		return func(context.Context) error { return fmt.Errorf("lab has no nginx hop %q", name) }
	}
	path := "/readyz"
	if l.NginxToProxies {
		path = "/v2/"
	}
	return httpsReady(pool, "https://"+NginxAddr(l.Slot, i)+path)
}

// nginxHostsData is node i's hosts.toml data in nginx mode: one mirror, the
// node's hop, as in real clusters (there it is https://127.0.0.1:5001).
func (l *Lab) nginxHostsData(n Node, i int) map[string]any {
	why := l.ImageHost + " is served by the masters through this node's NGINX stream hop"
	if l.NginxToProxies {
		why = l.ImageHost + " is served by the stock distribution proxies through this node's NGINX stream hop"
	}
	return map[string]any{"Why": why, "Server": l.ImageHost, "CA": l.caOf(n), "Masters": []string{NginxAddr(l.Slot, i)}}
}
