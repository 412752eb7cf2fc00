package conf

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Validate checks a node configuration; file names the source in errors. All problems
// are reported, joined.
func (n *Node) Validate(file string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(n.Registries) == 0 {
		add(fieldErr(file, "registry", "at least one [[registry]] is required"))
	}
	hosts := map[string]int{}
	for i, r := range n.Registries {
		f := fmt.Sprintf("registry[%d]", i)
		if err := checkHost(r.Host); err != nil {
			add(fieldErr(file, f+".host", "%v", err))
		} else if prev, dup := hosts[strings.ToLower(r.Host)]; dup {
			add(fieldErr(file, f+".host", "duplicate host %q, also registry[%d]", r.Host, prev))
		} else {
			hosts[strings.ToLower(r.Host)] = i
		}
		if len(r.Endpoints) == 0 {
			add(fieldErr(file, f+".endpoint", "at least one [[registry.endpoint]] is required"))
		}
		seen := map[string]int{}
		locals := 0
		for j, e := range r.Endpoints {
			ef := fmt.Sprintf("%s.endpoint[%d]", f, j)
			u, err := checkURL(e.URL, r.TLS.Insecure)
			if err != nil {
				add(fieldErr(file, ef+".url", "%v", err))
			} else if prev, dup := seen[u]; dup {
				add(fieldErr(file, ef+".url", "duplicate endpoint %q, also endpoint[%d]", e.URL, prev))
			} else {
				seen[u] = j
			}
			if e.Weight <= 0 {
				add(fieldErr(file, ef+".weight", "must be > 0, got %d", e.Weight))
			}
			if e.Local {
				locals++
			}
		}
		if locals > 1 {
			add(fieldErr(file, f+".endpoint", "at most one endpoint may be local, got %d", locals))
		}
		errs = append(errs, r.TLS.validate(file, f+".tls")...)
		add(r.Auth.validate(file, f+".auth"))
		errs = append(errs, r.Timeouts.validate(file, f+".timeouts")...)
	}
	return errors.Join(errs...)
}

func (t Timeouts) validate(file, f string) []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    Duration
	}{
		{"dial", t.Dial}, {"response_header", t.ResponseHeader}, {"stall", t.Stall},
		{"health_interval", t.HealthInterval}, {"health_timeout", t.HealthTimeout},
		{"hedge_min", t.HedgeMin}, {"hedge_max", t.HedgeMax},
	} {
		if d.v.Duration <= 0 {
			errs = append(errs, fieldErr(file, f+"."+d.name, "must be > 0, got %s", d.v.Duration))
		}
	}
	if t.HedgeMin.Duration > t.HedgeMax.Duration {
		errs = append(errs, fieldErr(file, f+".hedge_min", "must be <= hedge_max (%s), got %s", t.HedgeMax.Duration, t.HedgeMin.Duration))
	}
	if t.HealthTimeout.Duration > t.HealthInterval.Duration {
		errs = append(errs, fieldErr(file, f+".health_timeout", "must be <= health_interval (%s), got %s", t.HealthInterval.Duration, t.HealthTimeout.Duration))
	}
	return errs
}

func (t TLS) validate(file, f string) []error {
	var errs []error
	for _, p := range []struct{ name, path string }{{"ca", t.CA}, {"cert", t.Cert}, {"key", t.Key}} {
		if err := checkFile(p.path); err != nil {
			errs = append(errs, fieldErr(file, f+"."+p.name, "%v", err))
		}
	}
	switch {
	case t.Cert != "" && t.Key == "":
		errs = append(errs, fieldErr(file, f+".key", "is required when cert is set"))
	case t.Cert == "" && t.Key != "":
		errs = append(errs, fieldErr(file, f+".cert", "is required when key is set"))
	}
	return errs
}

func (a Auth) validate(file, f string) error {
	if a.CredentialsFile == "" {
		return nil
	}
	fi, err := os.Stat(a.CredentialsFile)
	if err != nil {
		return fieldErr(file, f+".credentials_file", "%v", fileProblem(a.CredentialsFile, err))
	}
	if !fi.Mode().IsRegular() {
		return fieldErr(file, f+".credentials_file", "%s is not a regular file", a.CredentialsFile)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fieldErr(file, f+".credentials_file", "%s has mode %#o, want 0600 or stricter", a.CredentialsFile, perm)
	}
	return nil
}

// Validate checks a registryd configuration.
func (r *Registryd) Validate(file string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := checkListen(r.Server.Listen); err != nil {
		add(fieldErr(file, "server.listen", "%v", err))
	}
	if !r.Server.Insecure {
		if r.Server.TLSCert == "" {
			add(fieldErr(file, "server.tls_cert", "is required unless server.insecure = true"))
		}
		if r.Server.TLSKey == "" {
			add(fieldErr(file, "server.tls_key", "is required unless server.insecure = true"))
		}
	}
	add(prefixed(file, "server.tls_cert", checkFile(r.Server.TLSCert)))
	add(prefixed(file, "server.tls_key", checkFile(r.Server.TLSKey)))
	if r.Server.ShutdownTimeout.Duration <= 0 {
		add(fieldErr(file, "server.shutdown_timeout", "must be > 0, got %s", r.Server.ShutdownTimeout.Duration))
	}
	if r.Metrics.Listen != "" {
		if err := checkListen(r.Metrics.Listen); err != nil {
			add(fieldErr(file, "metrics.listen", "%v", err))
		} else if listenConflict(r.Metrics.Listen, r.Server.Listen) {
			add(fieldErr(file, "metrics.listen", "%q conflicts with server.listen %q", r.Metrics.Listen, r.Server.Listen))
		}
	}
	if r.Storage.Root == "" {
		add(fieldErr(file, "storage.root", "is required"))
	}
	if len(r.Upstream) == 0 {
		add(fieldErr(file, "upstream", "at least one [[upstream]] is required"))
	}
	prefixes := map[string]int{}
	for i, u := range r.Upstream {
		f := fmt.Sprintf("upstream[%d]", i)
		if _, err := checkURL(u.URL, u.TLS.Insecure); err != nil {
			add(fieldErr(file, f+".url", "%v", err))
		}
		if err := checkRepoPath(u.LocalPrefix); err != nil || u.LocalPrefix == "" {
			add(fieldErr(file, f+".local_prefix", "must be a repository path like system/deckhouse, got %q", u.LocalPrefix))
		} else if prev, dup := prefixes[u.LocalPrefix]; dup {
			add(fieldErr(file, f+".local_prefix", "duplicate prefix %q, also upstream[%d]", u.LocalPrefix, prev))
		} else {
			prefixes[u.LocalPrefix] = i
		}
		if u.Path != "" {
			if err := checkRepoPath(u.Path); err != nil {
				add(fieldErr(file, f+".path", "must be a repository path like deckhouse/ce, got %q", u.Path))
			}
		}
		if u.TTL.Duration <= 0 {
			add(fieldErr(file, f+".ttl", "must be > 0, got %s", u.TTL.Duration))
		}
		errs = append(errs, u.TLS.validate(file, f+".tls")...)
		add(u.Auth.validate(file, f+".auth"))
	}
	switch r.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add(fieldErr(file, "log.level", "must be one of debug, info, warn, error, got %q", r.Log.Level))
	}
	return errors.Join(errs...)
}

// Validate checks an installer configuration.
func (in *Install) Validate(file string) error {
	var errs []error
	if in.Mode != "inprocess" && in.Mode != "stock" {
		errs = append(errs, fieldErr(file, "mode", "must be inprocess or stock, got %q", in.Mode))
	}
	for _, p := range []struct{ name, v string }{
		{"host_root", in.HostRoot}, {"bin_dir", in.BinDir}, {"conf_dir", in.ConfDir},
		{"containerd_config", in.ContainerdConfig}, {"hosts_dir", in.HostsDir},
		{"nri_plugin_dir", in.NRIPluginDir}, {"nri_conf_dir", in.NRIConfDir},
	} {
		if !strings.HasPrefix(p.v, "/") || path.Clean(p.v) != p.v {
			errs = append(errs, fieldErr(file, p.name, "must be a clean absolute path, got %q", p.v))
		}
	}
	if !nriIndexRE.MatchString(in.NRIIndex) {
		errs = append(errs, fieldErr(file, "nri_index", "must be two digits, got %q", in.NRIIndex))
	}
	return errors.Join(errs...)
}

var nriIndexRE = regexp.MustCompile(`^[0-9]{2}$`)

func prefixed(file, field string, err error) error {
	if err == nil {
		return nil
	}
	return fieldErr(file, field, "%v", err)
}

// checkURL accepts scheme://host[:port] with no path, query or user info, and returns
// its canonical form for duplicate detection.
func checkURL(s string, insecure bool) (string, error) {
	if s == "" {
		return "", fmt.Errorf("is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("bad URL %q: %v", s, err)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !insecure {
			return "", fmt.Errorf("bad URL %q: plain http needs tls.insecure = true", s)
		}
	default:
		return "", fmt.Errorf("bad URL %q: scheme must be https", s)
	}
	if u.Hostname() == "" || u.User != nil || u.Opaque != "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("bad URL %q: want scheme://host[:port] only", s)
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if strings.HasSuffix(u.Host, ":") {
		return "", fmt.Errorf("bad URL %q: empty port", s)
	}
	if port != "" {
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return "", fmt.Errorf("bad URL %q: port must be 1-65535", s)
		}
	}
	// The canonical form drops the scheme's default port, so that https://h and
	// https://h:443 are the same endpoint.
	if (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		port = ""
	}
	if port == "" {
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return u.Scheme + "://" + host, nil
	}
	return u.Scheme + "://" + net.JoinHostPort(host, port), nil
}

// hostRE matches a registry host as written in image references.
var hostRE = regexp.MustCompile(`^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$`)

func checkHost(h string) error {
	if h == "" {
		return fmt.Errorf("is required")
	}
	if !hostRE.MatchString(h) {
		return fmt.Errorf("bad image host %q: want host[:port] as in an image reference", h)
	}
	return nil
}

func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("bad address %q: want host:port", s)
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("bad address %q: host must be an IP address or empty", s)
	}
	if p, err := net.LookupPort("tcp", port); err != nil || p == 0 {
		return fmt.Errorf("bad address %q: bad port", s)
	}
	return nil
}

// listenConflict reports whether two valid listen addresses would bind the same port:
// the same port on the same address, or on any address when either is a wildcard.
func listenConflict(a, b string) bool {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	na, errA := net.LookupPort("tcp", pa)
	nb, errB := net.LookupPort("tcp", pb)
	if errA != nil || errB != nil || na != nb {
		return false
	}
	wild := func(h string) bool { return h == "" || net.ParseIP(h).IsUnspecified() }
	if wild(ha) || wild(hb) {
		return true
	}
	return net.ParseIP(ha).Equal(net.ParseIP(hb))
}

// repoPathRE follows the distribution reference grammar for path components.
var repoPathRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)

func checkRepoPath(p string) error {
	if !repoPathRE.MatchString(p) {
		return fmt.Errorf("bad repository path %q", p)
	}
	return nil
}

func checkFile(p string) error {
	if p == "" {
		return nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fileProblem(p, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory, want a file", p)
	}
	return nil
}

func fileProblem(p string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("file %s not found", p)
	}
	return fmt.Errorf("file %s: %v", p, err)
}
