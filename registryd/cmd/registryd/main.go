// Command registryd is the hopless master daemon: a read-only pull-through cache in
// front of one upstream registry.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/internal/version"
	"github.com/hopless/hopless/registryd/server"
)

func main() {
	if err := run(os.Args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "registryd: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return newApp(stdout, stderr).RunContext(ctx, args)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:      "registryd",
		Usage:     "hopless master registry: a read-only pull-through cache",
		Version:   version.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		Commands: []*cli.Command{
			{
				Name:  "serve",
				Usage: "serve the cache",
				Flags: []cli.Flag{
					&cli.StringFlag{
						Name:     "config",
						Aliases:  []string{"c"},
						Usage:    "registryd.toml `FILE`",
						Required: true,
					},
					&cli.StringFlag{
						Name:  "peers-self",
						Usage: "this master's `URL` as its peers list it, in place of the file's peers.self (e.g. https://$(POD_IP):5001 in a DaemonSet, where one file serves every master)",
					},
				},
				Action: func(c *cli.Context) error {
					return serve(c.Context, c.String("config"), c.String("peers-self"), stderr)
				},
			},
			{
				Name:      "prefetch",
				Usage:     "warm the running registryd's cache with images and show progress",
				ArgsUsage: "IMAGE...",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "registryd.toml `FILE`", Required: true},
					&cli.DurationFlag{Name: "timeout", Value: time.Hour, Usage: "give up after this long"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() == 0 {
						return fmt.Errorf("prefetch: name at least one IMAGE, e.g. system/deckhouse/install:v1")
					}
					ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
					defer cancel()
					return prefetch(ctx, c.String("config"), c.Args().Slice(), stdout)
				},
			},
			{
				Name:      "node-token",
				Usage:     "print the token that NODE reports its pins with, derived from the masters' node key",
				ArgsUsage: "NODE",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "key-file", Usage: "the node key `FILE` (api.node_key_file, mode 0600)", Required: true},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("node-token: name one NODE, e.g. node-1")
					}
					return nodeToken(c.String("key-file"), c.Args().First(), stdout)
				},
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					_, err := fmt.Fprintf(stdout, "registryd %s\n", version.Version)
					return err
				},
			},
		},
	}
}

// loadConfig loads path and, when self is set, makes it peers.self and validates
// the result again.
func loadConfig(path, self string) (*conf.Registryd, error) {
	cfg, err := conf.LoadRegistryd(path)
	if err != nil {
		// conf's message already names the file and the field.
		return nil, err
	}
	if cfg.Storage.Shared && cfg.Storage.MasterID == "" {
		// The host name is stable across restarts where a pod IP is not: a master
		// that came back under another id would leave its old bookkeeping behind.
		host, err := os.Hostname()
		if err != nil || !conf.MasterIDRE.MatchString(host) {
			return nil, fmt.Errorf("%s: storage.master_id: required on shared storage when the host name (%q) cannot be used: %v", path, host, err)
		}
		cfg.Storage.MasterID = host
	}
	if self == "" {
		return cfg, nil
	}
	cfg.Peers.Self = self
	if err := cfg.Validate(path + " with --peers-self"); err != nil {
		return nil, err
	}
	// The DNS peers are the Service's addresses, and self must be one of them; this
	// also catches a $(POD_IP) that the kubelet left unexpanded.
	if u, err := url.Parse(self); cfg.Peers.DNS != "" && (err != nil || net.ParseIP(u.Hostname()) == nil) {
		return nil, fmt.Errorf("--peers-self %q: with peers.dns its host must be an IP address, as the records of %s are", self, cfg.Peers.DNS)
	}
	return cfg, nil
}

func nodeToken(keyFile, node string, stdout io.Writer) error {
	key, err := conf.ReadToken(keyFile)
	if err != nil {
		return fmt.Errorf("node-token: %w", err)
	}
	tok, err := nodetoken.Derive([]byte(key), node)
	if err != nil {
		return fmt.Errorf("node-token: %s: %w", keyFile, err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

func serve(ctx context.Context, path, self string, stderr io.Writer) error {
	cfg, err := loadConfig(path, self)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		return fmt.Errorf("%s: log.level: %w", path, err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	log.Info("starting registryd", "version", version.Version, "config", path)
	s, err := server.New(ctx, cfg, server.WithLogger(log))
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
