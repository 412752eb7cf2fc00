package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/api"
)

// prefetch asks the registryd that configPath describes to warm images, and prints
// progress until the job is done.
func prefetch(ctx context.Context, configPath string, images []string, out io.Writer) error {
	cfg, err := conf.LoadRegistryd(configPath)
	if err != nil {
		return err
	}
	if cfg.API.TokenFile == "" {
		return fmt.Errorf("%s: api.token_file: is required for prefetch (the API is disabled without it)", configPath)
	}
	token, err := conf.ReadToken(cfg.API.TokenFile)
	if err != nil {
		return fmt.Errorf("api.token_file: %w", err)
	}
	base, tlsConfig, err := localClient(cfg)
	if err != nil {
		return err
	}
	c := api.NewClient(base, token, tlsConfig)
	job, err := c.Prefetch(ctx, images)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "prefetch job %s: %d images\n", job.ID, len(images))
	last := ""
	for {
		line := progressLine(job)
		if line != last {
			fmt.Fprintln(out, line)
			last = line
		}
		if job.Done {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("prefetch job %s: %w", job.ID, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
		if job, err = c.PrefetchStatus(ctx, job.ID); err != nil {
			return err
		}
	}
	var errs []error
	for _, p := range job.Images {
		if p.Error != "" {
			errs = append(errs, fmt.Errorf("%s: %s", p.Image, p.Error))
		}
	}
	return errors.Join(errs...)
}

func progressLine(j api.Job) string {
	var parts []string
	for _, p := range j.Images {
		state := fmt.Sprintf("%d/%d blobs, %d/%d bytes", p.BlobsDone, p.Blobs, p.BytesDone, p.Bytes)
		switch {
		case p.Error != "":
			state = "failed: " + p.Error
		case p.Done:
			state += ", done"
		}
		parts = append(parts, p.Image+": "+state)
	}
	return strings.Join(parts, "; ")
}

// localClient addresses this host's registryd and trusts exactly its configured
// certificate.
func localClient(cfg *conf.Registryd) (string, *tls.Config, error) {
	host, port, err := net.SplitHostPort(cfg.Server.Listen)
	if err != nil {
		return "", nil, fmt.Errorf("server.listen %q: %w", cfg.Server.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	addr := net.JoinHostPort(host, port)
	if cfg.Server.Insecure {
		return "http://" + addr, nil, nil
	}
	pemBytes, err := os.ReadFile(cfg.Server.TLSCert)
	if err != nil {
		return "", nil, fmt.Errorf("reading server.tls_cert: %w", err)
	}
	want, err := certsFromPEM(pemBytes)
	if err != nil {
		return "", nil, fmt.Errorf("server.tls_cert %s: %w", cfg.Server.TLSCert, err)
	}
	return "https://" + addr, &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The server's own certificate is pinned instead of verified against a CA:
		// this client only ever talks to the registryd whose config it read.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || len(want) == 0 || !bytes.Equal(raw[0], want[0]) {
				return errors.New("the server's certificate is not server.tls_cert")
			}
			return nil
		},
	}, nil
}

func certsFromPEM(b []byte) ([][]byte, error) {
	var out [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, blk.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}
