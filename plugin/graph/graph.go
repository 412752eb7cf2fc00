// Package graph puts hopless into containerd's plugin graph. containerd has no
// extension point for the resolver of CRI pulls, so a containerd main of our own calls
// Install after containerd's builtins have registered and before command.App() runs:
// Install adds the hopless plugin and rebuilds the graph with the local transfer
// service wrapped. There is still exactly one transfer plugin, as CRI requires. It
// also wraps CRI's images plugin, to refuse a CRI config that would pull past
// hopless, and the debug server's handler, to serve /debug/hopless.
package graph

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/metadata"
	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/status"
	"github.com/hopless/hopless/plugin/transfer"
)

// IDs of the containerd plugins that Install wraps.
const (
	// TransferID is the ID of the transfer plugin that CRI pulls go through.
	TransferID = "local"
	// CRIImagesID is the ID of CRI's images plugin (type plugins.CRIServicePlugin).
	CRIImagesID = "images"
	// PprofID is the ID of the HTTP handler that the debug server serves (type
	// plugins.HTTPHandler).
	PprofID = "pprof"
	// MetadataID is the ID of the metadata plugin, whose content store pulls write to.
	MetadataID = "bolt"
)

// Install registers the hopless plugin and wraps the local transfer plugin, whose
// pulls of configured hosts then go through RoundTrippers from newRT; it also wraps
// CRI's images plugin and the debug server's handler when they are registered. The
// plugin's metrics are registered on reg (nil: nowhere). It fails when the transfer
// plugin is missing or hopless is installed already, and leaves the graph unchanged
// then.
func Install(newRT transfer.RoundTripperFactory, reg prometheus.Registerer) error {
	regs := registry.Graph(nil)
	at := func(typ plugin.Type, id string) int {
		return slices.IndexFunc(regs, func(r plugin.Registration) bool { return r.Type == typ && r.ID == id })
	}
	ti := at(plugins.TransferPlugin, TransferID)
	if ti < 0 {
		return fmt.Errorf("plugin %s.%s is not registered", plugins.TransferPlugin, TransferID)
	}
	if at(config.Type, config.ID) >= 0 {
		return fmt.Errorf("plugin %s.%s is registered already", config.Type, config.ID)
	}
	m := newMetrics(reg)
	regs[ti] = wrapTransfer(regs[ti])
	if i := at(plugins.CRIServicePlugin, CRIImagesID); i >= 0 {
		regs[i] = wrapCRIImages(regs[i], m)
	}
	if i := at(plugins.HTTPHandler, PprofID); i >= 0 {
		regs[i] = wrapDebug(regs[i])
	}

	registry.Reset()
	for _, r := range regs {
		registry.Register(&r)
	}
	registry.Register(Hopless(newRT, m.transfer))
	return nil
}

// Instance is the hopless plugin's instance: the image hosts, the section's
// settings, and the result of the CRI check.
type Instance struct {
	Hosts    *transfer.Hosts
	Settings config.Settings

	mu  sync.Mutex
	cri status.CRICheck
}

// Close stops the reloads and the balancers; containerd calls it when it stops.
func (in *Instance) Close() error {
	return in.Hosts.Close()
}

func (in *Instance) setCRICheck(c status.CRICheck) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.cri = c
}

func (in *Instance) criCheck() status.CRICheck {
	in.mu.Lock()
	defer in.mu.Unlock()
	c := in.cri
	c.Settings = slices.Clone(c.Settings)
	return c
}

// Hopless is the registration of the hopless plugin: it reads its config section and
// builds the Hosts that the wrapped transfer plugin uses, which reload when their
// files change. Without any [[registry]] or node_config it skips, and containerd
// pulls as it always does. m may be nil.
func Hopless(newRT transfer.RoundTripperFactory, m *transfer.Metrics) *plugin.Registration {
	return &plugin.Registration{
		Type:   config.Type,
		ID:     config.ID,
		Config: config.DefaultConfig(),
		InitFn: func(ic *plugin.InitContext) (any, error) {
			c := ic.Config.(*config.Config)
			if !c.Configured() {
				return nil, fmt.Errorf("no [[registry]] and no node_config in %s: %w", config.Section, plugin.ErrSkipPlugin)
			}
			s, err := c.Settings()
			if err != nil {
				return nil, err
			}
			var watch []string
			if s.NodeConfig != "" {
				watch = append(watch, s.NodeConfig)
			}
			hosts, err := transfer.NewHosts(ic.Context, transfer.HostsConfig{
				Load:           c.Node,
				Files:          watch,
				NewRT:          newRT,
				Metrics:        m,
				ReloadInterval: s.ReloadInterval,
			})
			if err != nil {
				return nil, err
			}
			return &Instance{Hosts: hosts, Settings: s}, nil
		},
	}
}

// wrapTransfer makes the transfer plugin require the hopless plugin and wrap the
// service it builds.
func wrapTransfer(r plugin.Registration) plugin.Registration {
	inner := r.InitFn
	r.Requires = append(slices.Clone(r.Requires), config.Type)
	r.InitFn = func(ic *plugin.InitContext) (any, error) {
		v, err := ic.GetByID(config.Type, config.ID)
		switch {
		case errors.Is(err, plugin.ErrPluginNotFound) || plugin.IsSkipPlugin(err):
			// Not configured, or disabled: the stock service.
			log.G(ic.Context).WithError(err).Info("hopless is not configured; transfer service unchanged")
			return inner(ic)
		case err != nil:
			// A broken hopless config fails the transfer service, and with it CRI,
			// rather than send pulls somewhere they were not configured to go.
			return nil, fmt.Errorf("hopless plugin failed: %w", err)
		}
		t, err := inner(ic)
		if err != nil {
			return nil, err
		}
		return transfer.Wrap(t.(ctrtransfer.Transferrer), v.(*Instance).Hosts, ingests(ic)), nil
	}
	return r
}

// ingests is the content store that the transfer service writes pulls to, or nil.
func ingests(ic *plugin.InitContext) content.IngestManager {
	m, err := ic.GetByID(plugins.MetadataPlugin, MetadataID)
	if err == nil {
		if db, ok := m.(*metadata.DB); ok {
			return db.ContentStore()
		}
		err = fmt.Errorf("%s.%s is a %T, not a *metadata.DB", plugins.MetadataPlugin, MetadataID, m)
	}
	log.G(ic.Context).WithError(err).Warn("hopless has no content store: a corrupt blob fails the pull instead of being fetched again")
	return nil
}
