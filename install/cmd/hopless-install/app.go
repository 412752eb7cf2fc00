package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/install/node"
	"github.com/hopless/hopless/install/state"
	"github.com/hopless/hopless/install/systemd"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/internal/version"
)

// crashEnv makes the installer SIGKILL itself after that many steps have landed
// on the node: the tests' way of killing it at a known point.
const crashEnv = "HOPLESS_INSTALL_CRASH_AFTER"

func newApp(stdout, stderr io.Writer) *cli.App {
	hostRoot := &cli.StringFlag{Name: "host-root", Value: "/host", Usage: "where the node's root filesystem is mounted"}
	restart := &cli.BoolFlag{Name: "restart", Usage: "restart containerd through systemd's D-Bus API once files changed, and check that CRI answers (rolling back if not)"}
	restartCmd := &cli.StringFlag{Name: "restart-command", Usage: "restart containerd by running this command instead of through systemd (words split on spaces)"}
	logLevel := &cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"}
	return &cli.App{
		Name:      "hopless-install",
		Usage:     "install hopless onto a node, check it, and take it off again",
		Version:   version.Version,
		Writer:    stdout,
		ErrWriter: stderr,
		Commands: []*cli.Command{
			{
				Name:  "node",
				Usage: "install hopless onto the node (a second run with the same inputs changes nothing)",
				Flags: []cli.Flag{
					hostRoot, restart, restartCmd, logLevel,
					&cli.StringFlag{Name: "mode", Required: true, Usage: "inprocess (hopless's containerd build) or nri (the node's containerd plus hopless-nri)"},
					&cli.StringFlag{Name: "config", Required: true, Usage: "install.toml"},
					&cli.StringFlag{Name: "files-dir", Usage: "where the files' sources are (default: the config's directory)"},
					&cli.StringFlag{Name: "source-dir", Usage: "where the binaries to install are (default: this executable's directory)"},
					&cli.StringFlag{Name: "node-name", EnvVars: []string{"NODE_NAME"}, Usage: "the node's name (default: install.toml's node_name, else the node's /etc/hostname)"},
				},
				Action: func(c *cli.Context) error {
					in, err := installer(c, stderr)
					if err != nil {
						return err
					}
					switch c.String("mode") {
					case node.ModeInprocess, node.ModeNRI:
						in.Mode = c.String("mode")
					default:
						return fmt.Errorf("--mode must be %s or %s, got %q", node.ModeInprocess, node.ModeNRI, c.String("mode"))
					}
					cfg, err := conf.LoadInstall(c.String("config"))
					if err != nil {
						return err
					}
					in.Config = cfg
					in.Socket, in.RestartTimeout = cfg.Containerd.Socket, cfg.Containerd.RestartTimeout.Duration
					in.FilesDir = c.String("files-dir")
					if in.FilesDir == "" {
						in.FilesDir = filepath.Dir(c.String("config"))
					}
					in.SourceDir = c.String("source-dir")
					if in.SourceDir == "" {
						exe, err := os.Executable()
						if err != nil {
							return fmt.Errorf("finding the binaries to install: %w", err)
						}
						in.SourceDir = filepath.Dir(exe)
					}
					if in.NodeName, err = nodeName(c.String("node-name"), cfg.NodeName, in.Root); err != nil {
						return err
					}
					if in.Restart, err = restarter(c, cfg.Containerd.Unit); err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					res, err := in.Install(ctx)
					if res != nil {
						report(stdout, res)
					}
					return err
				},
			},
			{
				Name:  "uninstall",
				Usage: "restore every file the installer replaced and remove those it created",
				Flags: []cli.Flag{hostRoot, restart, restartCmd, logLevel,
					&cli.DurationFlag{Name: "restart-timeout", Value: conf.DefaultRestartTimeout, Usage: "how long CRI may take to answer after the restart"}},
				Action: func(c *cli.Context) error {
					in, err := installer(c, stderr)
					if err != nil {
						return err
					}
					st, err := loadState(in.Root)
					if err != nil {
						return err
					}
					in.Socket, in.RestartTimeout = orDefault(st.Socket, conf.DefaultContainerdSocket), c.Duration("restart-timeout")
					if in.Restart, err = restarter(c, orDefault(st.Unit, conf.DefaultContainerdUnit)); err != nil {
						return err
					}
					res, err := in.Uninstall(c.Context)
					if res != nil {
						report(stdout, res)
					}
					return err
				},
			},
			{
				Name:  "status",
				Usage: "what is installed, its versions, and any file changed since",
				Flags: []cli.Flag{hostRoot, &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					in, err := installer(c, stderr)
					if err != nil {
						return err
					}
					s, err := status(c.Context, in)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						enc := json.NewEncoder(stdout)
						enc.SetIndent("", "  ")
						return enc.Encode(s)
					}
					return s.WriteText(stdout)
				},
			},
			{
				Name:  "watch",
				Usage: "check the node for drift every interval; log it and serve it as metrics",
				Flags: []cli.Flag{hostRoot, logLevel,
					&cli.DurationFlag{Name: "interval", Value: time.Minute},
					&cli.StringFlag{Name: "metrics-listen", Usage: "serve /metrics on this host:port"}},
				Action: func(c *cli.Context) error {
					in, err := installer(c, stderr)
					if err != nil {
						return err
					}
					ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
					defer stop()
					return watch(ctx, in, c.Duration("interval"), c.String("metrics-listen"))
				},
			},
		},
	}
}

func installer(c *cli.Context, stderr io.Writer) (*node.Installer, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.String("log-level"))); c.IsSet("log-level") && err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	root := c.String("host-root")
	if !filepath.IsAbs(root) {
		abs, err := filepath.Abs(root)
		if err != nil {
			return nil, fmt.Errorf("--host-root: %w", err)
		}
		root = abs
	}
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("--host-root %s is not a directory", root)
	}
	in := &node.Installer{Root: hostfs.Root{Dir: root}, Log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})),
		Socket: conf.DefaultContainerdSocket}
	if s := os.Getenv(crashEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", crashEnv, err)
		}
		in.Crash = func(step int) {
			if step == n {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	return in, nil
}

func restarter(c *cli.Context, unit string) (systemd.Restarter, error) {
	if cmd := strings.Fields(c.String("restart-command")); len(cmd) > 0 {
		return systemd.Command{Argv: cmd}, nil
	}
	if !c.Bool("restart") {
		return nil, nil
	}
	sock, err := hostfs.Root{Dir: c.String("host-root")}.Path("/run/systemd/private")
	if err != nil {
		return nil, err
	}
	return systemd.DBus{Socket: sock, Unit: unit}, nil
}

// nodeName is the first of the flag, the config, and the node's /etc/hostname.
func nodeName(flag, cfg string, root hostfs.Root) (string, error) {
	name := flag
	if name == "" {
		name = cfg
	}
	if name == "" {
		p, err := root.Path("/etc/hostname")
		if err != nil {
			return "", err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("no --node-name, no node_name in install.toml, and no /etc/hostname on the node: %w", err)
		}
		name = strings.TrimSpace(string(b))
	}
	if !nodetoken.ValidName(name) {
		return "", fmt.Errorf("node name %q is not a node name (letters, digits, '.', '_', '-')", name)
	}
	return name, nil
}

func loadState(root hostfs.Root) (*state.State, error) {
	d, err := root.Path(state.Dir)
	if err != nil {
		return nil, err
	}
	return state.Store{Dir: d}.Load()
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func status(ctx context.Context, in *node.Installer) (*node.Status, error) {
	st, err := loadState(in.Root)
	if err != nil {
		return nil, err
	}
	in.Socket = orDefault(st.Socket, conf.DefaultContainerdSocket)
	return in.Status(ctx)
}

func report(w io.Writer, res *node.Result) {
	if len(res.Changed) == 0 {
		fmt.Fprintln(w, "unchanged")
		return
	}
	for _, p := range res.Changed {
		fmt.Fprintln(w, "changed", p)
	}
	if res.Restarted {
		fmt.Fprintln(w, "containerd restarted; CRI answers")
	}
}

// watch checks the node every interval and reports drift as it changes.
func watch(ctx context.Context, in *node.Installer, interval time.Duration, listen string) error {
	if interval < time.Second {
		return fmt.Errorf("--interval must be at least 1s, got %s", interval)
	}
	reg := prometheus.NewRegistry()
	drift := prometheus.NewGauge(prometheus.GaugeOpts{Name: "hopless_install_drift_files", Help: "Files the installer wrote that have changed since, or are missing."})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "hopless_install_info", Help: "What is installed on the node: 1 for its mode and release."}, []string{"mode", "version"})
	reg.MustRegister(drift, info)
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listening for metrics on %s: %w", listen, err)
		}
		srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	last := map[string]string{}
	for {
		s, err := status(ctx, in)
		if err != nil {
			in.Log.Error("checking the node", "err", err)
		} else {
			drift.Set(float64(s.Drift))
			info.Reset()
			if s.Installed {
				info.WithLabelValues(s.Mode, s.Release).Set(1)
			}
			now := map[string]string{}
			for _, f := range s.Files {
				if f.State != node.FileOK {
					now[f.Path] = f.State
					if last[f.Path] != f.State {
						in.Log.Warn("drift", "path", f.Path, "role", f.Role, "state", f.State)
					}
				}
			}
			for p := range last {
				if _, ok := now[p]; !ok {
					in.Log.Info("drift gone", "path", p)
				}
			}
			last = now
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil
			}
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
