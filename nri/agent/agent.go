// Package agent runs hopless-nri: the NRI connection, the hosts.toml of the image
// hosts (nri/hostsync), the pins reporter (nri/pins), the checks of the node's
// containerd (nri/cri) and the metrics listener.
//
// An external plugin (a DaemonSet on the NRI socket) loads its configuration from a
// file, starts everything, and connects; when containerd restarts, the connection
// drops and the agent connects again with backoff, while hosts.toml and the pins go
// on being kept. A pre-installed plugin, which containerd launches with a
// connection already made, gets its configuration in Configure and ends with the
// connection: containerd launches it again when it starts again.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/stub"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/nri/cri"
	"github.com/hopless/hopless/nri/events"
	"github.com/hopless/hopless/nri/hosts"
	"github.com/hopless/hopless/nri/hostsync"
	"github.com/hopless/hopless/nri/pins"
	"github.com/hopless/hopless/nri/plugin"
	"github.com/hopless/hopless/plugin/balance"
)

const (
	// PluginName and PluginIndex name the plugin to NRI: 10-hopless.
	PluginName  = "hopless"
	PluginIndex = "10"

	// criTimeout bounds one call to containerd's CRI or introspection service.
	criTimeout = 5 * time.Second
	// reconnectMin and reconnectMax pace the reconnections of an external plugin.
	reconnectMin = 500 * time.Millisecond
	reconnectMax = 30 * time.Second
	// checkInterval is how often containerd's setup is checked again.
	checkInterval = time.Minute
)

// Agent is one hopless-nri process.
type Agent struct {
	log    *slog.Logger
	images *lazyImages
	// events, if set, records setup problems on the node's Node object;
	// lastProblems is what it recorded last, so that a problem is recorded once.
	events       *events.Recorder
	lastProblems string

	startOnce sync.Once
	startErr  error
	wg        sync.WaitGroup
}

// New returns an agent that logs to log until its configuration names a log file.
func New(log *slog.Logger) *Agent {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Agent{log: log, images: &lazyImages{pending: map[string]plugin.Image{}}}
}

// RunExternal starts the services of cfg and keeps a connection to the NRI socket
// until ctx ends.
func (a *Agent) RunExternal(ctx context.Context, cfg *conf.NRI, socket string) error {
	if err := a.start(ctx, cfg); err != nil {
		return err
	}
	defer a.wg.Wait()
	p := plugin.New(a.images, a.log, nil)
	backoff := reconnectMin
	for ctx.Err() == nil {
		began := time.Now()
		err := a.connect(ctx, p, stub.WithSocketPath(socket), stub.WithPluginName(PluginName), stub.WithPluginIdx(PluginIndex))
		if ctx.Err() != nil {
			break
		}
		if time.Since(began) > time.Minute {
			backoff = reconnectMin
		}
		a.log.Warn("NRI connection ended; connecting again", "socket", socket, "retry_in", backoff, "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, reconnectMax)
	}
	return nil
}

// RunPreinstalled serves the connection that containerd made when it launched the
// plugin, until it ends. The configuration arrives in Configure.
func (a *Agent) RunPreinstalled(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		a.wg.Wait()
	}()
	p := plugin.New(a.images, a.log, func(text string) error {
		// containerd hands over the file's text; relative paths in it are taken
		// relative to its directory.
		cfg, err := conf.DecodeNRI(PluginIndex+"-"+PluginName+".conf", text, "/etc/nri/conf.d")
		if err != nil {
			return err
		}
		// Configure must return at once: the services start in the background.
		a.wg.Go(func() {
			if err := a.start(ctx, cfg); err != nil {
				a.log.Error("hopless-nri cannot start; pods run on without it", "error", err)
			}
		})
		return nil
	})
	return a.connect(ctx, p)
}

// connect registers p with NRI and serves its requests until the connection ends. A
// pre-installed plugin gets its name and index from containerd, in the environment.
func (a *Agent) connect(ctx context.Context, p *plugin.Plugin, opts ...stub.Option) error {
	s, err := stub.New(p, opts...)
	if err != nil {
		return fmt.Errorf("creating the NRI stub: %w", err)
	}
	if err := s.Run(ctx); err != nil {
		return fmt.Errorf("NRI connection: %w", err)
	}
	return nil
}

// start starts the services of cfg once.
func (a *Agent) start(ctx context.Context, cfg *conf.NRI) error {
	a.startOnce.Do(func() { a.startErr = a.startServices(ctx, cfg) })
	return a.startErr
}

func (a *Agent) startServices(ctx context.Context, cfg *conf.NRI) error {
	if cfg.LogFile != "" {
		l, err := fileLogger(cfg.LogFile, cfg.LogLevel)
		if err != nil {
			return err
		}
		a.log = l
	}
	node, err := conf.LoadNode(cfg.NodeConfig)
	if err != nil {
		return err
	}
	for _, f := range node.PlainHTTP() {
		a.log.Warn("TLS to the masters is off by configuration: plain http", "setting", f, "node_config", cfg.NodeConfig)
	}
	name, err := NodeName(cfg)
	if err != nil {
		return err
	}
	// Events are a report, not a duty: without a working client they are left out.
	if kc, err := events.Client(cfg.Kubeconfig); err != nil {
		a.log.Warn("setup problems will not be recorded as Kubernetes events", "error", err)
	} else if kc != nil {
		a.events = events.New(kc, name)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(reg)
	a.log.Info("hopless-nri starting", "node", name, "hosts", cfg.Hosts, "config_path", cfg.ConfigPath,
		"registries", len(node.Registries), "pins", cfg.PinsTokenFile != "")

	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics_listen %s: %w", cfg.MetricsListen, err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		a.wg.Go(func() { _ = srv.Serve(ln) })
		a.wg.Go(func() {
			<-ctx.Done()
			_ = srv.Close()
		})
	}

	resolve := func(ctx context.Context, image string) (digest.Digest, error) {
		c, err := dialCRI(ctx, cfg.ContainerdSocket)
		if err != nil {
			return "", err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(ctx, criTimeout)
		defer cancel()
		return c.ImageDigest(ctx, image)
	}
	if cfg.PinsTokenFile != "" {
		var masters []string
		var tlsCfg conf.TLS
		for _, r := range node.Registries {
			for _, e := range r.Endpoints {
				masters = append(masters, e.URL)
			}
			tlsCfg = r.TLS
		}
		rep, err := pins.New(pins.Config{Node: name, Masters: dedupe(masters), TokenFile: cfg.PinsTokenFile, TLS: tlsCfg,
			Resolve: resolve, Log: a.log, Metrics: pins.NewMetrics(reg)})
		if err != nil {
			return fmt.Errorf("pins: %w", err)
		}
		a.wg.Go(func() {
			if err := rep.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("the pins reporter stopped", "error", err)
			}
		})
		a.images.attach(&reporterImages{r: rep, log: a.log})
	}

	a.wg.Go(func() { a.keepHosts(ctx, cfg, node, name, reg, m) })
	return nil
}

// keepHosts checks containerd's setup, decides whether to write hosts.toml, and
// runs the syncer if so.
func (a *Agent) keepHosts(ctx context.Context, cfg *conf.NRI, node *conf.Node, name string, reg *prometheus.Registry, m *metrics) {
	if cfg.Hosts == conf.HostsOff {
		a.log.Info("hosts.toml left alone (hosts = off)")
		return
	}
	if cfg.Hosts == conf.HostsAuto {
		// The first check decides; later ones only report.
		rep, err := a.waitCheck(ctx, cfg, m)
		if err != nil {
			return
		}
		a.wg.Go(func() { a.recheck(ctx, cfg, m) })
		if rep.HoplessBuild {
			a.log.Info("containerd is hopless's own build, whose plugin balances pulls itself: hosts.toml left alone; only pins are reported")
			return
		}
	} else {
		// hosts = manage does not wait for containerd to answer.
		a.wg.Go(func() {
			if _, err := a.waitCheck(ctx, cfg, m); err == nil {
				a.recheck(ctx, cfg, m)
			}
		})
	}
	mgr, err := hosts.Open(cfg.ConfigPath, cfg.StateDir)
	if err != nil {
		a.log.Error("hosts.toml cannot be managed", "config_path", cfg.ConfigPath, "state_dir", cfg.StateDir, "error", err)
		m.problems.Set(1)
		return
	}
	s, err := hostsync.New(hostsync.Config{Node: name, Registries: node.Registries, Writer: mgr,
		Health: hostsync.Balanced(balance.NewMetrics(reg)), Logger: a.log, Metrics: reg})
	if err != nil {
		a.log.Error("hosts.toml cannot be managed", "error", err)
		return
	}
	if err := s.Run(ctx); err != nil {
		a.log.Error("hosts.toml is no longer kept", "error", err)
	}
}

// waitCheck checks containerd until it answers, and reports the problems found.
func (a *Agent) waitCheck(ctx context.Context, cfg *conf.NRI, m *metrics) (cri.Report, error) {
	backoff := reconnectMin
	for {
		rep, err := a.check(ctx, cfg, m)
		if err == nil {
			return rep, nil
		}
		a.log.Warn("cannot check containerd yet", "socket", cfg.ContainerdSocket, "retry_in", backoff, "error", err)
		select {
		case <-ctx.Done():
			return cri.Report{}, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, reconnectMax)
	}
}

func (a *Agent) recheck(ctx context.Context, cfg *conf.NRI, m *metrics) {
	t := time.NewTicker(checkInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := a.check(ctx, cfg, m); err != nil {
			a.log.Warn("checking containerd failed", "socket", cfg.ContainerdSocket, "error", err)
		}
	}
}

// check asks containerd how it pulls and logs each setting in which the hosts.toml
// that the plugin writes would be ignored.
func (a *Agent) check(ctx context.Context, cfg *conf.NRI, m *metrics) (cri.Report, error) {
	c, err := dialCRI(ctx, cfg.ContainerdSocket)
	if err != nil {
		return cri.Report{}, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	rep, err := c.Check(cctx)
	if err != nil {
		return cri.Report{}, err
	}
	a.log.Debug("containerd checked", "socket", cfg.ContainerdSocket, "config_path", rep.ConfigPath,
		"pull_mode", rep.PullMode, "local_pull_because", rep.LocalPull, "nri", rep.NRI, "hopless_build", rep.HoplessBuild)
	problems := rep.Problems(cfg.ConfigPath)
	if cfg.Hosts == conf.HostsOff || (cfg.Hosts == conf.HostsAuto && rep.HoplessBuild) {
		problems = nil
	}
	m.problems.Set(float64(len(problems)))
	var all []string
	for _, p := range problems {
		a.log.Error("containerd would ignore the hosts.toml that hopless-nri writes", "problem", p)
		all = append(all, p.Error())
	}
	if msg := strings.Join(all, "; "); a.events != nil && msg != "" && msg != a.lastProblems {
		if err := a.events.Warn(ctx, "containerd would ignore the hosts.toml that hopless-nri writes: "+msg); err != nil {
			a.log.Warn("recording the problem as a Kubernetes event failed", "error", err)
		} else {
			a.lastProblems = msg
		}
	}
	return rep, nil
}

func dialCRI(ctx context.Context, socket string) (*cri.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	return cri.Dial(ctx, socket)
}

// NodeName is cfg's node_name, else $NODE_NAME, else the host name.
func NodeName(cfg *conf.NRI) (string, error) {
	if cfg.NodeName != "" {
		return cfg.NodeName, nil
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	n, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name: node_name is not set, nor NODE_NAME, and the host name is unknown: %w", err)
	}
	return n, nil
}

func fileLogger(path, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log_level: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("log_file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log_file: %w", err)
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: lv})), nil
}

func dedupe(ss []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range ss {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

type metrics struct {
	problems prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{problems: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hopless_nri_setup_problems",
		Help: "Settings of the node's containerd under which the hosts.toml that hopless-nri writes would be ignored (see the log).",
	})}
	reg.MustRegister(m.problems)
	return m
}
