package lab

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/sirupsen/logrus"
)

// UpstreamOptions configures ServeUpstream.
type UpstreamOptions struct {
	// Addr is the host:port to listen on; port 0 picks a free port.
	Addr string
	// CertFile and KeyFile are the PEM server certificate and key.
	CertFile, KeyFile string
	// StorageDir is the root of the registry's filesystem storage.
	StorageDir string
	// AccessLog is the file that every request is appended to as one JSON
	// line (see AccessEntry). Empty means no access log.
	AccessLog string
	// Ready, if set, is called with the bound address once listening.
	Ready func(addr string)
}

const upstreamShutdownTimeout = 5 * time.Second

// ServeUpstream runs a plain (non-proxy) distribution registry over TLS until
// ctx is cancelled, then shuts it down gracefully. It returns nil after a
// clean shutdown.
func ServeUpstream(ctx context.Context, o UpstreamOptions) error {
	switch {
	case o.Addr == "":
		return errors.New("upstream: no listen address")
	case o.CertFile == "" || o.KeyFile == "":
		return errors.New("upstream: TLS certificate and key files are required")
	case o.StorageDir == "":
		return errors.New("upstream: no storage directory")
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return fmt.Errorf("upstream: load TLS key pair %s, %s: %w", o.CertFile, o.KeyFile, err)
	}

	// distribution logs through the logrus standard logger and offers no
	// per-app logger, so the level can only be set process-wide.
	if logrus.GetLevel() > logrus.WarnLevel {
		logrus.SetLevel(logrus.WarnLevel)
	}
	app, err := newUpstreamApp(ctx, o.StorageDir)
	if err != nil {
		return err
	}
	defer app.Shutdown()

	var handler http.Handler = app
	var alog *accessLog
	if o.AccessLog != "" {
		if alog, err = openAccessLog(o.AccessLog); err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
		handler = alog.handler(app)
	}

	err = serveTLS(ctx, o, handler, cert)
	if alog != nil {
		err = errors.Join(err, alog.close())
	}
	return err
}

func serveTLS(ctx context.Context, o UpstreamOptions, h http.Handler, cert tls.Certificate) error {
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("upstream: listen on %s: %w", o.Addr, err)
	}
	addr := ln.Addr().String()
	srv := &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{cert},
		},
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	if o.Ready != nil {
		o.Ready(addr)
	}

	select {
	case err := <-errc:
		return fmt.Errorf("upstream: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), upstreamShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-errc
		return fmt.Errorf("upstream: shut down %s: %w", addr, err)
	}
	<-errc
	return nil
}

// newUpstreamApp builds the distribution app. NewApp reports bad
// configuration by panicking; that becomes an error here.
func newUpstreamApp(ctx context.Context, storageDir string) (app *handlers.App, err error) {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("upstream: generate HTTP secret: %w", err)
	}
	cfg := &configuration.Configuration{}
	cfg.Log.Level = "warn"
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	cfg.Storage = configuration.Storage{
		"filesystem": configuration.Parameters{"rootdirectory": storageDir},
		"delete":     configuration.Parameters{"enabled": true},
		// Uploads live only as long as the lab; the purger would just be
		// one more goroutine.
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}

	defer func() {
		if r := recover(); r != nil {
			app, err = nil, fmt.Errorf("upstream: create registry with storage %s: %v", storageDir, r)
		}
	}()
	// The app outlives ctx while in-flight requests drain; app.Shutdown ends it.
	return handlers.NewApp(context.WithoutCancel(ctx), cfg), nil
}
