package server

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/test/registrytest"
)

func TestDistributionConfig(t *testing.T) {
	t.Parallel()
	c := &cache.Cache{}
	tests := []struct {
		name     string
		auth     conf.ClientAuth
		wantAuth string
	}{
		{name: "anonymous"},
		{name: "htpasswd", auth: conf.ClientAuth{Htpasswd: "/etc/htpasswd"}, wantAuth: "htpasswd"},
		{name: "token", auth: conf.ClientAuth{Token: conf.TokenAuth{Realm: "https://auth.example/token", Service: "registry"}}, wantAuth: "token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := &conf.Registryd{Auth: tt.auth, Log: conf.Log{Level: "info"}}
			dc := distributionConfig(cfg, c)
			if got := dc.Storage.Type(); got != "inmemory" {
				t.Errorf("storage type %q, want inmemory: content lives in our store", got)
			}
			if got := dc.Storage["delete"]["enabled"]; got != false {
				t.Errorf("storage.delete.enabled = %v, want false", got)
			}
			ro, _ := dc.Storage["maintenance"]["readonly"].(map[any]any)
			if ro["enabled"] != true {
				t.Errorf("maintenance.readonly = %v, want enabled", dc.Storage["maintenance"]["readonly"])
			}
			mw := dc.Middleware["registry"]
			if len(mw) != 1 || mw[0].Name != cache.MiddlewareName || mw[0].Options[cache.OptionCache] != c {
				t.Errorf("registry middleware = %+v, want only %s with the cache", mw, cache.MiddlewareName)
			}
			if dc.Proxy.RemoteURL != "" {
				t.Errorf("distribution's proxy mode is on (%s)", dc.Proxy.RemoteURL)
			}
			if dc.HTTP.Debug.Prometheus.Enabled {
				t.Error("distribution's own Prometheus metrics are on, want off")
			}
			if !dc.Log.AccessLog.Disabled {
				t.Error("distribution's access log is on; ours covers it")
			}
			if _, ok := dc.Auth[tt.wantAuth]; tt.wantAuth != "" && !ok {
				t.Errorf("auth = %v, want %s", dc.Auth, tt.wantAuth)
			}
			if tt.wantAuth == "" && len(dc.Auth) != 0 {
				t.Errorf("auth = %v, want none", dc.Auth)
			}
		})
	}
}

// TestHTTPSecret checks that distribution gets a secret, so that it does not warn
// about a missing one, and that it is not a constant.
func TestHTTPSecret(t *testing.T) {
	t.Parallel()
	cfg := &conf.Registryd{Log: conf.Log{Level: "info"}}
	a, b := distributionConfig(cfg, nil).HTTP.Secret, distributionConfig(cfg, nil).HTTP.Secret
	if len(a) < 16 || a == b {
		t.Errorf("HTTP secrets %q and %q, want long random values", a, b)
	}
}

func TestDistributionLogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want logrus.Level
	}{
		{"debug", logrus.DebugLevel},
		{"info", logrus.WarnLevel},
		{"warn", logrus.WarnLevel},
		{"error", logrus.ErrorLevel},
	}
	for _, tt := range tests {
		if got := distributionLogLevel(tt.in); got != tt.want {
			t.Errorf("distributionLogLevel(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestUpstreamCredentials checks that the credentials file reaches the upstream as
// basic auth and that neither the password nor the client's Authorization header
// reaches our log.
func TestUpstreamCredentials(t *testing.T) {
	t.Parallel()
	const user, pass, clientSecret = "puller", "pa55-never-logged", "client-secret-never-logged"
	up := registrytest.NewUpstream(t)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", registrytest.Image(t, 1024, 1))
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if u, p, ok := r.BasicAuth(); ok && u == user && p == pass {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="upstream"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	env := registrytest.NewEnv(t, "", up)
	env.Config.Upstream[0].Auth.CredentialsFile = filepath.Join(env.Dir, "credentials")
	if err := os.WriteFile(env.Config.Upstream[0].Auth.CredentialsFile, []byte(user+":"+pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, logs := newServer(t, env.Config)
	r := httptest.NewRequest(http.MethodGet, "/v2/system/deckhouse/install/manifests/v1", nil)
	r.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	r.Header.Set("Authorization", "Basic "+clientSecret)
	w := httptest.NewRecorder()
	s.handler.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Errorf("manifest through an authenticated upstream: %d %s, want 200", w.Code, w.Body)
	}
	if strings.Contains(logs.String(), pass) || strings.Contains(logs.String(), clientSecret) {
		t.Errorf("a secret reached the log:\n%s", logs.String())
	}
}
