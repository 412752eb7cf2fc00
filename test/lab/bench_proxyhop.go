package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Lab support for the benchmarks: the NGINX stream hop in front of distribution's
// own proxies instead of the masters, the system as clusters run it today with
// distribution's pull-through cache as the masters (hopless-lab bench
// upstream-fault).

// BenchCABundle is the CA bundle that HopToProxies leaves behind: the lab CA and
// the CA that issued the proxies' new certificates. The nodes' hosts.toml trusts it.
func (l *Lab) BenchCABundle() string { return filepath.Join(l.Dir, "bench-ca", "bundle.pem") }

// HopToProxies points every nginx node's NGINX hop at the lab's stock
// distribution proxies instead of the masters, least_conn over all of them. The
// lab must have a node in nginx mode, and stock proxies (Options.Proxies > 0).
// The masters keep running but get no traffic from those nodes; such a node
// pulls an upstream repository by its own name (the proxies know no local
// prefix): ImageHost/deckhouse/ce/X, not ImageHost/system/deckhouse/X, as
// PullRefFor says from then on. Options.NginxToProxies does this at Up, with the
// lab CA.
//
// TLS stays end to end, so the proxies' certificates must also name the hops'
// addresses. The lab CA's key is gone once the lab is up, so a CA of its own
// (DIR/bench-ca) issues each proxy a certificate for its address and every hop's;
// the proxies are restarted with them (their caches are kept), and every node's
// hosts.toml trusts BenchCABundle, which containerd reads again at each pull.
func (l *Lab) HopToProxies(ctx context.Context) error {
	modes := l.nodeModes()
	if !slices.Contains(modes, ModeNginx) {
		return fmt.Errorf("lab: HopToProxies needs a node in nginx mode, the lab's nodes are in modes %s", strings.Join(modes, ","))
	}
	proxies := l.Proxies()
	if len(proxies) == 0 {
		return errors.New("lab: HopToProxies needs stock proxies (Options.Proxies)")
	}
	d := filepath.Join(l.Dir, "bench-ca")
	ca, err := NewCA(d)
	if err != nil {
		return err
	}
	labCA, err := os.ReadFile(l.CA)
	if err != nil {
		return fmt.Errorf("reading the lab CA: %w", err)
	}
	if err := writeFile(l.BenchCABundle(), append(append(labCA, '\n'), ca.CertPEM...), 0o644); err != nil {
		return err
	}
	pool, err := LoadPool(l.BenchCABundle())
	if err != nil {
		return err
	}
	hops := nginxIPs(l.Slot, modes)
	var addrs []string
	for _, p := range proxies {
		addrs = append(addrs, p.Addr)
		if err := p.Proc.Stop(stopGrace); err != nil {
			return err
		}
		ip := net.ParseIP(strings.Split(p.Addr, ":")[0])
		if err := ca.Issue(filepath.Join(l.Dir, p.Name), append([]net.IP{ip}, hops...)...); err != nil {
			return err
		}
		if err := l.launch(ctx, p.Name, p.Proc.Args, p.Proc.Log, httpsReady(pool, "https://"+p.Addr+"/v2/")); err != nil {
			return err
		}
	}
	module, err := filepath.Abs(nginxStreamModule(l.ToolsDir))
	if err != nil {
		return fmt.Errorf("nginx stream module path: %w", err)
	}
	for i, n := range l.Nodes {
		if modes[i] != ModeNginx {
			continue
		}
		name, addr := NginxName(i+1), NginxAddr(l.Slot, i+1)
		hop := l.proc(name)
		if hop == nil {
			return fmt.Errorf("lab has no nginx hop %q", name)
		}
		hd := filepath.Join(l.Dir, name)
		cfg, err := render(nginxConf, map[string]any{"Node": n.Name + " (to the stock proxies)", "Module": module,
			"Dir": hd, "Masters": addrs, "Addr": addr})
		if err != nil {
			return err
		}
		if err := hop.Stop(stopGrace); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(hd, "nginx.conf"), cfg, 0o644); err != nil {
			return err
		}
		if err := l.launch(ctx, name, hop.Args, hop.Log, httpsReady(pool, "https://"+addr+"/v2/")); err != nil {
			return err
		}
		data := l.nginxHostsData(n, i+1)
		data["Why"] = l.ImageHost + " is served by the stock distribution proxies through this node's NGINX stream hop"
		data["CA"] = l.BenchCABundle()
		hosts, err := render(hostsToml, data)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(n.Dir, "certs.d", l.ImageHost, "hosts.toml"), hosts, 0o644); err != nil {
			return err
		}
	}
	l.NginxToProxies = true
	return l.save()
}
