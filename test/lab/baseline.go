package lab

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The baseline that registryd is measured against: distribution's own pull-through
// cache, one process per would-be master (hopless-lab proxy), each caching the lab
// upstream on its own, on the masters' storage engine (a directory of its own, or
// a root of its own in the masters' bucket). Up starts Options.Proxies of them
// after the masters.

// ProxyAddr is the listen address of stock proxy i (1-based) in slot.
func ProxyAddr(slot, i int) string { return fmt.Sprintf("127.%d.4.%d:5001", slot, i) }

// Proxy is one stock distribution proxy of the lab.
type Proxy struct {
	Name string
	Addr string
	// AccessLog holds one AccessEntry per request that the proxy served.
	AccessLog string
	Proc      *Proc
}

const proxyPrefix = "proxy-"

// Proxies lists the lab's stock proxies, in the order they were started.
func (l *Lab) Proxies() []Proxy {
	var out []Proxy
	for _, p := range l.Procs {
		i, err := strconv.Atoi(strings.TrimPrefix(p.Name, proxyPrefix))
		if !strings.HasPrefix(p.Name, proxyPrefix) || err != nil {
			continue
		}
		out = append(out, Proxy{Name: p.Name, Addr: ProxyAddr(l.Slot, i), AccessLog: filepath.Join(l.Dir, p.Name, "access.log"), Proc: p})
	}
	return out
}

// startProxies starts n stock proxies of the upstream, each with a certificate
// from the lab CA for its address and extraIPs (the nginx nodes' hops, when they
// go to the proxies), its own storage (on the masters' storage engine) and its
// own access log.
func (l *Lab) startProxies(ctx context.Context, ca *CA, n int, extraIPs ...net.IP) error {
	if n < 0 || n > 50 {
		return fmt.Errorf("lab: proxies must be 0..50, got %d", n)
	}
	for i := 1; i <= n; i++ {
		if err := checkFree(ProxyAddr(l.Slot, i)); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		name := proxyPrefix + strconv.Itoa(i)
		d := filepath.Join(l.Dir, name)
		addr := ProxyAddr(l.Slot, i)
		if err := ca.Issue(d, append([]net.IP{net.ParseIP(strings.Split(addr, ":")[0])}, extraIPs...)...); err != nil {
			return err
		}
		args := []string{filepath.Join(l.BinDir, "hopless-lab"), "proxy",
			"--addr", addr, "--cert", filepath.Join(d, "cert.pem"), "--key", filepath.Join(d, "key.pem"),
			"--remote", "https://" + l.Upstream, "--remote-ca", l.CA, "--access-log", filepath.Join(d, "access.log")}
		if l.Storage == StorageS3 {
			args = append(args, l.proxyS3Args(name)...)
		} else {
			if err := l.mountStorage(d); err != nil {
				return err
			}
			args = append(args, "--storage", filepath.Join(d, "data"))
		}
		if err := l.launch(ctx, name, args, filepath.Join(d, "log"), httpsReady(ca.Pool(), "https://"+addr+"/v2/")); err != nil {
			return err
		}
	}
	return nil
}

// proxyReady is the readiness check of the named proxy, for Lab.Start.
func (l *Lab) proxyReady(cfg *tls.Config, name string) func(context.Context) error {
	for _, p := range l.Proxies() {
		if p.Name == name {
			return httpsReadyTLS(cfg, "https://"+p.Addr+"/v2/")
		}
	}
	return func(context.Context) error { return fmt.Errorf("lab has no proxy %q", name) }
}

// PeakRSS is the process's peak resident set size in bytes (VmHWM), read while it
// still runs.
func (p *Proc) PeakRSS() (int64, error) {
	if !p.Alive() {
		return 0, fmt.Errorf("%s (pid %d) is not running", p.Name, p.PID)
	}
	f, err := os.Open("/proc/" + strconv.Itoa(p.PID) + "/status")
	if err != nil {
		return 0, fmt.Errorf("reading status of %s (pid %d): %w", p.Name, p.PID, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status of %s (pid %d): bad VmHWM %q", p.Name, p.PID, rest)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading status of %s (pid %d): %w", p.Name, p.PID, err)
	}
	return 0, fmt.Errorf("status of %s (pid %d) has no VmHWM", p.Name, p.PID)
}
