// Package hostsync keeps the hosts.toml of each configured image host in this
// node's order of its masters: by weighted rendezvous hashing on the node name, so
// that across many nodes first choices follow the weights, with the masters that
// fail their health checks moved to the end. A master is never left out: when all
// fail, containerd still tries them in order before the image host itself.
//
// Health comes from plugin/balance, the same active checks (GET /v2/ within
// health_timeout every health_interval, a master's own 5xx a failure) and state as
// the in-process plugin: one implementation for both modes. Nothing but the checks
// goes through those balancers here; containerd sends the pulls itself.
package hostsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/rendezvous"
	"github.com/hopless/hopless/nri/hosts"
	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/transfer"
)

// DefaultInterval is how often the masters' health is looked at: well inside the 3 s
// in which a failed master must have moved to the end.
const DefaultInterval = 250 * time.Millisecond

// Health is the live state of one registry's masters, in configuration order.
type Health interface {
	Status() []balance.EndpointStatus
	io.Closer
}

// HealthFactory starts the checks of one registry's masters.
type HealthFactory func(conf.Registry) (Health, error)

// Writer is where the files go: hosts.Manager.
type Writer interface {
	Write(host string, content []byte) (bool, error)
}

// Config is what a Syncer needs.
type Config struct {
	// Node is this node's name, the key of its order.
	Node       string
	Registries []conf.Registry
	Writer     Writer
	Health     HealthFactory
	// Interval is how often health is looked at; 0 is DefaultInterval.
	Interval time.Duration
	Logger   *slog.Logger
	// Metrics, if set, is registered with the syncer's counters.
	Metrics prometheus.Registerer
}

// Syncer writes hosts.toml files. Run it once.
type Syncer struct {
	cfg   Config
	log   *slog.Logger
	tick  func(time.Duration) (<-chan time.Time, func())
	m     metrics
	state map[string]*hostState
}

type hostState struct {
	reg     conf.Registry
	health  Health
	last    []string // URLs of the last order written
	lastErr string
}

type metrics struct {
	writes   *prometheus.CounterVec
	failures *prometheus.CounterVec
	healthy  *prometheus.GaugeVec
}

// New checks cfg and returns a Syncer.
func New(cfg Config) (*Syncer, error) {
	if cfg.Node == "" {
		return nil, errors.New("hostsync: no node name")
	}
	if cfg.Writer == nil || cfg.Health == nil {
		return nil, errors.New("hostsync: a writer and a health factory are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Syncer{cfg: cfg, log: cfg.Logger, state: map[string]*hostState{}, tick: ticker}
	s.m = metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_nri_hosts_writes_total", Help: "hosts.toml files written because the order of the masters changed, by image host.",
		}, []string{"host"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopless_nri_hosts_write_failures_total", Help: "hosts.toml writes that failed, by image host.",
		}, []string{"host"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopless_nri_master_healthy", Help: "1 while a master passes its health checks, by image host and master.",
		}, []string{"host", "master"}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{s.m.writes, s.m.failures, s.m.healthy} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("hostsync: registering metrics: %w", err)
			}
		}
	}
	return s, nil
}

func ticker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// Run starts the health checks, writes every hosts.toml at once and again whenever
// the order changes, until ctx ends. It fails only when a registry's checks cannot
// be started; a write that fails is logged and tried again at the next look.
func (s *Syncer) Run(ctx context.Context) error {
	defer s.close()
	for _, r := range s.cfg.Registries {
		h, err := s.cfg.Health(r)
		if err != nil {
			return fmt.Errorf("hostsync: health checks of %s: %w", r.Host, err)
		}
		s.state[r.Host] = &hostState{reg: r, health: h}
	}
	c, stop := s.tick(s.cfg.Interval)
	defer stop()
	for {
		s.SyncOnce()
		select {
		case <-ctx.Done():
			return nil
		case <-c:
		}
	}
}

func (s *Syncer) close() {
	for _, st := range s.state {
		_ = st.health.Close()
	}
}

// SyncOnce looks at every registry's health and writes what changed.
func (s *Syncer) SyncOnce() {
	for _, r := range s.cfg.Registries {
		st := s.state[r.Host]
		if st == nil {
			continue
		}
		s.sync(st)
	}
}

func (s *Syncer) sync(st *hostState) {
	status := st.health.Status()
	healthy := make([]bool, len(st.reg.Endpoints))
	for i := range healthy {
		healthy[i] = i < len(status) && status[i].Healthy
		v := 0.0
		if healthy[i] {
			v = 1
		}
		s.m.healthy.WithLabelValues(st.reg.Host, st.reg.Endpoints[i].URL).Set(v)
	}
	order := Order(s.cfg.Node, st.reg.Endpoints, healthy)
	urls := make([]string, len(order))
	for i, e := range order {
		urls[i] = e.URL
	}
	if slices.Equal(urls, st.last) {
		return
	}
	content, err := hosts.Render(st.reg, order)
	if err == nil {
		_, err = s.cfg.Writer.Write(st.reg.Host, content)
	}
	if err != nil {
		s.m.failures.WithLabelValues(st.reg.Host).Inc()
		if msg := err.Error(); msg != st.lastErr {
			st.lastErr = msg
			s.log.Error("writing hosts.toml failed; containerd keeps the file as it was", "host", st.reg.Host, "error", err)
		}
		return
	}
	st.lastErr = ""
	s.m.writes.WithLabelValues(st.reg.Host).Inc()
	var down []string
	for i, e := range st.reg.Endpoints {
		if !healthy[i] {
			why := "failing its checks"
			if i < len(status) && status[i].Reason != "" {
				why = status[i].Reason
			}
			down = append(down, e.URL+" ("+why+")")
		}
	}
	s.log.Info("hosts.toml written", "host", st.reg.Host, "order", strings.Join(urls, " "), "last_because_unhealthy", down)
	st.last = urls
}

// Order is node's order of eps: the healthy ones by weighted rendezvous hashing on
// node, then the unhealthy ones in the same manner. healthy[i] is eps[i]'s health.
func Order(node string, eps []conf.Endpoint, healthy []bool) []conf.Endpoint {
	items := make([]rendezvous.Item, len(eps))
	for i, e := range eps {
		items[i] = rendezvous.Item{ID: e.URL, Weight: float64(e.Weight)}
	}
	var up, down []conf.Endpoint
	for _, i := range rendezvous.Order(node, items) {
		if i < len(healthy) && healthy[i] {
			up = append(up, eps[i])
		} else {
			down = append(down, eps[i])
		}
	}
	return append(up, down...)
}

// Balanced is the HealthFactory of production: plugin/balance's checks, built
// exactly as the in-process plugin builds them for a registry (TLS, timeouts,
// outlier settings), recording into m, except that they run every health_interval:
// no request goes through these balancers, so they are never active, and their
// checks are the only news of the masters.
func Balanced(m *balance.Metrics) HealthFactory {
	f := transfer.Balanced(m)
	return func(r conf.Registry) (Health, error) {
		r.Timeouts.HealthIdleInterval = r.Timeouts.HealthInterval
		rt, err := f(r)
		if err != nil {
			return nil, err
		}
		h, ok := rt.(Health)
		if !ok {
			return nil, fmt.Errorf("hostsync: the balancer of %s reports no status", r.Host)
		}
		return h, nil
	}
}
