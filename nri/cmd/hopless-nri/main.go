// Command hopless-nri is the NRI plugin of hopless: on stock containerd it keeps the
// image hosts' hosts.toml pointed at the masters in this node's order, and on every
// node it reports the images in use to registryd. See nri/README.md.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/nri/pkg/api"
	"github.com/urfave/cli/v2"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/version"
	"github.com/hopless/hopless/nri/agent"
	"github.com/hopless/hopless/nri/hosts"
)

func main() {
	if err := run(os.Args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "hopless-nri: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return newApp(stdout, stderr).RunContext(ctx, args)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	runCmd := &cli.Command{
		Name:  "run",
		Usage: "connect to containerd's NRI socket and keep hosts.toml and the pins (an external plugin, e.g. a DaemonSet)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "the plugin's configuration `FILE`", Required: true},
			&cli.StringFlag{Name: "socket", Value: "/var/run/nri/nri.sock", Usage: "containerd's NRI `SOCKET`"},
		},
		Action: func(c *cli.Context) error {
			cfg, err := conf.LoadNRI(c.String("config"))
			if err != nil {
				return err
			}
			return agent.New(log).RunExternal(c.Context, cfg, c.String("socket"))
		},
	}
	return &cli.App{
		Name:      "hopless-nri",
		Usage:     "hopless's NRI plugin: hosts.toml in this node's order of the masters, and the images in use pinned on them",
		Version:   version.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		// containerd launches a pre-installed plugin with no arguments and the
		// connection in the environment.
		Action: func(c *cli.Context) error {
			if os.Getenv(api.PluginSocketEnvVar) == "" {
				return cli.ShowAppHelp(c)
			}
			return agent.New(log).RunPreinstalled(c.Context)
		},
		Commands: []*cli.Command{
			runCmd,
			{
				Name:  "uninstall",
				Usage: "restore the hosts.toml files that hopless-nri replaced and remove those it wrote",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "the plugin's configuration `FILE`", Required: true},
				},
				Action: func(c *cli.Context) error {
					cfg, err := conf.LoadNRI(c.String("config"))
					if err != nil {
						return err
					}
					m, err := hosts.Open(cfg.ConfigPath, cfg.StateDir)
					if err != nil {
						return err
					}
					if err := m.Uninstall(); err != nil {
						return err
					}
					_, err = fmt.Fprintf(stdout, "hosts.toml under %s restored\n", cfg.ConfigPath)
					return err
				},
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintf(stdout, "hopless-nri %s\n", version.Version)
					return err
				},
			},
		},
	}
}
