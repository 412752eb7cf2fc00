package conf

import (
	"net/url"
	"path/filepath"
	"time"
)

// Defaults live here and only here. A default fills a key that the file left out; an
// explicit value, even zero, is kept so that validation can reject it by name.

const (
	DefaultWeight         = 1
	DefaultDial           = time.Second
	DefaultResponseHeader = 10 * time.Second
	DefaultStall          = 5 * time.Second
	DefaultHealthInterval = time.Second
	DefaultHealthTimeout  = 500 * time.Millisecond
	DefaultHedgeMin       = 100 * time.Millisecond
	DefaultHedgeMax       = time.Second
	// DefaultHealthIdleInterval is timeouts.health_idle_interval: 1000 idle nodes
	// then check each master 33 times a second, a third of the 100/s they may, so
	// that their pulls have room.
	DefaultHealthIdleInterval = 30 * time.Second
	// DefaultSlowStart is outlier.slow_start.
	DefaultSlowStart = 10 * time.Second

	DefaultConsecutiveFailures      = 3
	DefaultConsecutive5xx           = 5
	DefaultMaxEjectionPercent       = 50
	DefaultHedgeBudgetPercent       = 8
	DefaultHedgeBurst               = 1
	DefaultBodyMinRate         Size = 64 << 10
	DefaultBodyRelativeRate         = 0.1
	DefaultBodyWarmup               = 2 * time.Second
	DefaultBodyWindow               = 2 * time.Second
	DefaultResumeAttempts           = 6
	DefaultListen                   = ":5001"
	DefaultShutdownTimeout          = 10 * time.Second
	DefaultLocalPrefix              = "system/deckhouse"
	DefaultLogLevel                 = "info"

	// DefaultStorageDriver is storage.driver.
	DefaultStorageDriver = "filesystem"
	// DefaultSpoolDir is storage.spool relative to storage.root, for the filesystem
	// driver.
	DefaultSpoolDir = "_spool"
	// DefaultTTL is storage.ttl.
	DefaultTTL = 7 * 24 * time.Hour
	// DefaultEvictInterval is storage.evict_interval.
	DefaultEvictInterval = time.Minute
	// DefaultMaxBytesPercent is the share of storage.root's filesystem that bounds
	// the cache when storage.max_bytes is left out.
	DefaultMaxBytesPercent = 90
	// DefaultMinFreePercent is storage.min_free, as a share of each filesystem.
	DefaultMinFreePercent = 5
	// DefaultSpoolMaxAge is storage.spool_max_age.
	DefaultSpoolMaxAge = time.Hour
	// DefaultScrubRate is storage.scrub_rate, bytes per second.
	DefaultScrubRate Size = 16 << 20
	// DefaultEvictGrace is storage.evict_grace.
	DefaultEvictGrace = 2 * time.Minute
	// MinEvictGrace is the least storage.evict_grace: several times the period at
	// which a master on shared storage publishes its recent accesses (10s).
	MinEvictGrace = 30 * time.Second
	// DefaultScrubInterval is storage.scrub_interval.
	DefaultScrubInterval = time.Minute

	DefaultTagTTL                = time.Minute
	DefaultStaleAfter            = time.Second
	DefaultNegativeTTL           = 3 * time.Second
	DefaultMaxManifestBytes Size = 4 << 20
	DefaultFillRetries           = 5
	DefaultFillBackoff           = 200 * time.Millisecond
	// DefaultPrefetchWorkers is cache.prefetch_workers.
	DefaultPrefetchWorkers = 4
	// DefaultPinTTL and DefaultMaxPinSources are api.pin_ttl and api.max_pin_sources.
	DefaultPinTTL        = 10 * time.Minute
	DefaultMaxPinSources = 10000

	// DefaultPeerHealthInterval is peers.health_interval.
	DefaultPeerHealthInterval = 2 * time.Second
	// DefaultPeerResponseHeader and DefaultPeerStall are peers.response_header and
	// peers.stall.
	DefaultPeerResponseHeader = 5 * time.Second
	DefaultPeerStall          = 4 * time.Second
	// DefaultUpstreamDial, DefaultUpstreamResponseHeader and DefaultUpstreamStall are
	// upstream.timeouts.dial, response_header and stall.
	DefaultUpstreamDial           = 2 * time.Second
	DefaultUpstreamResponseHeader = 4 * time.Second
	DefaultUpstreamStall          = 3 * time.Second
	// DefaultUpstreamMaxConcurrent and DefaultUpstreamMaxRetryAfter are
	// upstream.max_concurrent and max_retry_after.
	DefaultUpstreamMaxConcurrent = 64
	DefaultUpstreamMaxRetryAfter = 30 * time.Second
)

func setDuration(d *Duration, raw any, def time.Duration, path ...any) {
	if !present(raw, path...) {
		d.Duration = def
	}
}

func setInt(v *int, raw any, def int, path ...any) {
	if !present(raw, path...) {
		*v = def
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
		// A longer health_interval alone must not make the default idle one invalid.
		setDuration(&r.Timeouts.HealthIdleInterval, raw, max(DefaultHealthIdleInterval, r.Timeouts.HealthInterval.Duration), append(t, "health_idle_interval")...)
		setDuration(&r.Timeouts.HedgeMin, raw, DefaultHedgeMin, append(t, "hedge_min")...)
		setDuration(&r.Timeouts.HedgeMax, raw, DefaultHedgeMax, append(t, "hedge_max")...)
		setInt(&r.Outlier.ConsecutiveFailures, raw, DefaultConsecutiveFailures, "registry", i, "outlier", "consecutive_failures")
		setInt(&r.Outlier.Consecutive5xx, raw, DefaultConsecutive5xx, "registry", i, "outlier", "consecutive_5xx")
		setInt(&r.Outlier.MaxEjectionPercent, raw, DefaultMaxEjectionPercent, "registry", i, "outlier", "max_ejection_percent")
		setDuration(&r.Outlier.SlowStart, raw, DefaultSlowStart, "registry", i, "outlier", "slow_start")
		setInt(&r.Hedge.BudgetPercent, raw, DefaultHedgeBudgetPercent, "registry", i, "hedge", "budget_percent")
		setInt(&r.Hedge.Burst, raw, DefaultHedgeBurst, "registry", i, "hedge", "burst")
		if !present(raw, "registry", i, "body", "min_rate") {
			r.Body.MinRate = DefaultBodyMinRate
		}
		if !present(raw, "registry", i, "body", "relative_rate") {
			r.Body.RelativeRate = DefaultBodyRelativeRate
		}
		setDuration(&r.Body.Warmup, raw, DefaultBodyWarmup, "registry", i, "body", "warmup")
		setDuration(&r.Body.Window, raw, DefaultBodyWindow, "registry", i, "body", "window")
		setInt(&r.Body.ResumeAttempts, raw, DefaultResumeAttempts, "registry", i, "body", "resume_attempts")
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

	s := &r.Storage
	if !present(raw, "storage", "driver") {
		s.Driver = DefaultStorageDriver
	}
	s.Root = resolve(base, s.Root)
	s.Spool = resolve(base, s.Spool)
	s.resolveSecretParameters(base)
	if !present(raw, "storage", "spool") && s.Driver == DefaultStorageDriver && s.Root != "" {
		s.Spool = filepath.Join(s.Root, DefaultSpoolDir)
	}
	setDuration(&s.TTL, raw, DefaultTTL, "storage", "ttl")
	setDuration(&s.EvictInterval, raw, DefaultEvictInterval, "storage", "evict_interval")
	if !present(raw, "storage", "max_bytes") {
		s.MaxBytesShare = DefaultMaxBytesPercent
	}
	if !present(raw, "storage", "min_free") {
		s.MinFree = Space{Percent: DefaultMinFreePercent}
	}
	setDuration(&s.SpoolMaxAge, raw, DefaultSpoolMaxAge, "storage", "spool_max_age")
	if !present(raw, "storage", "scrub_rate") {
		s.ScrubRate = DefaultScrubRate
	}
	setDuration(&s.ScrubInterval, raw, DefaultScrubInterval, "storage", "scrub_interval")
	if !present(raw, "storage", "shared") {
		s.Shared = s.Driver != DefaultStorageDriver
	}
	setDuration(&s.EvictGrace, raw, DefaultEvictGrace, "storage", "evict_grace")

	c := &r.Cache
	setDuration(&c.TagTTL, raw, DefaultTagTTL, "cache", "tag_ttl")
	setDuration(&c.StaleAfter, raw, DefaultStaleAfter, "cache", "stale_after")
	setDuration(&c.NegativeTTL, raw, DefaultNegativeTTL, "cache", "negative_ttl")
	if !present(raw, "cache", "max_manifest_bytes") {
		c.MaxManifestBytes = DefaultMaxManifestBytes
	}
	if !present(raw, "cache", "fill_retries") {
		c.FillRetries = DefaultFillRetries
	}
	setDuration(&c.FillBackoff, raw, DefaultFillBackoff, "cache", "fill_backoff")
	setInt(&c.PrefetchWorkers, raw, DefaultPrefetchWorkers, "cache", "prefetch_workers")

	for i := range r.Upstream {
		u := &r.Upstream[i]
		if !present(raw, "upstream", i, "local_prefix") {
			u.LocalPrefix = DefaultLocalPrefix
		}
		// A bad URL gets no default; validation reports the URL.
		if !present(raw, "upstream", i, "ns") {
			if pu, err := url.Parse(u.URL); err == nil && pu.Host != "" {
				u.NS = []string{pu.Host}
			}
		}
		u.TLS.resolvePaths(base)
		u.Auth.CredentialsFile = resolve(base, u.Auth.CredentialsFile)
		ut := []any{"upstream", i, "timeouts"}
		setDuration(&u.Timeouts.Dial, raw, DefaultUpstreamDial, append(ut, "dial")...)
		setDuration(&u.Timeouts.ResponseHeader, raw, DefaultUpstreamResponseHeader, append(ut, "response_header")...)
		setDuration(&u.Timeouts.Stall, raw, DefaultUpstreamStall, append(ut, "stall")...)
		setInt(&u.MaxConcurrent, raw, DefaultUpstreamMaxConcurrent, "upstream", i, "max_concurrent")
		setDuration(&u.MaxRetryAfter, raw, DefaultUpstreamMaxRetryAfter, "upstream", i, "max_retry_after")
	}

	p := &r.Peers
	for j := range p.Endpoints {
		if !present(raw, "peers", "endpoint", j, "weight") {
			p.Endpoints[j].Weight = DefaultWeight
		}
	}
	p.TokenFile = resolve(base, p.TokenFile)
	p.TLS.resolvePaths(base)
	setDuration(&p.HealthInterval, raw, DefaultPeerHealthInterval, "peers", "health_interval")
	setDuration(&p.ResponseHeader, raw, DefaultPeerResponseHeader, "peers", "response_header")
	setDuration(&p.Stall, raw, DefaultPeerStall, "peers", "stall")

	r.Auth.Htpasswd = resolve(base, r.Auth.Htpasswd)
	r.Auth.Token.RootCertBundle = resolve(base, r.Auth.Token.RootCertBundle)
	r.API.TokenFile = resolve(base, r.API.TokenFile)
	r.API.NodeKeyFile = resolve(base, r.API.NodeKeyFile)
	setDuration(&r.API.PinTTL, raw, DefaultPinTTL, "api", "pin_ttl")
	setInt(&r.API.MaxPinSources, raw, DefaultMaxPinSources, "api", "max_pin_sources")

	if !present(raw, "log", "level") {
		r.Log.Level = DefaultLogLevel
	}
}
