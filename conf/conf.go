// Package conf is the one configuration schema for every hopless component: the node
// side (the in-process balancer and the NRI plugin), registryd on the masters, and the
// installer. Files are TOML. Load* functions decode strictly (an unknown key is an
// error), apply defaults in one place (defaults.go) and validate; every error names the
// file, the field and what is wrong, for example
//
//	node.toml: registry[0].endpoint[2].weight: must be > 0, got 0
package conf

// Endpoint is one master registry that clients may send requests to.
type Endpoint struct {
	// URL is the endpoint's base URL, scheme and host[:port] only,
	// e.g. "https://127.0.1.1:5001".
	URL string `toml:"url"`
	// Weight is the endpoint's relative share of requests. Default 1; must be > 0.
	Weight int `toml:"weight"`
	// Local marks the endpoint that runs on the same node; the balancer may prefer it.
	Local bool `toml:"local"`
}

// TLS is the client side of a TLS connection.
type TLS struct {
	// CA is a PEM bundle that verifies the server. Empty means the system roots.
	CA string `toml:"ca"`
	// Cert and Key are an optional client certificate, both or neither.
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// Insecure allows plain http:// URLs. TLS is required unless this is set.
	Insecure bool `toml:"insecure"`
}

// Auth says how a client authenticates.
type Auth struct {
	// CredentialsFile holds "username:password" on one line. It must have mode 0600
	// or stricter. Its content is never logged.
	CredentialsFile string `toml:"credentials_file"`
}

// Timeouts bound every step of a request to an endpoint.
type Timeouts struct {
	// Dial bounds the TCP and TLS handshake. Default 1s.
	Dial Duration `toml:"dial"`
	// ResponseHeader bounds one attempt's wait for response headers; a miss counts
	// as one local-origin failure of the endpoint. It must exceed the masters' own
	// bounds on their peer and upstream waits (see registryd's timeout table).
	// Default 10s.
	ResponseHeader Duration `toml:"response_header"`
	// Stall aborts a body that delivers no bytes for this long. Default 5s.
	Stall Duration `toml:"stall"`
	// HealthInterval bounds the period of the active GET /v2/ check (0.9 to 1 of
	// it) while the node is active (requests in flight or made within the last
	// HealthInterval), and of a master out of rotation; a real answer from a master
	// stands for its next check. Default 1s.
	HealthInterval Duration `toml:"health_interval"`
	// HealthIdleInterval is the period of the check of a master in rotation while
	// the node is idle, spread by ±50 %. A node that turns active checks the masters
	// it has not heard from lately at once. Must be >=
	// HealthInterval. Default 30s, or HealthInterval if that is longer.
	HealthIdleInterval Duration `toml:"health_idle_interval"`
	// HealthTimeout bounds one active check. Default 500ms.
	HealthTimeout Duration `toml:"health_timeout"`
	// HedgeMin and HedgeMax bound the adaptive hedge delay. Defaults 100ms and 1s.
	HedgeMin Duration `toml:"hedge_min"`
	HedgeMax Duration `toml:"hedge_max"`
}

// Outlier says when an endpoint is taken out of rotation for its own failures.
type Outlier struct {
	// ConsecutiveFailures ejects an endpoint after this many local-origin failures
	// in a row (connect or TLS error, no headers in time, a stalled, cut or too slow
	// body). A failed active check marks it unhealthy at once. Default 3.
	ConsecutiveFailures int `toml:"consecutive_failures"`
	// Consecutive5xx ejects an endpoint after this many 5xx answers of its own in a
	// row; a 5xx that the master marks as the upstream's never counts. Default 5.
	Consecutive5xx int `toml:"consecutive_5xx"`
	// MaxEjectionPercent caps the share of endpoints ejected for failures at once;
	// one may always be ejected. Default 50.
	MaxEjectionPercent int `toml:"max_ejection_percent"`
	// SlowStart is how long a master that comes back into rotation takes to reach
	// its full weight, ramping linearly from a tenth of it. 0 turns it off.
	// Default 10s.
	SlowStart Duration `toml:"slow_start"`
}

// Hedge is the budget of hedged and retried requests.
type Hedge struct {
	// BudgetPercent is how many hedges and retries may be sent per 100 requests.
	// 0 disables hedging (retries after failures are still made). Default 8: with
	// Burst, hedges stay within 10 % of the requests over a few dozen of them.
	BudgetPercent int `toml:"budget_percent"`
	// Burst is how many may be sent at once before the budget has accrued, e.g.
	// on a fresh node. Default 1.
	Burst int `toml:"burst"`
}

// Body tunes how response bodies are watched and resumed.
type Body struct {
	// MinRate is the throughput floor, in bytes per second, below which a body is
	// resumed on another endpoint after Warmup. Default 64KiB.
	MinRate Size `toml:"min_rate"`
	// RelativeRate raises the floor for a body served from a master's cache to
	// this fraction of the fastest other endpoint's recent throughput. 0 turns
	// the relative floor off. Default 0.1.
	RelativeRate float64 `toml:"relative_rate"`
	// Warmup is how long a body runs before its throughput is judged. Default 2s.
	Warmup Duration `toml:"warmup"`
	// Window is the period over which throughput is measured. Default 2s.
	Window Duration `toml:"window"`
	// ResumeAttempts bounds the resumes of one body after failures, on any
	// endpoint, the same one included, with backoff. Default 6.
	ResumeAttempts int `toml:"resume_attempts"`
}

// Registry is one image host whose pulls a node sends to the masters.
type Registry struct {
	// Host is the image host as written in image references, e.g.
	// "registry.d8-system.svc:5001". Pulls of other hosts are untouched.
	Host string `toml:"host"`
	// Endpoints are the masters that serve Host.
	Endpoints []Endpoint `toml:"endpoint"`
	TLS       TLS        `toml:"tls"`
	Auth      Auth       `toml:"auth"`
	Timeouts  Timeouts   `toml:"timeouts"`
	Outlier   Outlier    `toml:"outlier"`
	Hedge     Hedge      `toml:"hedge"`
	Body      Body       `toml:"body"`
	// Fallback sends a pull to the image host itself when every endpoint is down.
	Fallback bool `toml:"fallback"`
}

// Node is the node-side configuration shared by the in-process balancer and the NRI
// plugin (node.toml).
type Node struct {
	Registries []Registry `toml:"registry"`
}

// Registryd is the configuration of the master daemon (registryd.toml).
type Registryd struct {
	Server   Server     `toml:"server"`
	Metrics  Metrics    `toml:"metrics"`
	Storage  Storage    `toml:"storage"`
	Cache    Cache      `toml:"cache"`
	Upstream []Upstream `toml:"upstream"`
	Peers    Peers      `toml:"peers"`
	Auth     ClientAuth `toml:"auth"`
	API      API        `toml:"api"`
	Log      Log        `toml:"log"`
	Debug    Debug      `toml:"debug"`
}

// Server is registryd's client-facing listener.
type Server struct {
	// Listen is host:port. Default ":5001".
	Listen string `toml:"listen"`
	// TLSCert and TLSKey are the server's certificate and key (PEM). Required unless
	// Insecure is set.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// Insecure serves plain HTTP. Only for tests behind another TLS hop.
	Insecure bool `toml:"insecure"`
	// ShutdownTimeout bounds the graceful shutdown on SIGTERM. Default 10s.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// Metrics is the separate Prometheus listener. An empty Listen disables it.
type Metrics struct {
	Listen string `toml:"listen"`
}

// Storage is where registryd keeps its cache.
type Storage struct {
	// Driver is a distribution storage driver name. Default "filesystem".
	Driver string `toml:"driver"`
	// Root is the directory of the filesystem driver. Required for it.
	Root string `toml:"root"`
	// Parameters are passed to a driver other than filesystem (e.g. s3's bucket,
	// region, regionendpoint).
	Parameters map[string]any `toml:"parameters"`
	// Spool is a local directory for blobs being fetched; clients stream from it while
	// the fill runs. Default Root/_spool; required when Driver is not filesystem.
	Spool string `toml:"spool"`
	// MaxBytes bounds the cache size, spool files included; least recently used
	// content is evicted beyond it. Zero means unbounded. Left out, it is
	// MaxBytesShare of the filesystem holding Root (filesystem driver), or unbounded.
	MaxBytes Size `toml:"max_bytes"`
	// MaxBytesShare is the percentage of Root's filesystem that bounds the cache when
	// max_bytes is left out (DefaultMaxBytesPercent); 0 when it is set.
	MaxBytesShare float64 `toml:"-"`
	// MinFree is the free-space floor of the filesystems holding Spool and Root: below
	// it registryd evicts, and while it stays below, it serves what it has and
	// streams misses through without caching them. A size ("1GiB") or a share of the
	// filesystem ("5%"). Default 5%; 0 disables the floor.
	MinFree Space `toml:"min_free"`
	// SpoolMaxAge is how long a spool file that no fill holds is kept for a later
	// fill to resume from; older ones are removed. Default 1h.
	SpoolMaxAge Duration `toml:"spool_max_age"`
	// TTL is how long content may go unused before it is evicted. Default 168h.
	TTL Duration `toml:"ttl"`
	// EvictInterval is how often eviction runs. Default 1m.
	EvictInterval Duration `toml:"evict_interval"`
	// ScrubRate bounds the background scrub, which re-hashes stored blobs one at a
	// time, oldest-verified first, and removes those whose bytes no longer match
	// their digest: bytes per second. Default 16MiB; 0 disables the scrub.
	ScrubRate Size `toml:"scrub_rate"`
	// ScrubInterval is the least time between the starts of two scrub passes, so that
	// a small store is not re-read in a busy loop; a pass that takes longer is
	// followed by the next at once. Default 1m; it must be > 0.
	ScrubInterval Duration `toml:"scrub_interval"`
	// Shared says that other masters use the same storage (one bucket): each master
	// then keeps its index and pins under /hopless/masters/<master_id>/, and one
	// master at a time evicts, over every master's accesses and pins, in two steps
	// evict_grace apart. Default true for every driver but filesystem.
	Shared bool `toml:"shared"`
	// MasterID names this master among those sharing the storage; it must be unique
	// among them and stay the same across restarts. Default: the host of peers.self,
	// else the host name (registryd fills it in).
	MasterID string `toml:"master_id"`
	// EvictGrace is, on shared storage, the least time between the eviction run that
	// plans a removal and the run that makes it, unchanged; any master's use of the
	// content meanwhile cancels it. Default 2m; at least 30s.
	EvictGrace Duration `toml:"evict_grace"`
}

// Cache tunes the pull-through cache.
type Cache struct {
	// TagTTL is how long a tag is served without asking upstream again. Default 1m.
	TagTTL Duration `toml:"tag_ttl"`
	// StaleAfter is how long a request with a last known answer for a tag waits for
	// the tag's revalidation before it is served that answer; the revalidation goes
	// on in the background. It must be shorter than every upstream's
	// timeouts.response_header. Default 1s.
	StaleAfter Duration `toml:"stale_after"`
	// NegativeTTL is how long an upstream's failure is remembered for a repository:
	// meanwhile its tags and manifests are served stale or failed at once, without
	// asking the upstream. Default 3s.
	NegativeTTL Duration `toml:"negative_ttl"`
	// MaxManifestBytes rejects larger manifests. Default 4MiB.
	MaxManifestBytes Size `toml:"max_manifest_bytes"`
	// FillRetries bounds the resumes of one upstream blob fetch. Default 5.
	FillRetries int `toml:"fill_retries"`
	// FillBackoff is the first retry delay; it doubles up to 5s. Default 200ms.
	FillBackoff Duration `toml:"fill_backoff"`
	// PrefetchWorkers is how many images prefetch jobs warm at once; more wait in a
	// queue. Default 4.
	PrefetchWorkers int `toml:"prefetch_workers"`
}

// Upstream is a registry that registryd caches from.
type Upstream struct {
	// URL is the upstream's base URL, e.g. "https://registry.example".
	URL string `toml:"url"`
	// LocalPrefix is the repository prefix clients use, default "system/deckhouse".
	// A request for LocalPrefix/X is fetched from upstream as Path/X.
	LocalPrefix string `toml:"local_prefix"`
	// Path is the upstream repository path that LocalPrefix maps to, e.g. "deckhouse/ce".
	// Empty maps LocalPrefix/X to X.
	Path string `toml:"path"`
	// AllowUnprefixed lets names outside LocalPrefix through to this upstream
	// unchanged (with ns naming it, or as the first such upstream without ns). Off by
	// default: registryd refuses them as not configured, so that its credentials never
	// reach repositories outside the alias.
	AllowUnprefixed bool `toml:"allow_unprefixed"`
	// NS lists the values of the ns query parameter (the registry host a client
	// pulled) that select this upstream. Default: the URL's host.
	NS       []string         `toml:"ns"`
	TLS      TLS              `toml:"tls"`
	Auth     Auth             `toml:"auth"`
	Timeouts UpstreamTimeouts `toml:"timeouts"`
	// MaxConcurrent bounds the requests in flight to this upstream; more wait for
	// one to end. 0 is unbounded. Default 64.
	MaxConcurrent int `toml:"max_concurrent"`
	// MaxRetryAfter caps how long a Retry-After of a 429 or 503 keeps registryd from
	// asking this upstream again. Default 30s.
	MaxRetryAfter Duration `toml:"max_retry_after"`
}

// UpstreamTimeouts bound registryd's requests to one upstream. Each must be shorter
// than the caller's bound on registryd: peers.response_header and peers.stall must
// exceed response_header and stall here (see registryd's timeout table).
type UpstreamTimeouts struct {
	// Dial bounds the TCP and TLS handshakes. Default 2s.
	Dial Duration `toml:"dial"`
	// ResponseHeader bounds the wait for response headers. Default 4s.
	ResponseHeader Duration `toml:"response_header"`
	// Stall fails a body that delivers no bytes for this long. Default 3s.
	Stall Duration `toml:"stall"`
}

// Peers are the other masters; a miss asks the blob's owner among them first.
type Peers struct {
	// Self is this master's URL as the peers list it; it is never asked.
	Self string `toml:"self"`
	// Endpoints is the static peer list (Self may be among them).
	Endpoints []Endpoint `toml:"endpoint"`
	// DNS is the name of a headless Service whose A records are the peers, with Port.
	DNS  string `toml:"dns"`
	Port int    `toml:"port"`
	// TokenFile holds the shared secret peers present to each other (mode 0600).
	// Required when there are peers.
	TokenFile string `toml:"token_file"`
	TLS       TLS    `toml:"tls"`
	// HealthInterval is the period of peer health checks. Default 2s.
	HealthInterval Duration `toml:"health_interval"`
	// ResponseHeader bounds the wait for a peer's response headers. It must exceed
	// every upstream's timeouts.response_header, so that an owner waiting on its
	// upstream answers (with the upstream's failure) before the asking master gives
	// up on it. Default 5s.
	ResponseHeader Duration `toml:"response_header"`
	// Stall fails a peer body that delivers no bytes for this long; it must exceed
	// every upstream's timeouts.stall. Default 4s.
	Stall Duration `toml:"stall"`
}

// ClientAuth is how clients authenticate; empty means anonymous pulls.
type ClientAuth struct {
	// Htpasswd is an htpasswd file (bcrypt) for basic auth.
	Htpasswd string `toml:"htpasswd"`
	// Token configures bearer tokens issued by an external token server.
	Token TokenAuth `toml:"token"`
}

// TokenAuth is distribution's token authentication.
type TokenAuth struct {
	Realm          string `toml:"realm"`
	Service        string `toml:"service"`
	Issuer         string `toml:"issuer"`
	RootCertBundle string `toml:"rootcertbundle"`
}

// API is registryd's own endpoints under /hopless/v1/ (pins, prefetch).
type API struct {
	// TokenFile holds the bearer token those endpoints require (mode 0600). Empty
	// disables them.
	TokenFile string `toml:"token_file"`
	// NodeKeyFile holds the key that node credentials are derived from (mode 0600,
	// at least 16 bytes): a node reports its pins with its own token, derived from
	// this key and its node name (registryd node-token), and can speak only for
	// itself. Empty disables the pins endpoint.
	NodeKeyFile string `toml:"node_key_file"`
	// PinTTL is how long a node's pins hold after its last report: a node that does
	// not report again within it loses its pins. Default 10m; at least 10s.
	PinTTL Duration `toml:"pin_ttl"`
	// MaxPinSources bounds how many nodes may hold pins at once. Default 10000.
	MaxPinSources int `toml:"max_pin_sources"`
}

// Debug holds options for finding out where a master's time goes; all are off by
// default.
type Debug struct {
	// PprofListen, when set, serves Go's CPU, heap and goroutine profiles and
	// execution traces under /debug/pprof/ on this address, without TLS or
	// authentication: it must be a loopback IP address and port.
	PprofListen string `toml:"pprof_listen"`
}

// Log configures structured logging.
type Log struct {
	// Level is one of debug, info, warn, error. Default info.
	Level string `toml:"level"`
}
