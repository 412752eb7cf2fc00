package graph

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	ctrtransfer "github.com/containerd/containerd/v2/core/transfer"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/transfer"
)

// TestInstall runs Install on containerd's real builtins. It changes containerd's
// global plugin registry, so it is the only test here that does, it is not parallel
// (parallel tests start after it has finished), and it puts the registry back.
func TestInstall(t *testing.T) {
	before := registry.Graph(nil)
	t.Cleanup(func() {
		registry.Reset()
		for _, r := range before {
			registry.Register(&r)
		}
	})
	if err := Install(transfer.FirstEndpoint, nil); err != nil {
		t.Fatal(err)
	}
	after := registry.Graph(nil) // panics on a dependency loop

	type key struct {
		typ plugin.Type
		id  string
	}
	count := func(regs []plugin.Registration) map[key]int {
		m := map[key]int{}
		for _, r := range regs {
			m[key{r.Type, r.ID}]++
		}
		return m
	}
	was, is := count(before), count(after)
	for k, n := range was {
		if n != 1 {
			t.Fatalf("builtins register %s.%s %d times", k.typ, k.id, n)
		}
		if is[k] != 1 {
			t.Errorf("after Install, %s.%s is registered %d times, want 1", k.typ, k.id, is[k])
		}
	}
	if is[key{config.Type, config.ID}] != 1 || len(is) != len(was)+1 {
		t.Errorf("after Install: %d plugins, hopless %d times; want the %d builtins and hopless once",
			len(is), is[key{config.Type, config.ID}], len(was))
	}

	at := func(typ plugin.Type, id string) int {
		return slices.IndexFunc(after, func(r plugin.Registration) bool { return r.Type == typ && r.ID == id })
	}
	h, tr, cri := at(config.Type, config.ID), at(plugins.TransferPlugin, TransferID), at(plugins.CRIServicePlugin, CRIImagesID)
	if h < 0 || tr < 0 || cri < 0 || !(h < tr && tr < cri) {
		t.Errorf("hopless at %d, transfer at %d, CRI images at %d: want them in that order", h, tr, cri)
	}
	if n := len(slices.DeleteFunc(slices.Clone(after), func(r plugin.Registration) bool {
		return r.Type != plugins.TransferPlugin
	})); n != 1 {
		t.Errorf("%d transfer plugins, want 1: CRI takes GetSingle", n)
	}
	for _, i := range []int{tr, cri, at(plugins.HTTPHandler, PprofID)} {
		if i < 0 || !slices.Contains(after[i].Requires, config.Type) || i < h {
			t.Errorf("plugin %d (%v) does not require %s, or comes before it", i, after[max(i, 0)].URI(), config.Type)
		}
	}

	if err := Install(transfer.FirstEndpoint, nil); err == nil || !strings.Contains(err.Error(), "registered already") {
		t.Errorf("second Install: %v, want an error", err)
	}
	if got := registry.Graph(nil); len(got) != len(after) {
		t.Errorf("a failed Install changed the graph: %d plugins, want %d", len(got), len(after))
	}
}

type stockTransferrer struct{}

func (stockTransferrer) Transfer(context.Context, any, any, ...ctrtransfer.Opt) error { return nil }

// pluginSet is a plugin set with a hopless plugin that returned (instance, err).
func pluginSet(t *testing.T, ctx context.Context, instance any, err error) *plugin.Set {
	t.Helper()
	set := plugin.NewPluginSet()
	hopless := plugin.Registration{Type: config.Type, ID: config.ID,
		InitFn: func(*plugin.InitContext) (any, error) { return instance, err }}
	if err := set.Add(hopless.Init(plugin.NewContext(ctx, set, nil))); err != nil {
		t.Fatal(err)
	}
	return set
}

// newInstance is a hopless instance serving no host.
func newInstance(t *testing.T, mode string) *Instance {
	t.Helper()
	hosts, err := transfer.NewHosts(context.Background(), transfer.HostsConfig{
		Load: transfer.Static(&conf.Node{}), NewRT: transfer.FirstEndpoint})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	return &Instance{Hosts: hosts, Settings: config.Settings{CRILocalPull: mode}}
}

// initTransfer runs the wrapped transfer InitFn after a hopless plugin that returned
// (instance, err).
func initTransfer(t *testing.T, instance any, err error) (any, error) {
	t.Helper()
	ctx := context.Background()
	set := pluginSet(t, ctx, instance, err)
	r := wrapTransfer(plugin.Registration{Type: plugins.TransferPlugin, ID: TransferID,
		InitFn: func(*plugin.InitContext) (any, error) { return stockTransferrer{}, nil }})
	return r.InitFn(plugin.NewContext(ctx, set, nil))
}

func TestWrappedTransferInit(t *testing.T) {
	t.Parallel()
	t.Run("configured", func(t *testing.T) {
		t.Parallel()
		got, err := initTransfer(t, newInstance(t, config.CRILocalPullRefuse), nil)
		if _, ok := got.(*transfer.Transferrer); !ok || err != nil {
			t.Errorf("got %T, %v; want the hopless Transferrer", got, err)
		}
	})
	t.Run("not configured", func(t *testing.T) {
		t.Parallel()
		got, err := initTransfer(t, nil, plugin.ErrSkipPlugin)
		if _, ok := got.(stockTransferrer); !ok || err != nil {
			t.Errorf("got %T, %v; want the stock Transferrer", got, err)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		t.Parallel()
		bad := errors.New("registry[0].endpoint[0].weight: must be > 0, got 0")
		got, err := initTransfer(t, nil, bad)
		if got != nil || !errors.Is(err, bad) {
			t.Errorf("got %T, %v; want the hopless error", got, err)
		}
	})
}
