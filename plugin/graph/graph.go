// Package graph puts hopless into containerd's plugin graph. containerd has no
// extension point for the resolver of CRI pulls, so a containerd main of our own calls
// Install after containerd's builtins have registered and before command.App() runs:
// Install adds the hopless plugin and rebuilds the graph with the local transfer
// service wrapped. There is still exactly one transfer plugin, as CRI requires.
package graph

import (
	"errors"
	"fmt"
	"slices"

	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/transfer"
)

// TransferID is the ID of the transfer plugin that CRI pulls go through.
const TransferID = "local"

// Install registers the hopless plugin and wraps the local transfer plugin, whose
// pulls of configured hosts then go through RoundTrippers from newRT. It fails when
// the transfer plugin is missing or hopless is installed already, and leaves the
// graph unchanged then.
func Install(newRT transfer.RoundTripperFactory) error {
	regs := registry.Graph(nil)
	ti := slices.IndexFunc(regs, func(r plugin.Registration) bool {
		return r.Type == plugins.TransferPlugin && r.ID == TransferID
	})
	if ti < 0 {
		return fmt.Errorf("plugin %s.%s is not registered", plugins.TransferPlugin, TransferID)
	}
	if slices.ContainsFunc(regs, func(r plugin.Registration) bool {
		return r.Type == config.Type && r.ID == config.ID
	}) {
		return fmt.Errorf("plugin %s.%s is registered already", config.Type, config.ID)
	}
	regs[ti] = wrapTransfer(regs[ti])

	registry.Reset()
	for _, r := range regs {
		registry.Register(&r)
	}
	registry.Register(Hopless(newRT))
	return nil
}

// Hopless is the registration of the hopless plugin: it reads its config section and
// builds the Hosts that the wrapped transfer plugin uses. Without any [[registry]] it
// skips, and containerd pulls as it always does.
func Hopless(newRT transfer.RoundTripperFactory) *plugin.Registration {
	return &plugin.Registration{
		Type:   config.Type,
		ID:     config.ID,
		Config: config.DefaultConfig(),
		InitFn: func(ic *plugin.InitContext) (any, error) {
			c := ic.Config.(*config.Config)
			if !c.Configured() {
				return nil, fmt.Errorf("no [[registry]] in %s: %w", config.Section, plugin.ErrSkipPlugin)
			}
			node, err := c.Node()
			if err != nil {
				return nil, err
			}
			return transfer.NewHosts(ic.Context, node, newRT)
		},
	}
}

// wrapTransfer makes the transfer plugin require the hopless plugin and wrap the
// service it builds.
func wrapTransfer(r plugin.Registration) plugin.Registration {
	inner := r.InitFn
	r.Requires = append(slices.Clone(r.Requires), config.Type)
	r.InitFn = func(ic *plugin.InitContext) (any, error) {
		hosts, err := ic.GetByID(config.Type, config.ID)
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
		return transfer.Wrap(t.(ctrtransfer.Transferrer), hosts.(*transfer.Hosts)), nil
	}
	return r
}
