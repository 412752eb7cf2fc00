package upstream

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/hopless/hopless/conf"
)

const (
	testUser     = "puller"
	testPassword = "Pa55-w0rd-never-logged"
)

// checkNoPassword fails if the password, alone or in a Basic header, is in s.
func checkNoPassword(t *testing.T, what, s string) {
	t.Helper()
	basic := base64.StdEncoding.EncodeToString([]byte(testUser + ":" + testPassword))
	if strings.Contains(s, testPassword) || strings.Contains(s, basic) {
		t.Errorf("the password appears in %s:\n%s", what, s)
	}
}

// TestBasicAuth uses distribution's htpasswd authentication.
func TestBasicAuth(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(testUser+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := newRegistry(t, configuration.Auth{"htpasswd": configuration.Parameters{"realm": "upstream-test", "path": htpasswd}})
	img := pushImage(t, srv, "private/app", "v1", authn.FromConfig(authn.AuthConfig{Username: testUser, Password: testPassword}))
	layer, content := layerOf(t, img)

	tests := []struct {
		name    string
		creds   string
		wantErr errorClass
	}{
		{name: "right password", creds: credentialsFile(t, testUser, testPassword, 0o600)},
		{name: "wrong password", creds: credentialsFile(t, testUser, "wrong", 0o600), wantErr: errdefs.IsPermissionDenied},
		{name: "anonymous", wantErr: errdefs.IsPermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newTestClient(t, srv, conf.Upstream{Auth: conf.Auth{CredentialsFile: tt.creds}})
			ctx := testContext(t)
			m, err := c.Manifest(ctx, "private/app", "v1", 1<<20)
			checkError(t, err, tt.wantErr, "401")
			if err != nil {
				checkNoPassword(t, "the error", err.Error())
			} else if want, _ := img.Digest(); m.Digest.String() != want.String() {
				t.Errorf("digest = %s, want %s", m.Digest, want)
			}
			rc, _, err := c.Blob(ctx, "private/app", digest.Digest(layer.String()), 10)
			checkError(t, err, tt.wantErr, "401")
			if err == nil {
				got, err := readAll(t, rc)
				if err != nil || string(got) != string(content[10:]) {
					t.Errorf("blob: %d bytes, %v", len(got), err)
				}
			}
			checkNoPassword(t, "the logs", c.logs.String())
			if !strings.Contains(c.logs.String(), "upstream request") {
				t.Error("no debug logs were captured")
			}
		})
	}
}

// tokenRegistry is a registry with a hand-written token service on the same host: the
// token endpoint takes Basic credentials and hands out tokens scoped to one repository
// and valid for one generation.
type tokenRegistry struct {
	t        *testing.T
	openPing bool        // GET /v2/ answers 200 without a token
	refuse   atomic.Bool // the token endpoint refuses everyone
	gen      atomic.Int64
	payload  []byte

	mu     sync.Mutex
	tokens map[string]int // tokens issued by scope
	denied int            // registry requests answered 401
}

func (s *tokenRegistry) issued(scope string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[scope]
}

func (s *tokenRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	challenge := func(scope string) {
		h := fmt.Sprintf(`Bearer realm="https://%s/token",service="upstream-test"`, r.Host)
		if scope != "" {
			h += fmt.Sprintf(`,scope=%q`, scope)
		}
		w.Header().Set("WWW-Authenticate", h)
		w.WriteHeader(http.StatusUnauthorized)
	}
	switch {
	case r.URL.Path == "/token":
		if u, p, ok := r.BasicAuth(); !ok || u != testUser || p != testPassword || s.refuse.Load() {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`))
			return
		}
		q := r.URL.Query()
		scope := q.Get("scope")
		repo, ok := strings.CutPrefix(scope, "repository:")
		repo, ok2 := strings.CutSuffix(repo, ":pull")
		if q.Get("service") != "upstream-test" || !ok || !ok2 {
			s.t.Errorf("token request %s", r.URL.RawQuery)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.tokens[scope]++
		s.mu.Unlock()
		// Some token services only set access_token.
		_ = json.NewEncoder(w).Encode(map[string]any{
			"access_token": fmt.Sprintf("tok.%s.%d", repo, s.gen.Load()),
			"expires_in":   300,
		})
	case r.URL.Path == "/v2/":
		if s.openPing {
			return
		}
		challenge("")
	case strings.HasPrefix(r.URL.Path, "/v2/") && strings.Contains(r.URL.Path, "/manifests/"):
		repo := strings.TrimPrefix(r.URL.Path[:strings.Index(r.URL.Path, "/manifests/")], "/v2/")
		if r.Header.Get("Authorization") != fmt.Sprintf("Bearer tok.%s.%d", repo, s.gen.Load()) {
			s.mu.Lock()
			s.denied++
			s.mu.Unlock()
			challenge("repository:" + repo + ":pull")
			return
		}
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		_, _ = w.Write(s.payload)
	default:
		http.NotFound(w, r)
	}
}

func newTokenRegistry(t *testing.T, openPing bool) (*tokenRegistry, *httptest.Server) {
	s := &tokenRegistry{t: t, openPing: openPing, tokens: map[string]int{}, payload: []byte(`{"schemaVersion":2}`)}
	srv, _ := serve(t, s)
	return s, srv
}

func TestBearer(t *testing.T) {
	t.Parallel()
	s, srv := newTokenRegistry(t, false)
	creds := credentialsFile(t, testUser, testPassword, 0o600)
	c := newTestClient(t, srv, conf.Upstream{Auth: conf.Auth{CredentialsFile: creds}})
	var skew atomic.Int64
	c.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	manifest := func(repo string) error {
		t.Helper()
		m, err := c.Manifest(testContext(t), repo, "v1", 1<<20)
		if err == nil && string(m.Payload) != string(s.payload) {
			t.Errorf("payload = %q", m.Payload)
		}
		return err
	}

	for range 3 {
		if err := manifest("team/a"); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.issued("repository:team/a:pull"); n != 1 {
		t.Errorf("%d tokens for team/a, want 1: the token is not cached", n)
	}

	// Concurrent first requests for a repository share one token exchange.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if err := manifest("team/b"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := s.issued("repository:team/b:pull"); n != 1 {
		t.Errorf("%d tokens for team/b, want 1", n)
	}

	// Close to its expiry the token is replaced.
	skew.Store(int64(271 * time.Second))
	if err := manifest("team/a"); err != nil {
		t.Fatal(err)
	}
	if n := s.issued("repository:team/a:pull"); n != 2 {
		t.Errorf("%d tokens for team/a after expiry, want 2", n)
	}

	// A token the upstream stops accepting is refreshed on its challenge.
	s.gen.Add(1)
	if err := manifest("team/a"); err != nil {
		t.Fatal(err)
	}
	if n := s.issued("repository:team/a:pull"); n != 3 {
		t.Errorf("%d tokens for team/a after revocation, want 3", n)
	}

	// A token refresh that the token service refuses.
	s.refuse.Store(true)
	s.gen.Add(1)
	checkError(t, manifest("team/b"), errdefs.IsPermissionDenied, "fetching manifest team/b:v1")

	if got := requests(t, c, kindPing, "401"); got != 1 {
		t.Errorf("%v pings, want 1", got)
	}
	if got := requests(t, c, kindToken, "200"); got != 4 {
		t.Errorf("%v token requests counted, want 4", got)
	}
	if got := requests(t, c, kindToken, "401"); got != 1 {
		t.Errorf("%v refused token requests counted, want 1", got)
	}
	checkNoPassword(t, "the logs", c.logs.String())

	// Wrong credentials: the token service refuses them.
	bad := newTestClient(t, srv, conf.Upstream{
		Auth: conf.Auth{CredentialsFile: credentialsFile(t, testUser, "wrong", 0o600)}})
	_, err := bad.Manifest(testContext(t), "team/a", "v1", 1<<20)
	checkError(t, err, errdefs.IsPermissionDenied, "pull token for team/a")
	_, err = bad.HeadManifest(testContext(t), "team/a", "v1", 1<<20)
	checkError(t, err, errdefs.IsPermissionDenied, "pull token for team/a")
	checkNoPassword(t, "the logs", bad.logs.String())
}

// TestBearerFromFailingRequest: GET /v2/ asks for nothing, but the repository answers
// with a Bearer challenge.
func TestBearerFromFailingRequest(t *testing.T) {
	t.Parallel()
	s, srv := newTokenRegistry(t, true)
	creds := credentialsFile(t, testUser, testPassword, 0o600)
	c := newTestClient(t, srv, conf.Upstream{Auth: conf.Auth{CredentialsFile: creds}})
	for range 3 {
		if _, err := c.Manifest(testContext(t), "team/a", "v1", 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.HeadManifest(testContext(t), "team/a", "v1", 1<<20); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.denied != 1 || s.tokens["repository:team/a:pull"] != 1 {
		t.Errorf("%d requests denied, %d tokens; want 1 and 1", s.denied, s.tokens["repository:team/a:pull"])
	}
	checkNoPassword(t, "the logs", c.logs.String())
}

// TestScopeBound checks that the per-repository cache stays bounded.
func TestScopeBound(t *testing.T) {
	t.Parallel()
	c, err := New(conf.Upstream{URL: "https://registry.example"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	close(done)
	c.ping = &flight[*transport.Challenge]{done: done, val: &transport.Challenge{}}
	for i := range maxScopes {
		f := &flight[*scope]{done: done, val: &scope{}}
		if i%2 == 0 {
			f.expires = time.Now().Add(-time.Second)
		}
		c.scopes[fmt.Sprintf("r/%d", i)] = f
	}
	for i := range 3 * maxScopes {
		if _, err := c.scope(testContext(t), fmt.Sprintf("new/%d", i)); err != nil {
			t.Fatal(err)
		}
		if n := len(c.scopes); n > maxScopes {
			t.Fatalf("%d scopes cached, want at most %d", n, maxScopes)
		}
	}
}
