package server

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/sirupsen/logrus"

	"github.com/hopless/hopless/conf"
)

// distributionConfig is the distribution configuration for a single-upstream
// pull-through cache on the filesystem. user and pass may be empty.
func distributionConfig(cfg *conf.Registryd, user, pass string) *configuration.Configuration {
	up := cfg.Upstream[0]
	ttl := up.TTL.Duration
	dc := &configuration.Configuration{
		Version: configuration.MajorMinorVersion(0, 1),
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": cfg.Storage.Root},
			"delete":     configuration.Parameters{"enabled": false},
			"cache":      configuration.Parameters{"blobdescriptor": "inmemory"},
		},
		Proxy: configuration.Proxy{
			RemoteURL: up.URL,
			Username:  user,
			Password:  pass,
			TTL:       &ttl,
		},
	}
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

// newApp builds distribution's handler. NewApp reports configuration and upstream
// problems by panicking; they come back here as errors.
func newApp(ctx context.Context, dc *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if p := recover(); p != nil {
			app, err = nil, fmt.Errorf("%v", p)
		}
	}()
	return handlers.NewApp(ctx, dc), nil
}
