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

// nginxIPs are the hop addresses of n nodes in nginx mode, which the masters'
// certificates must name; none in other modes.
func nginxIPs(mode string, slot, n int) []net.IP {
	if mode != ModeNginx {
		return nil
	}
	var ips []net.IP
	for i := 1; i <= n; i++ {
		ips = append(ips, net.ParseIP(strings.Split(NginxAddr(slot, i), ":")[0]))
	}
	return ips
}

// startNginx starts node i's hop, with its config, pid file and logs in
// DIR/nginx-i, and waits until a TLS request through it reaches a master.
func (l *Lab) startNginx(ctx context.Context, i int) error {
	name, addr := NginxName(i), NginxAddr(l.Slot, i)
	if err := checkFree(addr); err != nil {
		return err
	}
	d := filepath.Join(l.Dir, name)
	var masters []string
	for _, m := range l.Masters {
		masters = append(masters, m.Addr)
	}
	// nginx reads a relative path in its config from its prefix, not from here.
	module, err := filepath.Abs(nginxStreamModule(l.ToolsDir))
	if err != nil {
		return fmt.Errorf("nginx stream module path: %w", err)
	}
	cfg, err := render(nginxConf, map[string]any{"Node": fmt.Sprintf("node-%d", i), "Module": module,
		"Dir": d, "Masters": masters, "Addr": addr})
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
// master's /readyz through it, which also checks that the master's
// certificate names the hop's address.
func (l *Lab) nginxReady(pool *x509.CertPool, name string) func(context.Context) error {
	i, err := strconv.Atoi(strings.TrimPrefix(name, nginxPrefix))
	if err != nil || !strings.HasPrefix(name, nginxPrefix) {
		return func(context.Context) error { return fmt.Errorf("lab has no nginx hop %q", name) }
	}
	return httpsReady(pool, "https://"+NginxAddr(l.Slot, i)+"/readyz")
}

// nginxHostsData is node i's hosts.toml data in nginx mode: one mirror, the
// node's hop, as in real clusters (there it is https://127.0.0.1:5001).
func (l *Lab) nginxHostsData(i int) map[string]any {
	return map[string]any{"Why": l.ImageHost + " is served by the masters through this node's NGINX stream hop",
		"Server": l.ImageHost, "CA": l.CA, "Masters": []string{NginxAddr(l.Slot, i)}}
}
