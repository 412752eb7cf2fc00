// Command containerd is containerd, with all its builtins, plus hopless: pulls of the
// image hosts configured in [plugins.'io.containerd.hopless.v1.hopless'] go through
// the hopless endpoints (see plugin/README.md). "containerd hopless-status" prints
// what the running containerd's hopless sees.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/containerd/command"
	"github.com/prometheus/client_golang/prometheus"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"

	"github.com/hopless/hopless/internal/version"
	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/graph"
	"github.com/hopless/hopless/plugin/status"
	"github.com/hopless/hopless/plugin/transfer"
)

func main() {
	if err := run(context.Background(), os.Args); err != nil {
		_, _ = fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	// containerd's metrics endpoint serves the default Prometheus registry, so the
	// balancers' and the plugin's metrics appear there.
	m := balance.NewMetrics(prometheus.DefaultRegisterer)
	if err := graph.Install(transfer.Balanced(m), prometheus.DefaultRegisterer); err != nil {
		return err
	}
	app := command.App()
	// --version prints "containerd <package> <version> <revision>".
	app.Version = fmt.Sprintf("%s (hopless %s)", app.Version, version.Version)
	app.Commands = append(app.Commands, status.Command())
	return app.Run(ctx, args)
}
