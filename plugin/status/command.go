package status

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/defaults"
	"github.com/urfave/cli/v3"
)

// maxReport bounds the JSON read from the debug server.
const maxReport = 16 << 20

// Command is "containerd hopless-status": it fetches the Report from containerd's
// debug server and prints it as a table, or as JSON with --json.
func Command() *cli.Command {
	return &cli.Command{
		Name:  "hopless-status",
		Usage: "Show the image hosts and endpoints hopless serves, read from containerd's debug server",
		Description: `Fetches ` + Path + ` from the running containerd's debug server, which
serves only when [debug] address is set in containerd's config.toml, and prints
each endpoint: state, reason and since when, p95 time to response headers by
request class, share of picks, throughput and requests in flight.`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:  "debug-address",
				Usage: "containerd's [debug] address: a unix socket path, or host:port",
				Value: defaults.DefaultDebugAddress,
			},
			&cli.BoolFlag{
				Name:  "json",
				Usage: "Print the JSON as the debug server sends it",
			},
			&cli.DurationFlag{
				Name:  "timeout",
				Usage: "Give up on the debug server after this long",
				Value: 10 * time.Second,
			},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			ctx, cancel := context.WithTimeout(ctx, cmd.Duration("timeout"))
			defer cancel()
			addr := cmd.String("debug-address")
			raw, err := Fetch(ctx, addr)
			if err != nil {
				return err
			}
			out := cmd.Root().Writer
			if cmd.Bool("json") {
				_, err := out.Write(raw)
				return err
			}
			var r Report
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("decoding %s from %s: %w", Path, addr, err)
			}
			return Render(out, r, time.Now())
		},
	}
}

// Fetch gets the Report's JSON from the debug server at addr: a unix socket path
// (or unix://path), or a TCP host:port.
func Fetch(ctx context.Context, addr string) ([]byte, error) {
	client, url, err := clientFor(addr)
	if err != nil {
		return nil, err
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("debug address %q: %w", addr, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching %s from containerd's debug server at %s (is [debug] address set in config.toml?): %w", Path, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReport))
	if err != nil {
		return nil, fmt.Errorf("reading %s from %s: %w", Path, addr, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("the containerd at %s does not serve %s: it is not a containerd with hopless", addr, Path)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("%s from %s: %s: %s", Path, addr, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// clientFor returns a client that reaches addr, and the URL of Path there.
func clientFor(addr string) (*http.Client, string, error) {
	if p, ok := strings.CutPrefix(addr, "unix://"); ok || filepath.IsAbs(addr) {
		if !ok {
			p = addr
		}
		d := &net.Dialer{}
		return &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", p)
			},
		}}, "http://containerd" + Path, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("debug address %q: want a unix socket path or host:port: %w", addr, err)
	}
	if host == "" {
		host = "localhost"
	}
	return &http.Client{Transport: &http.Transport{}}, "http://" + net.JoinHostPort(host, port) + Path, nil
}
