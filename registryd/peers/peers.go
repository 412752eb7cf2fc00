// Package peers is the set of registryd masters that share one cluster-wide cache, and
// the client one master uses to ask another for a blob.
//
// # Ownership
//
// Each blob digest has one owner among the healthy masters. A master that misses asks
// the owner, and the owner fills from upstream once for the whole cluster. The owner is
// chosen by weighted rendezvous (highest random weight) hashing: every master scores
// every member m as
//
//	score(m, key) = -weight(m) / ln(h(m, key))
//
// where h is the first 53 bits of SHA-256(m.URL, 0, key) mapped into the open interval
// (0,1), and the highest score wins. Since -ln(h) is exponentially distributed,
// -ln(h)/weight is exponential with rate weight, and the member with the highest score
// is the one whose exponential is the smallest: that happens with probability exactly
// weight/sum(weights). Rendezvous hashing was chosen over a hash ring because it needs
// no virtual nodes to follow the weights closely and, when a member goes down, only the
// keys it owned move (each to its own second choice), so the other owners' caches stay
// warm. Masters agree on owners without talking to each other as long as they agree on
// the member URLs and weights; URLs are compared in a canonical form (lower case,
// explicit port), and Self must name this master as the others list it.
//
// # Health
//
// Run checks every peer with GET /healthz each HealthInterval: two failures in a row
// mark a peer down and one success marks it up again. A peer starts up, so that
// ownership is consistent from the first request. A peer that fails a Blob request is
// marked down at once (passive ejection) until a health check started after the failure
// succeeds. A peer that answers with the Hopless-Upstream-Error header has not failed:
// it passes on its upstream's failure, which Blob returns as the upstream's. Self is always considered healthy. In DNS mode the peers are the A and
// AAAA records of a headless Service, resolved again every five health intervals.
//
// # Loop freedom
//
// Masters may briefly disagree on who owns a key, since each has its own view of peer
// health. That never makes a request loop: a request that passed Authenticate is
// served from the receiving master's own cache or from upstream, and is never forwarded
// to another peer. A peer fill is therefore exactly one hop, whatever each master
// believes about ownership.
package peers

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/metrics"
)

const (
	// BlobPath is the peer endpoint that Blob asks and the peer handler serves.
	BlobPath = "/hopless/v1/peer/blob"
	// HeaderPeer carries the URL of the master that sends a peer request.
	HeaderPeer = "X-Hopless-Peer"

	healthPath            = "/healthz"
	defaultHealthInterval = 2 * time.Second
	// downAfter is the number of consecutive failed health checks that mark a peer down.
	downAfter = 2
	// dnsEvery is the number of health intervals between two DNS resolutions.
	dnsEvery         = 5
	dialTimeout      = time.Second
	maxHealthTimeout = time.Second
	maxDNSTimeout    = 5 * time.Second
	// probeAfter is how long a blob request waits for the owner's headers before
	// the owner is checked; probeTimeout bounds that check.
	probeAfter   = 500 * time.Millisecond
	probeTimeout = 500 * time.Millisecond
)

// Peer is another master that may own blobs.
type Peer struct {
	// URL is the peer's base URL in canonical form: scheme://host:port.
	URL string
	// Weight is the peer's relative share of owned keys.
	Weight int
}

// Set is the current view of the peers: who they are, which are healthy, and who owns
// a key. It is safe for concurrent use.
type Set struct {
	self      Peer
	token     string
	tokenSum  [sha256.Size]byte
	client    *http.Client
	log       *slog.Logger
	metrics   *metrics.Metrics
	lookup    func(ctx context.Context, host string) ([]string, error)
	dns       string
	dnsScheme string
	dnsPort   string
	interval  time.Duration
	// stall fails a peer body that delivers no bytes for this long.
	stall time.Duration

	mu sync.RWMutex
	// peers are the other masters by URL; self is never among them.
	peers map[string]*member
	// selfListed records whether the last DNS answer listed self, to warn once per change.
	selfListed bool
}

type member struct {
	peer  Peer
	up    bool
	fails int
	// epoch is bumped by each passive ejection, so that a health check that was
	// already running when the peer failed cannot mark it up again.
	epoch uint64
}

// Option configures a Set.
type Option func(*Set)

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option {
	return func(s *Set) { s.log = l }
}

// WithMetrics counts peer fills on m.
func WithMetrics(m *metrics.Metrics) Option {
	return func(s *Set) { s.metrics = m }
}

// WithLookup replaces the DNS resolver used in DNS mode. lookup returns IP addresses.
func WithLookup(lookup func(ctx context.Context, host string) ([]string, error)) Option {
	return func(s *Set) { s.lookup = lookup }
}

// WithHTTPClient replaces the client built from cfg.TLS and cfg.ResponseHeader, for
// tests.
func WithHTTPClient(c *http.Client) Option {
	return func(s *Set) { s.client = c }
}

// New builds the peer set from cfg. Static endpoints are known at once; in DNS mode the
// set is empty until Run resolves cfg.DNS. The shared token is read from cfg.TokenFile,
// which must have mode 0600 or stricter; it is required when there are peers.
func New(cfg conf.Peers, opts ...Option) (*Set, error) {
	s := &Set{
		log:      slog.New(slog.DiscardHandler),
		lookup:   net.DefaultResolver.LookupHost,
		dns:      cfg.DNS,
		interval: cfg.HealthInterval.Duration,
		stall:    cfg.Stall.Duration,
		peers:    make(map[string]*member),
	}
	if s.interval <= 0 {
		s.interval = defaultHealthInterval
	}
	if s.stall <= 0 {
		s.stall = conf.DefaultPeerStall
	}
	for _, o := range opts {
		o(s)
	}
	insecure := cfg.TLS.Insecure
	if cfg.DNS != "" && len(cfg.Endpoints) > 0 {
		return nil, fmt.Errorf("peers: endpoint and dns are exclusive, set one: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Self != "" {
		u, err := canonicalURL(cfg.Self, insecure)
		if err != nil {
			return nil, fmt.Errorf("peers.self: %w", err)
		}
		s.self = Peer{URL: u, Weight: 1}
	}
	var static []Peer
	for i, e := range cfg.Endpoints {
		u, err := canonicalURL(e.URL, insecure)
		if err != nil {
			return nil, fmt.Errorf("peers.endpoint[%d].url: %w", i, err)
		}
		w := e.Weight
		if w == 0 {
			w = 1
		}
		if w < 0 {
			return nil, fmt.Errorf("peers.endpoint[%d].weight: must be > 0, got %d: %w", i, w, errdefs.ErrInvalidArgument)
		}
		if u == s.self.URL {
			s.self.Weight = w
			continue
		}
		if _, dup := s.peers[u]; dup {
			return nil, fmt.Errorf("peers.endpoint[%d].url: %s is listed twice: %w", i, u, errdefs.ErrInvalidArgument)
		}
		p := Peer{URL: u, Weight: w}
		s.peers[u] = &member{peer: p, up: true}
		static = append(static, p)
	}
	hasPeers := len(static) > 0 || cfg.DNS != ""
	if hasPeers && s.self.URL == "" {
		return nil, fmt.Errorf("peers.self: required when there are peers: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.DNS != "" {
		// The masters behind one Service are alike, so they use self's scheme and,
		// unless Port says otherwise, self's port.
		su, _ := url.Parse(s.self.URL)
		s.dnsScheme = su.Scheme
		s.dnsPort = su.Port()
		if cfg.Port != 0 {
			if cfg.Port < 0 || cfg.Port > 65535 {
				return nil, fmt.Errorf("peers.port: must be 1-65535, got %d: %w", cfg.Port, errdefs.ErrInvalidArgument)
			}
			s.dnsPort = strconv.Itoa(cfg.Port)
		}
		s.selfListed = true
	}
	switch {
	case cfg.TokenFile != "":
		tok, err := conf.ReadToken(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("peers.token_file: %w", err)
		}
		s.token = tok
		s.tokenSum = sha256.Sum256([]byte(tok))
	case hasPeers:
		return nil, fmt.Errorf("peers.token_file: required when there are peers: %w", errdefs.ErrInvalidArgument)
	}
	if s.client == nil {
		c, err := newClient(cfg.TLS, cfg.ResponseHeader.Duration)
		if err != nil {
			return nil, fmt.Errorf("peers.tls: %w", err)
		}
		s.client = c
	}
	if len(static) > 0 {
		s.log.Info("peers configured", "self", s.self.URL, "peers", urls(static))
	}
	return s, nil
}

// Healthy returns the peers that are up, sorted by URL. Self is not among them.
func (s *Set) Healthy() []Peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var ps []Peer
	for _, m := range s.peers {
		if m.up {
			ps = append(ps, m.peer)
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].URL < ps[j].URL })
	return ps
}

// LogValue keeps the token out of logs when a Set is logged.
func (s *Set) LogValue() slog.Value {
	return slog.GroupValue(slog.String("self", s.self.URL), slog.Any("healthy", urls(s.Healthy())))
}

// String keeps the token out of fmt output.
func (s *Set) String() string {
	return fmt.Sprintf("peers.Set{self: %s, healthy: %v}", s.self.URL, urls(s.Healthy()))
}

func urls(ps []Peer) []string {
	us := make([]string, len(ps))
	for i, p := range ps {
		us[i] = p.URL
	}
	return us
}

// canonicalURL reduces a base URL to scheme://host:port in lower case with an explicit
// port and IP addresses in their canonical text, so that all masters hash the same
// string for the same peer.
func canonicalURL(raw string, insecure bool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	switch scheme {
	case "https":
		if port == "" {
			port = "443"
		}
	case "http":
		if !insecure {
			return "", fmt.Errorf("%q: plain http needs tls.insecure: %w", raw, errdefs.ErrInvalidArgument)
		}
		if port == "" {
			port = "80"
		}
	default:
		return "", fmt.Errorf("%q: want an https:// URL: %w", raw, errdefs.ErrInvalidArgument)
	}
	if u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q: want scheme://host[:port] only: %w", raw, errdefs.ErrInvalidArgument)
	}
	host := strings.ToLower(u.Hostname())
	if a, err := netip.ParseAddr(host); err == nil {
		host = a.Unmap().String()
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// newClient is the client for peer requests: the cluster CA only, no proxy from the
// environment, and short dial and header timeouts so that a dead or frozen peer costs
// little (responseHeader, default 5s, is peers.response_header, which validation keeps
// above every upstream's, so that an owner waiting on its upstream answers first). It
// stays on HTTP/1.1 so that concurrent fills use their own connections and a stalled
// stream does not hold up others.
func newClient(t conf.TLS, responseHeader time.Duration) (*http.Client, error) {
	if responseHeader <= 0 {
		responseHeader = conf.DefaultPeerResponseHeader
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("reading CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA %s: no PEM certificates found: %w", t.CA, errdefs.ErrInvalidArgument)
		}
		tc.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate %s: %w", t.Cert, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: (&net.Dialer{
			Timeout:   dialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   dialTimeout,
		ResponseHeaderTimeout: responseHeader,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}}, nil
}
