package conf

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
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
		_, epErrs := validateEndpoints(file, f, r.Endpoints, r.TLS.Insecure)
		errs = append(errs, epErrs...)
		errs = append(errs, r.TLS.validate(file, f+".tls")...)
		add(r.Auth.validate(file, f+".auth"))
		errs = append(errs, r.Timeouts.validate(file, f+".timeouts")...)
		errs = append(errs, r.Outlier.validate(file, f+".outlier")...)
		errs = append(errs, r.Hedge.validate(file, f+".hedge")...)
		errs = append(errs, r.Body.validate(file, f+".body")...)
	}
	return errors.Join(errs...)
}

// validateEndpoints checks the endpoints listed under f: URLs (plain http only when
// insecure), weights, duplicates and at most one local. It returns the canonical URLs
// of the valid ones.
func validateEndpoints(file, f string, eps []Endpoint, insecure bool) (map[string]int, []error) {
	var errs []error
	seen := map[string]int{}
	locals := 0
	for j, e := range eps {
		ef := fmt.Sprintf("%s.endpoint[%d]", f, j)
		u, err := checkURL(e.URL, insecure)
		if err != nil {
			errs = append(errs, fieldErr(file, ef+".url", "%v", err))
		} else if prev, dup := seen[u]; dup {
			errs = append(errs, fieldErr(file, ef+".url", "duplicate endpoint %q, also endpoint[%d]", e.URL, prev))
		} else {
			seen[u] = j
		}
		if e.Weight <= 0 {
			errs = append(errs, fieldErr(file, ef+".weight", "must be > 0, got %d", e.Weight))
		}
		if e.Local {
			locals++
		}
	}
	if locals > 1 {
		errs = append(errs, fieldErr(file, f+".endpoint", "at most one endpoint may be local, got %d", locals))
	}
	return seen, errs
}

func (t Timeouts) validate(file, f string) []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    Duration
	}{
		{"dial", t.Dial}, {"response_header", t.ResponseHeader}, {"stall", t.Stall},
		{"health_interval", t.HealthInterval}, {"health_timeout", t.HealthTimeout},
		{"health_idle_interval", t.HealthIdleInterval},
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
	if t.HealthIdleInterval.Duration > 0 && t.HealthIdleInterval.Duration < t.HealthInterval.Duration {
		errs = append(errs, fieldErr(file, f+".health_idle_interval", "must be >= health_interval (%s), got %s", t.HealthInterval.Duration, t.HealthIdleInterval.Duration))
	}
	// A hedge is sent while the first attempt still waits; one that may come only
	// after the attempt's own deadline is never sent.
	if t.HedgeMax.Duration > 0 && t.HedgeMax.Duration >= t.ResponseHeader.Duration {
		errs = append(errs, fieldErr(file, f+".hedge_max", "must be < response_header (%s), got %s", t.ResponseHeader.Duration, t.HedgeMax.Duration))
	}
	return errs
}

func (o Outlier) validate(file, f string) []error {
	var errs []error
	if o.ConsecutiveFailures < 1 {
		errs = append(errs, fieldErr(file, f+".consecutive_failures", "must be >= 1, got %d", o.ConsecutiveFailures))
	}
	if o.Consecutive5xx < 1 {
		errs = append(errs, fieldErr(file, f+".consecutive_5xx", "must be >= 1, got %d", o.Consecutive5xx))
	}
	if o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
		errs = append(errs, fieldErr(file, f+".max_ejection_percent", "must be 0..100, got %d", o.MaxEjectionPercent))
	}
	if o.SlowStart.Duration < 0 {
		errs = append(errs, fieldErr(file, f+".slow_start", "must be >= 0, got %s", o.SlowStart.Duration))
	}
	return errs
}

func (h Hedge) validate(file, f string) []error {
	var errs []error
	if h.BudgetPercent < 0 || h.BudgetPercent > 100 {
		errs = append(errs, fieldErr(file, f+".budget_percent", "must be 0..100, got %d", h.BudgetPercent))
	}
	if h.Burst < 0 {
		errs = append(errs, fieldErr(file, f+".burst", "must be >= 0, got %d", h.Burst))
	}
	return errs
}

func (b Body) validate(file, f string) []error {
	var errs []error
	if !(b.RelativeRate >= 0 && b.RelativeRate < 1) { // NaN too
		errs = append(errs, fieldErr(file, f+".relative_rate", "must be >= 0 and < 1, got %g", b.RelativeRate))
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"warmup", b.Warmup}, {"window", b.Window}} {
		if d.v.Duration <= 0 {
			errs = append(errs, fieldErr(file, f+"."+d.name, "must be > 0, got %s", d.v.Duration))
		}
	}
	if b.ResumeAttempts < 0 {
		errs = append(errs, fieldErr(file, f+".resume_attempts", "must be >= 0, got %d", b.ResumeAttempts))
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
	return prefixed(file, f+".credentials_file", checkSecretFile(a.CredentialsFile))
}

// checkSecretFile checks a file that holds a secret: when set, it must be a regular
// file that neither group nor others can read. Its content is not read.
func checkSecretFile(p string) error {
	if p == "" {
		return nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fileProblem(p, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", p)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %#o, want 0600 or stricter", p, perm)
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
	if a := r.Debug.PprofListen; a != "" {
		if err := checkLoopbackListen(a); err != nil {
			add(fieldErr(file, "debug.pprof_listen", "%v", err))
		} else if listenConflict(a, r.Server.Listen) || (r.Metrics.Listen != "" && listenConflict(a, r.Metrics.Listen)) {
			add(fieldErr(file, "debug.pprof_listen", "%q conflicts with server.listen or metrics.listen", a))
		}
	}
	errs = append(errs, r.Storage.validate(file)...)
	errs = append(errs, r.Cache.validate(file)...)
	if len(r.Upstream) == 0 {
		add(fieldErr(file, "upstream", "at least one [[upstream]] is required"))
	}
	prefixes := map[string]int{}
	type nsAt struct{ i, j int }
	nss := map[string]nsAt{}
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
		for j, ns := range u.NS {
			nf := fmt.Sprintf("%s.ns[%d]", f, j)
			if err := checkHost(ns); err != nil {
				add(fieldErr(file, nf, "%v", err))
			} else if prev, dup := nss[strings.ToLower(ns)]; dup {
				add(fieldErr(file, nf, "duplicate ns %q, also upstream[%d].ns[%d]", ns, prev.i, prev.j))
			} else {
				nss[strings.ToLower(ns)] = nsAt{i, j}
			}
		}
		errs = append(errs, u.TLS.validate(file, f+".tls")...)
		add(u.Auth.validate(file, f+".auth"))
		errs = append(errs, u.Timeouts.validate(file, f+".timeouts")...)
		if u.MaxConcurrent < 0 {
			add(fieldErr(file, f+".max_concurrent", "must be >= 0 (0 is unbounded), got %d", u.MaxConcurrent))
		}
		if u.MaxRetryAfter.Duration <= 0 {
			add(fieldErr(file, f+".max_retry_after", "must be > 0, got %s", u.MaxRetryAfter.Duration))
		}
	}
	errs = append(errs, r.Peers.validate(file)...)
	errs = append(errs, r.validateNesting(file)...)
	errs = append(errs, r.validateStaleAfter(file)...)
	errs = append(errs, r.Auth.validate(file)...)
	add(prefixed(file, "api.token_file", checkSecretFile(r.API.TokenFile)))
	add(prefixed(file, "api.node_key_file", checkSecretFile(r.API.NodeKeyFile)))
	if r.API.PinTTL.Duration < minPinTTL {
		add(fieldErr(file, "api.pin_ttl", "must be at least %s, got %s", minPinTTL, r.API.PinTTL.Duration))
	}
	if r.API.MaxPinSources < 1 {
		add(fieldErr(file, "api.max_pin_sources", "must be > 0, got %d", r.API.MaxPinSources))
	}
	switch r.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add(fieldErr(file, "log.level", "must be one of debug, info, warn, error, got %q", r.Log.Level))
	}
	return errors.Join(errs...)
}

// MasterIDRE matches a storage.master_id: it becomes a directory name on the storage.
var MasterIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// storageDriverRE matches a distribution storage driver name.
var storageDriverRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (s Storage) validate(file string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldErr(file, "storage."+field, format, args...))
	}
	if !storageDriverRE.MatchString(s.Driver) {
		add("driver", "must be a driver name of letters, digits, - and _, got %q", s.Driver)
	}
	if s.Driver == DefaultStorageDriver {
		if s.Root == "" {
			add("root", "is required when driver is %s", DefaultStorageDriver)
		} else if s.Spool == "" {
			// Only an explicit empty spool gets here: an absent one defaults.
			add("spool", "must not be empty; leave it out for the default root/%s", DefaultSpoolDir)
		}
	} else if s.Spool == "" {
		add("spool", "is required when driver is not %s, got driver %q", DefaultStorageDriver, s.Driver)
	}
	errs = append(errs, s.validateSecretParameters(file)...)
	if s.MaxBytes < 0 {
		add("max_bytes", "must be >= 0 (0 is unbounded), got %d", s.MaxBytes)
	}
	if s.TTL.Duration <= 0 {
		add("ttl", "must be > 0, got %s", s.TTL.Duration)
	}
	if s.EvictInterval.Duration <= 0 {
		add("evict_interval", "must be > 0, got %s", s.EvictInterval.Duration)
	}
	if s.MinFree.Percent >= 100 {
		add("min_free", "must be below 100%%, got %s", s.MinFree)
	}
	if s.SpoolMaxAge.Duration <= 0 {
		add("spool_max_age", "must be > 0, got %s", s.SpoolMaxAge.Duration)
	}
	if s.ScrubRate < 0 {
		add("scrub_rate", "must be >= 0 (0 disables the scrub), got %d", s.ScrubRate)
	}
	if s.ScrubInterval.Duration <= 0 {
		add("scrub_interval", "must be > 0, got %s", s.ScrubInterval.Duration)
	}
	if s.Shared {
		if s.EvictGrace.Duration < MinEvictGrace {
			add("evict_grace", "must be at least %s, got %s", MinEvictGrace, s.EvictGrace.Duration)
		}
		if s.MasterID != "" && !MasterIDRE.MatchString(s.MasterID) {
			add("master_id", "must be 1-63 of letters, digits, '.', '_' and '-', starting with a letter or digit, got %q", s.MasterID)
		}
	}
	return errs
}

// Bounds of cache.max_manifest_bytes.
const (
	minManifestBytes Size = 1 << 10
	maxManifestBytes Size = 64 << 20
	maxFillRetries        = 100
)

// maxPrefetchWorkers bounds cache.prefetch_workers.
const maxPrefetchWorkers = 256

// minPinTTL keeps a node's re-reports (at a third of the TTL) from becoming a
// flood.
const minPinTTL = 10 * time.Second

func (c Cache) validate(file string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldErr(file, "cache."+field, format, args...))
	}
	if c.TagTTL.Duration <= 0 {
		add("tag_ttl", "must be > 0, got %s", c.TagTTL.Duration)
	}
	if c.StaleAfter.Duration <= 0 {
		add("stale_after", "must be > 0, got %s", c.StaleAfter.Duration)
	}
	if c.NegativeTTL.Duration <= 0 {
		add("negative_ttl", "must be > 0, got %s", c.NegativeTTL.Duration)
	}
	if c.MaxManifestBytes < minManifestBytes || c.MaxManifestBytes > maxManifestBytes {
		add("max_manifest_bytes", "must be between 1KiB (%d) and 64MiB (%d) bytes, got %d", minManifestBytes, maxManifestBytes, c.MaxManifestBytes)
	}
	if c.FillRetries < 0 || c.FillRetries > maxFillRetries {
		add("fill_retries", "must be between 0 and %d, got %d", maxFillRetries, c.FillRetries)
	}
	if c.FillBackoff.Duration <= 0 {
		add("fill_backoff", "must be > 0, got %s", c.FillBackoff.Duration)
	}
	if c.PrefetchWorkers < 1 || c.PrefetchWorkers > maxPrefetchWorkers {
		add("prefetch_workers", "must be between 1 and %d, got %d", maxPrefetchWorkers, c.PrefetchWorkers)
	}
	return errs
}

func (p Peers) validate(file string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldErr(file, "peers."+field, format, args...))
	}
	static, dns := len(p.Endpoints) > 0, p.DNS != ""
	if static && dns {
		add("dns", "is mutually exclusive with [[peers.endpoint]]; set one")
	}
	urls, epErrs := validateEndpoints(file, "peers", p.Endpoints, p.TLS.Insecure)
	errs = append(errs, epErrs...)
	if dns {
		if err := checkDNSName(p.DNS); err != nil {
			add("dns", "%v", err)
		}
		if p.Port < 1 || p.Port > 65535 {
			add("port", "must be 1-65535 when dns is set, got %d", p.Port)
		}
	} else if p.Port != 0 {
		add("port", "is only used with dns, which is not set")
	}
	switch {
	case p.TokenFile == "" && (static || dns):
		add("token_file", "is required when peers are configured")
	default:
		if err := checkSecretFile(p.TokenFile); err != nil {
			add("token_file", "%v", err)
		}
	}
	switch {
	case p.Self == "" && (static || dns):
		add("self", "is required when peers are configured")
	case p.Self != "":
		self, err := checkURL(p.Self, p.TLS.Insecure)
		if err != nil {
			add("self", "%v", err)
		} else if _, ok := urls[self]; static && !ok {
			add("self", "%q is not the URL of any [[peers.endpoint]]", p.Self)
		}
	}
	errs = append(errs, p.TLS.validate(file, "peers.tls")...)
	if p.HealthInterval.Duration <= 0 {
		add("health_interval", "must be > 0, got %s", p.HealthInterval.Duration)
	}
	if p.ResponseHeader.Duration <= 0 {
		add("response_header", "must be > 0, got %s", p.ResponseHeader.Duration)
	}
	if p.Stall.Duration <= 0 {
		add("stall", "must be > 0, got %s", p.Stall.Duration)
	}
	return errs
}

func (t UpstreamTimeouts) validate(file, f string) []error {
	var errs []error
	for _, d := range []struct {
		name string
		v    Duration
	}{{"dial", t.Dial}, {"response_header", t.ResponseHeader}, {"stall", t.Stall}} {
		if d.v.Duration <= 0 {
			errs = append(errs, fieldErr(file, f+"."+d.name, "must be > 0, got %s", d.v.Duration))
		}
	}
	return errs
}

// validateNesting checks that a master asking the owner of a blob waits longer than
// the owner waits on its upstream, so that the owner answers with the upstream's
// failure before the asking master gives up on it and counts it as down. Without
// peers nobody waits on a master's upstream wait but the nodes, whose own bound
// (registry.timeouts in node.toml) lives in another file.
func (r *Registryd) validateNesting(file string) []error {
	p := r.Peers
	if len(p.Endpoints) == 0 && p.DNS == "" {
		return nil
	}
	var errs []error
	for i, u := range r.Upstream {
		if p.ResponseHeader.Duration > 0 && p.ResponseHeader.Duration <= u.Timeouts.ResponseHeader.Duration {
			errs = append(errs, fieldErr(file, "peers.response_header", "must be > upstream[%d].timeouts.response_header (%s), got %s",
				i, u.Timeouts.ResponseHeader.Duration, p.ResponseHeader.Duration))
		}
		if p.Stall.Duration > 0 && p.Stall.Duration <= u.Timeouts.Stall.Duration {
			errs = append(errs, fieldErr(file, "peers.stall", "must be > upstream[%d].timeouts.stall (%s), got %s",
				i, u.Timeouts.Stall.Duration, p.Stall.Duration))
		}
	}
	return errs
}

// validateStaleAfter checks that a request with a stale answer stops waiting for a
// tag's revalidation before the upstream's own bound would fail it: otherwise the
// upstream's timeout, not cache.stale_after, would decide how long it waits.
func (r *Registryd) validateStaleAfter(file string) []error {
	s := r.Cache.StaleAfter.Duration
	if s <= 0 {
		return nil
	}
	var errs []error
	for i, u := range r.Upstream {
		if rh := u.Timeouts.ResponseHeader.Duration; rh > 0 && s >= rh {
			errs = append(errs, fieldErr(file, "cache.stale_after", "must be < upstream[%d].timeouts.response_header (%s), got %s", i, rh, s))
		}
	}
	return errs
}

func (a ClientAuth) validate(file string) []error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fieldErr(file, "auth."+field, format, args...))
	}
	t := a.Token
	token := t != (TokenAuth{})
	if a.Htpasswd != "" {
		if token {
			add("token", "is mutually exclusive with auth.htpasswd; set one")
		}
		if err := checkFile(a.Htpasswd); err != nil {
			add("htpasswd", "%v", err)
		}
	}
	if !token {
		return errs
	}
	if err := checkRealm(t.Realm); err != nil {
		add("token.realm", "%v", err)
	}
	if t.Service == "" {
		add("token.service", "is required with token authentication")
	}
	if t.Issuer == "" {
		add("token.issuer", "is required with token authentication")
	}
	if t.RootCertBundle == "" {
		add("token.rootcertbundle", "is required with token authentication")
	} else if err := checkFile(t.RootCertBundle); err != nil {
		add("token.rootcertbundle", "%v", err)
	}
	return errs
}

// checkRealm accepts the https URL of a token server; unlike an endpoint it may have
// a path.
func checkRealm(s string) error {
	if s == "" {
		return fmt.Errorf("is required with token authentication")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("bad URL %q: %v", s, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("bad URL %q: scheme must be https", s)
	}
	if u.Hostname() == "" || u.User != nil || u.Opaque != "" || u.Fragment != "" {
		return fmt.Errorf("bad URL %q: want https://host[:port][/path]", s)
	}
	return nil
}

// dnsLabelRE matches one label of a DNS name.
var dnsLabelRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$`)

// checkDNSName accepts a DNS name without a port, such as a headless Service's.
func checkDNSName(s string) error {
	bad := fmt.Errorf("bad DNS name %q: want a host name such as registryd.d8-system.svc, without port", s)
	if len(s) > 253 {
		return bad
	}
	for l := range strings.SplitSeq(s, ".") {
		if len(l) > 63 || !dnsLabelRE.MatchString(l) {
			return bad
		}
	}
	return nil
}

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

// CheckHost reports whether h is an image host as Registry.Host must be written:
// host[:port] or [IPv6][:port], as in image references.
func CheckHost(h string) error { return checkHost(h) }

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

// checkLoopbackListen checks a listen address that must not be reachable from other
// hosts: a loopback IP address and a port.
func checkLoopbackListen(s string) error {
	if err := checkListen(s); err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(s)
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("bad address %q: host must be a loopback IP address such as 127.0.0.1", s)
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
