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

// TestInstall changes containerd's global plugin registry, so it is the only test
// here that does, and it is not parallel.
func TestInstall(t *testing.T) {
	before := registry.Graph(nil)
	if err := Install(transfer.FirstEndpoint); err != nil {
		t.Fatal(err)
	}
	after := registry.Graph(nil) // panics on a dependency loop
	if len(after) != len(before)+1 {
		t.Fatalf("graph has %d plugins, want %d + hopless", len(after), len(before))
	}
	at := func(typ plugin.Type, id string) int {
		return slices.IndexFunc(after, func(r plugin.Registration) bool { return r.Type == typ && r.ID == id })
	}
	h, tr, cri := at(config.Type, config.ID), at(plugins.TransferPlugin, TransferID), at(plugins.CRIServicePlugin, "images")
	if h < 0 || tr < 0 || cri < 0 || !(h < tr && tr < cri) {
		t.Errorf("hopless at %d, transfer at %d, CRI images at %d: want them in that order", h, tr, cri)
	}
	if n := len(slices.DeleteFunc(slices.Clone(after), func(r plugin.Registration) bool {
		return r.Type != plugins.TransferPlugin
	})); n != 1 {
		t.Errorf("%d transfer plugins, want 1: CRI takes GetSingle", n)
	}
	if !slices.Contains(after[tr].Requires, config.Type) {
		t.Errorf("transfer requires %v, want %s too", after[tr].Requires, config.Type)
	}
	if err := Install(transfer.FirstEndpoint); err == nil || !strings.Contains(err.Error(), "registered already") {
		t.Errorf("second Install: %v, want an error", err)
	}
	if got := registry.Graph(nil); len(got) != len(after) {
		t.Errorf("a failed Install changed the graph: %d plugins, want %d", len(got), len(after))
	}
}

type stockTransferrer struct{}

func (stockTransferrer) Transfer(context.Context, any, any, ...ctrtransfer.Opt) error { return nil }

// initTransfer runs the wrapped transfer InitFn after a hopless plugin that returned
// (instance, err).
func initTransfer(t *testing.T, instance any, err error) (any, error) {
	t.Helper()
	ctx := context.Background()
	set := plugin.NewPluginSet()
	hopless := plugin.Registration{Type: config.Type, ID: config.ID,
		InitFn: func(*plugin.InitContext) (any, error) { return instance, err }}
	if err := set.Add(hopless.Init(plugin.NewContext(ctx, set, nil))); err != nil {
		t.Fatal(err)
	}
	r := wrapTransfer(plugin.Registration{Type: plugins.TransferPlugin, ID: TransferID,
		InitFn: func(*plugin.InitContext) (any, error) { return stockTransferrer{}, nil }})
	return r.InitFn(plugin.NewContext(ctx, set, nil))
}

func TestWrappedTransferInit(t *testing.T) {
	t.Parallel()
	t.Run("configured", func(t *testing.T) {
		t.Parallel()
		hosts, err := transfer.NewHosts(context.Background(), &conf.Node{}, transfer.FirstEndpoint)
		if err != nil {
			t.Fatal(err)
		}
		got, err := initTransfer(t, hosts, nil)
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
