package lab

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
)

// PeerTokenFile is the file holding the masters' shared peer token.
func (l *Lab) PeerTokenFile() string { return filepath.Join(l.Dir, "secrets", "peer.token") }

// MasterDir is master name's directory: its registryd.toml, certificate, log and data.
func (l *Lab) MasterDir(name string) string { return filepath.Join(l.Dir, name) }

// MasterConfig is the path of master name's registryd.toml.
func (l *Lab) MasterConfig(name string) string {
	return filepath.Join(l.MasterDir(name), "registryd.toml")
}

// MasterData is master name's storage root (storage.root).
func (l *Lab) MasterData(name string) string { return filepath.Join(l.MasterDir(name), "data") }

// ReconfigureMaster stops master name, rewrites its registryd.toml with edit, and
// starts it again with the same command line, waiting until it is ready. edit gets
// the current file and returns the new one.
func (l *Lab) ReconfigureMaster(ctx context.Context, name string, edit func(cfg string) (string, error)) error {
	if !strings.HasPrefix(name, "master-") || l.proc(name) == nil {
		return fmt.Errorf("lab has no master %q", name)
	}
	path := l.MasterConfig(name)
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s's config: %w", name, err)
	}
	cfg, err := edit(string(old))
	if err != nil {
		return fmt.Errorf("editing %s's config: %w", name, err)
	}
	if err := l.Stop(name); err != nil {
		return err
	}
	if err := writeFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	return l.Start(ctx, name)
}

// WriteHtpasswd writes an htpasswd file with one user and a bcrypt hash of password,
// for registryd's auth.htpasswd.
func WriteHtpasswd(path, user, password string) error {
	if user == "" || strings.ContainsAny(user, ":\n") {
		return fmt.Errorf("htpasswd: bad user name %q", user)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return fmt.Errorf("htpasswd: hashing the password: %w", err)
	}
	return writeFile(path, []byte(user+":"+string(hash)+"\n"), 0o600)
}

// WriteCredentials writes a "user:password" file of mode 0600, for
// upstream.auth.credentials_file.
func WriteCredentials(path, user, password string) error {
	if user == "" || strings.ContainsAny(user, ":\n") || strings.ContainsAny(password, "\r\n") {
		return errors.New("credentials: want a user without ':' and one-line values")
	}
	return writeFile(path, []byte(user+":"+password+"\n"), 0o600)
}

// AuthUpstream is an HTTPS reverse proxy in front of the lab's upstream that requires
// Basic authentication, for testing registryd's upstream credentials. It runs in the
// calling process. Requests that pass reach the upstream and its access log as usual.
type AuthUpstream struct {
	// Addr is the proxy's host:port: the upstream's IP, so that the upstream's
	// certificate fits, on a port of its own.
	Addr string
	// Authorized and Refused count the requests that carried the right credentials
	// and the ones answered 401.
	Authorized atomic.Int64
	Refused    atomic.Int64

	served
}

// served is an HTTPS server that a lab helper runs in the calling process; Close
// stops it at once.
type served struct {
	srv  *http.Server
	done chan error
}

// serve runs srv on ln with TLS until Close.
func (s *served) serve(srv *http.Server, ln net.Listener) {
	s.srv, s.done = srv, make(chan error, 1)
	go func() { s.done <- srv.ServeTLS(ln, "", "") }()
}

// Close stops the server at once.
func (s *served) Close() error {
	err := s.srv.Close()
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// StartAuthUpstream starts an AuthUpstream that accepts user and password. Close it
// when done.
func (l *Lab) StartAuthUpstream(user, password string) (*AuthUpstream, error) {
	d := filepath.Join(l.Dir, "upstream")
	cert, err := tls.LoadX509KeyPair(filepath.Join(d, "cert.pem"), filepath.Join(d, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("auth upstream: loading the upstream's certificate: %w", err)
	}
	pool, err := LoadPool(l.CA)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(l.Upstream)
	if err != nil {
		return nil, fmt.Errorf("auth upstream: upstream address %q: %w", l.Upstream, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("auth upstream: %w", err)
	}
	target := &url.URL{Scheme: "https", Host: l.Upstream}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	a := &AuthUpstream{Addr: ln.Addr().String()}
	a.serve(&http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
				a.Refused.Add(1)
				w.Header().Set("WWW-Authenticate", `Basic realm="hopless-lab-upstream"`)
				http.Error(w, "authentication required", http.StatusUnauthorized)
				return
			}
			a.Authorized.Add(1)
			r.Header.Del("Authorization")
			rp.ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: readyTimeout,
	}, ln)
	return a, nil
}
