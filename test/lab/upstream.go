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
	// FaultsFile is a JSON Faults file, read again whenever it changes, that
	// makes the upstream slow or failing (see Faults). It need not exist.
	// Empty means no faults.
	FaultsFile string
	// Ready, if set, is called with the bound address once listening.
	Ready func(addr string)
}

const shutdownTimeout = 5 * time.Second

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

	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("upstream: listen on %s: %w", o.Addr, err)
	}
	defer ln.Close()

	quietRegistryLogs()
	app, err := newRegistryApp(ctx, "upstream", filesystemStorage(o.StorageDir), configuration.Proxy{})
	if err != nil {
		return err
	}
	defer app.Shutdown()

	var handler http.Handler = app
	if o.FaultsFile != "" {
		handler = newFaultInjector(o.FaultsFile, ctx.Done()).handler(handler)
	}
	return serveLogged(ctx, "upstream", ln, o.AccessLog, o.Ready, handler, cert)
}

// quietRegistryLogs keeps distribution's info logs out of the lab's logs.
// distribution logs through the logrus standard logger and offers no
// per-app logger, so the level can only be set process-wide.
func quietRegistryLogs() {
	if logrus.GetLevel() > logrus.WarnLevel {
		logrus.SetLevel(logrus.WarnLevel)
	}
}

// serveLogged serves h on ln over TLS until ctx is cancelled, each request
// logged to logFile if it is set. who prefixes its errors.
func serveLogged(ctx context.Context, who string, ln net.Listener, logFile string, ready func(string), h http.Handler, cert tls.Certificate) error {
	var alog *accessLog
	if logFile != "" {
		var err error
		if alog, err = openAccessLog(logFile); err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		h = alog.handler(h)
	}
	err := serveTLS(ctx, who, ln, ready, h, cert)
	if alog != nil {
		err = errors.Join(err, alog.close())
	}
	return err
}

// serveTLS serves h on ln until ctx is cancelled, then shuts down within
// shutdownTimeout. It returns nil after a clean shutdown.
func serveTLS(ctx context.Context, who string, ln net.Listener, ready func(string), h http.Handler, cert tls.Certificate) error {
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
	if ready != nil {
		ready(addr)
	}

	select {
	case err := <-errc:
		return fmt.Errorf("%s: serve on %s: %w", who, addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-errc
		return fmt.Errorf("%s: shut down %s: %w", who, addr, err)
	}
	<-errc
	return nil
}

// filesystemStorage is distribution's filesystem driver rooted at dir.
func filesystemStorage(dir string) configuration.Storage {
	return configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": dir}}
}

// newRegistryApp builds a distribution app on storage (one driver and its
// parameters), with deletes enabled, no redirects to the storage backend, and a
// random HTTP secret; with proxy.RemoteURL set it is distribution's pull-through
// cache. NewApp reports bad configuration by panicking; that becomes an error here.
func newRegistryApp(ctx context.Context, who string, storage configuration.Storage, proxy configuration.Proxy) (app *handlers.App, err error) {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("%s: generate HTTP secret: %w", who, err)
	}
	cfg := &configuration.Configuration{Proxy: proxy}
	cfg.Log.Level = "warn"
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	driver := storage.Type()
	cfg.Storage = configuration.Storage{
		driver:   storage.Parameters(),
		"delete": configuration.Parameters{"enabled": true},
		// Every byte goes through the registry, as through registryd: a client is
		// never sent to the bucket (which nodes may not reach) with a signed URL.
		"redirect": configuration.Parameters{"disable": true},
		// Uploads live only as long as the lab; the purger would just be
		// one more goroutine.
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}

	defer func() {
		if r := recover(); r != nil {
			app, err = nil, fmt.Errorf("%s: create registry with %s storage: %v", who, driver, r)
		}
	}()
	// The app outlives ctx while in-flight requests drain; app.Shutdown ends it.
	return handlers.NewApp(context.WithoutCancel(ctx), cfg), nil
}
