package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/hopless/hopless/internal/version"
	"github.com/hopless/hopless/test/bench"
	"github.com/hopless/hopless/test/lab"
)

func newApp() *cli.App {
	dirFlag := &cli.StringFlag{Name: "dir", Usage: "lab directory", Required: true}
	return &cli.App{
		Name:    "hopless-lab",
		Usage:   "a whole cluster's image-pull path on one machine",
		Version: version.Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "bin-dir", Usage: "directory with registryd and hopless-lab (default: this binary's dir)"},
			&cli.StringFlag{Name: "tools-dir", Usage: "directory with containerd-stock and crictl (default: BIN_DIR/../.tools/bin)"},
		},
		Commands: []*cli.Command{
			{
				Name:  "up",
				Usage: "start an upstream, masters, optional stock proxies and containerd nodes, each node in one mode",
				Flags: []cli.Flag{
					dirFlag,
					&cli.IntFlag{Name: "masters", Value: 3},
					&cli.IntFlag{Name: "nodes", Value: 1},
					&cli.StringFlag{Name: "mode", Value: lab.ModeInprocess, Usage: "node mode: inprocess (our containerd), stock (stock containerd, hosts.toml), nginx (stock containerd through a per-node NGINX stream hop) or nri (stock containerd, hosts.toml kept by hopless-nri)"},
					&cli.StringFlag{Name: "node-modes", Usage: "each node's own mode, node-1 first, one per node, e.g. inprocess,nri,nginx (default: every node in --mode)"},
					&cli.IntFlag{Name: "proxies", Usage: "stock distribution proxies of the upstream to start (proxy-N on 127.SLOT.4.N:5001), the benchmarks' baseline"},
					&cli.BoolFlag{Name: "nginx-to-proxies", Usage: "the nginx nodes' hops go least_conn to the stock proxies instead of the masters (needs --proxies); such a node pulls upstream names, IMAGE_HOST/deckhouse/ce/X"},
					&cli.BoolFlag{Name: "containers", Usage: "let the nodes run pods and containers (runc, host network, the lab's sandbox image); stock and nri modes"},
					&cli.StringFlag{Name: "nri-plugin", Usage: "for nri nodes: external (its own process on the NRI socket, the default) or preinstalled (launched by containerd); given, inprocess nodes run it too, beside the hopless plugin"},
					&cli.IntSliceFlag{Name: "weights", Usage: "masters' weights for inprocess and nri nodes, e.g. 3,1,1"},
					&cli.BoolFlag{Name: "fallback", Usage: "inprocess nodes fall back to the upstream when every master is down"},
					&cli.IntFlag{Name: "slot", Usage: "loopback network 127.SLOT.0.0/16, to run several labs at once"},
					&cli.StringFlag{Name: "tag-ttl", Usage: "masters' cache.tag_ttl (default registryd's)"},
					&cli.StringFlag{Name: "max-bytes", Usage: "masters' storage.max_bytes (default unbounded)"},
					&cli.StringFlag{Name: "cri-images-extra", Usage: "raw TOML lines for the nodes' [plugins.'io.containerd.cri.v1.images'], e.g. 'discard_unpacked_layers = true'"},
					&cli.StringFlag{Name: "hopless-extra", Usage: "raw TOML lines for the top of the inprocess nodes' hopless section, e.g. \"cri_local_pull = 'warn'\""},
					&cli.BoolFlag{Name: "no-cri-wait", Usage: "a node is up once containerd's socket answers, even if CRI does not"},
					&cli.StringFlag{Name: "storage", Usage: "masters' storage: filesystem (each its own directory, the default) or s3 (one bucket of a SeaweedFS server, process s3)"},
					&cli.BoolFlag{Name: "pprof", Usage: "serve each master's profiles at http://127.SLOT.1.I:6060/debug/pprof/ (debug.pprof_listen)"},
				},
				Action: func(c *cli.Context) error {
					o, err := options(c)
					if err != nil {
						return err
					}
					o.Dir, o.Masters, o.Nodes, o.Mode, o.Slot = c.String("dir"), c.Int("masters"), c.Int("nodes"), c.String("mode"), c.Int("slot")
					o.Registryd.TagTTL, o.Registryd.MaxBytes = c.String("tag-ttl"), c.String("max-bytes")
					o.Weights, o.Fallback = c.IntSlice("weights"), c.Bool("fallback")
					o.CRIImagesExtra, o.HoplessExtra, o.NoCRIWait = c.String("cri-images-extra"), c.String("hopless-extra"), c.Bool("no-cri-wait")
					o.NRIPlugin, o.Containers = c.String("nri-plugin"), c.Bool("containers")
					o.NodeModes, o.Proxies, o.NginxToProxies = splitList(c.String("node-modes")), c.Int("proxies"), c.Bool("nginx-to-proxies")
					o.Registryd.Pprof = c.Bool("pprof")
					if o.Storage = c.String("storage"); o.Storage == "filesystem" {
						o.Storage = lab.StorageFilesystem
					}
					l, err := lab.Up(c.Context, o)
					if err != nil {
						return err
					}
					fmt.Printf("lab is up in %s; source %s\n", l.Dir, filepath.Join(l.Dir, "lab.env"))
					return printStatus(l)
				},
			},
			{
				Name:  "down",
				Usage: "stop every lab process by PID",
				Flags: []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					if err := l.Down(); err != nil {
						return err
					}
					fmt.Printf("lab in %s is down\n", l.Dir)
					return nil
				},
			},
			{
				Name:  "status",
				Usage: "show the lab's processes",
				Flags: []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					return printStatus(l)
				},
			},
			{
				Name:  "seed",
				Usage: "push a random image to the upstream",
				Flags: []cli.Flag{
					dirFlag,
					&cli.StringFlag{Name: "image", Usage: "REPO:TAG, e.g. deckhouse/ce/demo:v1", Required: true},
					&cli.IntFlag{Name: "layers", Value: 3},
					&cli.StringFlag{Name: "layer-size", Value: "4MiB"},
					&cli.BoolFlag{Name: "index", Usage: "push a multi-arch index (linux/amd64, linux/arm64)"},
				},
				Action: func(c *cli.Context) error {
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					repo, tag, err := lab.ParseImageRef(c.String("image"))
					if err != nil {
						return err
					}
					size, err := lab.ParseSize(c.String("layer-size"))
					if err != nil {
						return fmt.Errorf("--layer-size: %w", err)
					}
					res, err := l.Seed(c.Context, repo, tag, c.Int("layers"), size, c.Bool("index"))
					if err != nil {
						return err
					}
					fmt.Printf("pushed %s (%s, %d layers, %d bytes)\npull it as %s\n", res.Ref, res.Digest, len(res.Layers), res.Bytes, l.PullRef(repo, tag))
					return nil
				},
			},
			{
				Name:  "signal",
				Usage: "send a signal to one lab process (e.g. master-2 KILL|STOP|CONT|TERM)",
				Flags: []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 2 {
						return fmt.Errorf("usage: hopless-lab signal --dir DIR NAME KILL|STOP|CONT|TERM")
					}
					sig, ok := map[string]syscall.Signal{"KILL": syscall.SIGKILL, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT, "TERM": syscall.SIGTERM}[strings.ToUpper(c.Args().Get(1))]
					if !ok {
						return fmt.Errorf("unknown signal %q: want KILL, STOP, CONT or TERM", c.Args().Get(1))
					}
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					return l.Signal(c.Args().Get(0), sig)
				},
			},
			{
				Name:      "restart",
				Usage:     "stop one lab process by its PID and start it again (a host-root node from its systemd unit as it is now), waiting until it answers",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: hopless-lab restart --dir DIR NAME")
					}
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					name := c.Args().First()
					if err := l.Stop(name); err != nil {
						return err
					}
					return l.Start(c.Context, name)
				},
			},
			{
				Name:      "host-root",
				Usage:     "write a fresh node's root filesystem (a distro's containerd, config.toml and systemd unit) into an empty directory, for hopless-install --host-root",
				ArgsUsage: "HOSTDIR",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: hopless-lab host-root HOSTDIR")
					}
					o, err := options(c)
					if err != nil {
						return err
					}
					return lab.NewHostRoot(c.Args().First(), lab.HostRootOptions{ToolsDir: o.ToolsDir})
				},
			},
			{
				Name:      "host-node",
				Usage:     "start a node from a host root, chrooted in a mount namespace of its own, running what its containerd.service and drop-ins say",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dirFlag, &cli.StringFlag{Name: "root", Usage: "the host root (hopless-lab host-root)", Required: true}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: hopless-lab host-node --dir DIR --root HOSTDIR NAME")
					}
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					root, err := filepath.Abs(c.String("root"))
					if err != nil {
						return err
					}
					if err := l.StartHostRootNode(c.Context, c.Args().First(), root); err != nil {
						return err
					}
					i, err := l.NodeIndex(c.Args().First())
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(c.App.Writer, "%s runs; crictl --config %s\n", c.Args().First(), l.Nodes[i-1].Crictl)
					return err
				},
			},
			{
				Name:      "flap",
				Usage:     "SIGSTOP and SIGCONT one lab process over and over, by its PID, until interrupted (or --for passes); it is left running",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					dirFlag,
					&cli.DurationFlag{Name: "stop", Value: 300 * time.Millisecond, Usage: "how long each freeze lasts"},
					&cli.DurationFlag{Name: "run", Value: 300 * time.Millisecond, Usage: "how long it runs between freezes"},
					&cli.DurationFlag{Name: "for", Usage: "stop flapping after this long (default: until interrupted)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("usage: hopless-lab flap --dir DIR [--stop 300ms] [--run 300ms] [--for 30s] NAME")
					}
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					ctx := c.Context
					if d := c.Duration("for"); d > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, d)
						defer cancel()
					}
					stop := l.Flap(c.Args().First(), c.Duration("stop"), c.Duration("run"))
					<-ctx.Done()
					return stop()
				},
			},
			{
				Name:      "faults",
				Usage:     "show the upstream's faults, or set them: a JSON lab.Faults object, e.g. '{\"repo\": \"deckhouse/ce/app\", \"status\": 429, \"headers\": {\"Retry-After\": \"7\"}}'; '{}' clears them",
				ArgsUsage: "[JSON]",
				Flags:     []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					switch c.NArg() {
					case 0:
						b, err := os.ReadFile(l.FaultsFile())
						if errors.Is(err, fs.ErrNotExist) {
							b, err = []byte("{}\n"), nil
						}
						if err != nil {
							return err
						}
						_, err = os.Stdout.Write(b)
						return err
					case 1:
						f, err := lab.ParseFaults(strings.NewReader(c.Args().First()))
						if err != nil {
							return fmt.Errorf("faults: %w", err)
						}
						return lab.WriteFaults(l.FaultsFile(), f)
					}
					return fmt.Errorf("usage: hopless-lab faults --dir DIR [JSON]")
				},
			},
			{
				Name:  "rotate-ca",
				Usage: "issue the masters certificates from a new CA and restart them; the lab CA file becomes the new CA and the original",
				Flags: []cli.Flag{dirFlag},
				Action: func(c *cli.Context) error {
					l, err := lab.Open(c.String("dir"))
					if err != nil {
						return err
					}
					return l.RotateCA(c.Context)
				},
			},
			{
				Name:  "demo",
				Usage: "bring a lab up, seed an image, pull it, show who served what, bring it down",
				Flags: []cli.Flag{dirFlag, &cli.StringFlag{Name: "mode", Value: lab.ModeInprocess, Usage: "node mode: inprocess, stock or nginx"},
					&cli.IntFlag{Name: "slot", Usage: "loopback network 127.SLOT.0.0/16, to run beside another lab"}},
				Action: func(c *cli.Context) error {
					o, err := options(c)
					if err != nil {
						return err
					}
					o.Dir, o.Mode, o.Slot = c.String("dir"), c.String("mode"), c.Int("slot")
					return lab.Demo(c.Context, o, os.Stdout)
				},
			},
			{
				Name:      "bench",
				Usage:     "run a named benchmark against its baseline",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "list", Usage: "list the benchmarks"},
					&cli.BoolFlag{Name: "quick", Usage: "small sizes and one round"},
					&cli.BoolFlag{Name: "json", Usage: "one JSON object per result line"},
					&cli.StringFlag{Name: "dir", Usage: "work directory (default: a temporary one)"},
					&cli.IntFlag{Name: "slot", Usage: "loopback network 127.SLOT.0.0/16 of the benchmark's labs, to run beside other labs"},
				},
				Action: func(c *cli.Context) error {
					if c.Bool("list") {
						for _, b := range bench.All() {
							fmt.Printf("%-20s %s\n", b.Name, b.About)
						}
						return nil
					}
					name, quick, asJSON, err := benchArgs(c)
					if err != nil {
						return err
					}
					o, err := options(c)
					if err != nil {
						return err
					}
					o.Slot = c.Int("slot")
					results, err := bench.Run(c.Context, name, bench.Config{Lab: o, Dir: c.String("dir"), Quick: quick, Log: os.Stderr})
					for _, r := range results {
						if asJSON {
							b, _ := json.Marshal(r)
							fmt.Println(string(b))
						} else {
							fmt.Println(r.String())
						}
					}
					return err
				},
			},
			{
				Name:   "upstream",
				Usage:  "serve the lab's upstream registry (started by up)",
				Hidden: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "addr", Required: true},
					&cli.StringFlag{Name: "cert", Required: true},
					&cli.StringFlag{Name: "key", Required: true},
					&cli.StringFlag{Name: "storage", Required: true},
					&cli.StringFlag{Name: "access-log", Required: true},
					&cli.StringFlag{Name: "faults", Usage: "JSON faults file, read again whenever it changes (see lab.Faults)"},
				},
				Action: func(c *cli.Context) error {
					return lab.ServeUpstream(c.Context, lab.UpstreamOptions{
						Addr: c.String("addr"), CertFile: c.String("cert"), KeyFile: c.String("key"),
						StorageDir: c.String("storage"), AccessLog: c.String("access-log"),
						FaultsFile: c.String("faults"),
					})
				},
			},
			{
				Name:   "bench-index-open",
				Usage:  "open a store index and print, as JSON, the time and live heap it took (run by bench index-100k)",
				Hidden: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "root", Usage: "the store's root dir", Required: true},
					&cli.TimestampFlag{Name: "now", Usage: "the store's clock", Layout: time.RFC3339Nano, Required: true},
				},
				Action: func(c *cli.Context) error {
					r, err := bench.OpenIndex(c.Context, c.String("root"), *c.Timestamp("now"))
					if err != nil {
						return err
					}
					return json.NewEncoder(os.Stdout).Encode(r)
				},
			},
			{
				Name:      "hostroot-exec",
				Usage:     "run ARGV chrooted into a host root with /proc, /sys, /dev and a private /tmp mounted (started by the lab in a mount namespace of its own)",
				ArgsUsage: "-- ARGV...",
				Hidden:    true,
				Flags:     []cli.Flag{&cli.StringFlag{Name: "root", Usage: "the host root", Required: true}},
				Action: func(c *cli.Context) error {
					return lab.HostRootExec(c.String("root"), c.Args().Slice())
				},
			},
			{
				Name:   "proxy",
				Usage:  "serve distribution's own pull-through cache, the baseline for registryd",
				Hidden: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "addr", Required: true},
					&cli.StringFlag{Name: "cert", Required: true},
					&cli.StringFlag{Name: "key", Required: true},
					&cli.StringFlag{Name: "storage", Usage: "filesystem storage directory (or the --s3-* flags)"},
					&cli.StringFlag{Name: "remote", Usage: "registry to cache, https://host:port", Required: true},
					&cli.StringFlag{Name: "remote-ca", Usage: "PEM CA file trusted for --remote besides the system roots"},
					&cli.StringFlag{Name: "access-log", Usage: "JSON access log file"},
					&cli.StringFlag{Name: "s3-endpoint", Usage: "s3 storage: the S3 server, http(s)://host:port"},
					&cli.StringFlag{Name: "s3-region"},
					&cli.StringFlag{Name: "s3-bucket"},
					&cli.StringFlag{Name: "s3-access-key-file", Usage: "file (mode 0600) holding the S3 access key"},
					&cli.StringFlag{Name: "s3-secret-key-file", Usage: "file (mode 0600) holding the S3 secret key"},
					&cli.StringFlag{Name: "s3-root", Usage: "prefix of the cache's keys in the bucket, e.g. /proxy-1"},
					&cli.BoolFlag{Name: "s3-force-path-style", Usage: "name the bucket in the URL path, not the host name"},
				},
				Action: func(c *cli.Context) error {
					o := lab.ProxyOptions{
						Addr: c.String("addr"), CertFile: c.String("cert"), KeyFile: c.String("key"),
						StorageDir: c.String("storage"), RemoteURL: c.String("remote"), RemoteCA: c.String("remote-ca"),
						AccessLog: c.String("access-log"),
					}
					if c.IsSet("s3-endpoint") {
						o.S3 = &lab.ProxyS3{
							Endpoint: c.String("s3-endpoint"), Region: c.String("s3-region"), Bucket: c.String("s3-bucket"),
							AccessKeyFile: c.String("s3-access-key-file"), SecretKeyFile: c.String("s3-secret-key-file"),
							RootDirectory: c.String("s3-root"), ForcePathStyle: c.Bool("s3-force-path-style"),
						}
					}
					return lab.ServeProxy(c.Context, o)
				},
			},
		},
	}
}

// benchArgs reads NAME and the boolean flags, which may also follow NAME
// ("bench pull-lab --json"): cli stops parsing flags at the first argument.
func benchArgs(c *cli.Context) (name string, quick, asJSON bool, err error) {
	quick, asJSON = c.Bool("quick"), c.Bool("json")
	for _, a := range c.Args().Slice() {
		switch a {
		case "--quick", "-quick":
			quick = true
		case "--json", "-json":
			asJSON = true
		default:
			if name != "" || strings.HasPrefix(a, "-") {
				return "", false, false, fmt.Errorf("usage: hopless-lab bench NAME [--quick] [--json]; unexpected %q", a)
			}
			name = a
		}
	}
	if name == "" {
		return "", false, false, fmt.Errorf("usage: hopless-lab bench NAME [--quick] [--json]; see --list")
	}
	return name, quick, asJSON, nil
}

// options fills the binary locations.
func options(c *cli.Context) (lab.Options, error) {
	bin := c.String("bin-dir")
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return lab.Options{}, fmt.Errorf("finding hopless-lab's own path: %w", err)
		}
		bin = filepath.Dir(exe)
	}
	tools := c.String("tools-dir")
	if tools == "" {
		tools = filepath.Join(bin, "..", ".tools", "bin")
	}
	return lab.Options{BinDir: bin, ToolsDir: filepath.Clean(tools), Masters: 3, Nodes: 1, Mode: lab.ModeInprocess}, nil
}

// splitList splits a comma-separated flag value, trimming spaces; "" is none.
func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return parts
}

func printStatus(l *lab.Lab) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tPID\tSTATE\tADDRESS")
	for _, s := range l.Status() {
		state := "running"
		if !s.Alive {
			state = "stopped"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", s.Name, s.PID, state, s.Addr)
	}
	return w.Flush()
}
