package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/distribution/v3/registry/auth"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"

	// Client authentication backends, looked up by name in the configuration.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/cache"
)

// distributionConfig embeds distribution for its API routing, error format and
// client auth. Content never touches distribution's storage: the cache middleware
// wraps the namespace and serves every repository from our store, so distribution's
// own driver is an unused in-memory one.
func distributionConfig(cfg *conf.Registryd, c *cache.Cache) *configuration.Configuration {
	dc := &configuration.Configuration{
		Version: configuration.MajorMinorVersion(0, 1),
		Storage: configuration.Storage{
			"inmemory": configuration.Parameters{},
			"delete":   configuration.Parameters{"enabled": false},
			"maintenance": configuration.Parameters{
				"uploadpurging": map[any]any{"enabled": false},
				"readonly":      map[any]any{"enabled": true},
			},
		},
		Middleware: map[string][]configuration.Middleware{
			"registry": {{Name: cache.MiddlewareName, Options: configuration.Parameters{cache.OptionCache: c}}},
		},
	}
	switch {
	case cfg.Auth.Htpasswd != "":
		dc.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "registryd", "path": cfg.Auth.Htpasswd}}
	case cfg.Auth.Token.Realm != "":
		t := cfg.Auth.Token
		dc.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm": t.Realm, "service": t.Service, "issuer": t.Issuer, "rootcertbundle": t.RootCertBundle,
		}}
	}
	// The secret signs upload state, and registryd takes no uploads; a random one
	// only keeps distribution from warning that none was given.
	dc.HTTP.Secret = rand.Text()
	dc.Log.Level = configuration.Loglevel(cfg.Log.Level)
	dc.Log.Formatter = "json"
	dc.Log.AccessLog.Disabled = true
	return dc
}

// configureDistributionLogging points logrus, which distribution logs through, at
// JSON on stderr. logrus is process-global; this is the only place that touches it.
func configureDistributionLogging(level string) {
	logrus.SetOutput(os.Stderr)
	logrus.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	logrus.SetLevel(distributionLogLevel(level))
}

// distributionLogLevel keeps distribution one step quieter than us below debug: it
// logs every completed response and its startup chatter at info, which our access
// log already covers.
func distributionLogLevel(level string) logrus.Level {
	switch level {
	case "debug":
		return logrus.DebugLevel
	case "error":
		return logrus.ErrorLevel
	default:
		return logrus.WarnLevel
	}
}

// accessController builds the access controller that dc's client auth names, for the
// routes registryd serves beside distribution; nil without client auth.
func accessController(dc *configuration.Configuration) (auth.AccessController, error) {
	typ := dc.Auth.Type()
	if typ == "" {
		return nil, nil
	}
	ac, err := auth.GetAccessController(typ, dc.Auth.Parameters())
	if err != nil {
		return nil, fmt.Errorf("client auth %s: %w", typ, err)
	}
	return ac, nil
}

// authorize checks that r may pull repository name, as distribution does for its
// own routes: a missing or refused credential gets 401 UNAUTHORIZED with the
// challenge, and false.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request, name string) bool {
	if s.access == nil {
		return true
	}
	access := auth.Access{Resource: auth.Resource{Type: "repository", Name: name}, Action: "pull"}
	_, err := s.access.Authorized(r, access)
	if err == nil {
		return true
	}
	var ch auth.Challenge
	if errors.As(err, &ch) {
		ch.SetHeaders(r, w)
		_ = errcode.ServeJSON(w, errcode.ErrorCodeUnauthorized.WithDetail([]auth.Access{access}))
		return false
	}
	s.log.Error("checking a client's authorization failed", "repo", name, "error", err)
	writeRegistryError(w, http.StatusBadRequest, "UNAUTHORIZED", "the authorization could not be checked")
	return false
}

// newApp builds distribution's handler. NewApp reports configuration problems by
// panicking; they come back here as errors.
func newApp(ctx context.Context, dc *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			app, err = nil, fmt.Errorf("%v", p)
		}
	}()
	return handlers.NewApp(ctx, dc), nil
}
