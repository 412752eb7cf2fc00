package conf

import "time"

// Defaults live here and only here. A default fills a key that the file left out; an
// explicit value, even zero, is kept so that validation can reject it by name.

const (
	DefaultWeight          = 1
	DefaultDial            = time.Second
	DefaultResponseHeader  = 3 * time.Second
	DefaultStall           = 5 * time.Second
	DefaultHealthInterval  = time.Second
	DefaultHealthTimeout   = 500 * time.Millisecond
	DefaultHedgeMin        = 100 * time.Millisecond
	DefaultHedgeMax        = time.Second
	DefaultListen          = ":5001"
	DefaultShutdownTimeout = 10 * time.Second
	DefaultLocalPrefix     = "system/deckhouse"
	DefaultTTL             = 7 * 24 * time.Hour
	DefaultLogLevel        = "info"
)

func setDuration(d *Duration, raw any, def time.Duration, path ...any) {
	if !present(raw, path...) {
		d.Duration = def
	}
}

func (t *TLS) resolvePaths(base string) {
	t.CA = resolve(base, t.CA)
	t.Cert = resolve(base, t.Cert)
	t.Key = resolve(base, t.Key)
}

func (n *Node) applyDefaults(raw map[string]any, base string) {
	for i := range n.Registries {
		r := &n.Registries[i]
		for j := range r.Endpoints {
			if !present(raw, "registry", i, "endpoint", j, "weight") {
				r.Endpoints[j].Weight = DefaultWeight
			}
		}
		t := []any{"registry", i, "timeouts"}
		setDuration(&r.Timeouts.Dial, raw, DefaultDial, append(t, "dial")...)
		setDuration(&r.Timeouts.ResponseHeader, raw, DefaultResponseHeader, append(t, "response_header")...)
		setDuration(&r.Timeouts.Stall, raw, DefaultStall, append(t, "stall")...)
		setDuration(&r.Timeouts.HealthInterval, raw, DefaultHealthInterval, append(t, "health_interval")...)
		setDuration(&r.Timeouts.HealthTimeout, raw, DefaultHealthTimeout, append(t, "health_timeout")...)
		setDuration(&r.Timeouts.HedgeMin, raw, DefaultHedgeMin, append(t, "hedge_min")...)
		setDuration(&r.Timeouts.HedgeMax, raw, DefaultHedgeMax, append(t, "hedge_max")...)
		r.TLS.resolvePaths(base)
		r.Auth.CredentialsFile = resolve(base, r.Auth.CredentialsFile)
	}
}

func (r *Registryd) applyDefaults(raw map[string]any, base string) {
	if !present(raw, "server", "listen") {
		r.Server.Listen = DefaultListen
	}
	setDuration(&r.Server.ShutdownTimeout, raw, DefaultShutdownTimeout, "server", "shutdown_timeout")
	r.Server.TLSCert = resolve(base, r.Server.TLSCert)
	r.Server.TLSKey = resolve(base, r.Server.TLSKey)
	r.Storage.Root = resolve(base, r.Storage.Root)
	for i := range r.Upstream {
		u := &r.Upstream[i]
		if !present(raw, "upstream", i, "local_prefix") {
			u.LocalPrefix = DefaultLocalPrefix
		}
		setDuration(&u.TTL, raw, DefaultTTL, "upstream", i, "ttl")
		u.TLS.resolvePaths(base)
		u.Auth.CredentialsFile = resolve(base, u.Auth.CredentialsFile)
	}
	if !present(raw, "log", "level") {
		r.Log.Level = DefaultLogLevel
	}
}

func (in *Install) applyDefaults(raw map[string]any) {
	def := func(s *string, key, v string) {
		if !present(raw, key) {
			*s = v
		}
	}
	def(&in.Mode, "mode", "inprocess")
	def(&in.HostRoot, "host_root", "/host")
	def(&in.BinDir, "bin_dir", "/opt/hopless/bin")
	def(&in.ConfDir, "conf_dir", "/etc/hopless")
	def(&in.ContainerdConfig, "containerd_config", "/etc/containerd/config.toml")
	def(&in.HostsDir, "hosts_dir", "/etc/containerd/registry.d")
	def(&in.NRIPluginDir, "nri_plugin_dir", "/opt/nri/plugins")
	def(&in.NRIConfDir, "nri_conf_dir", "/etc/nri/conf.d")
	def(&in.NRIIndex, "nri_index", "10")
}
