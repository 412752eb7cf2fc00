package transfer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/config"
)

// testCA is a CA that signs server certificates for 127.0.0.1.
type testCA struct {
	pem  []byte
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert: cert, key: key}
}

// serverCert is a certificate for 127.0.0.1 signed by ca.
func (ca testCA) serverCert(t *testing.T) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// rotatingServer is a TLS server whose certificate can be replaced.
type rotatingServer struct {
	*httptest.Server
	cert atomic.Pointer[tls.Certificate]
}

func newRotatingServer(t *testing.T, h http.Handler, cert *tls.Certificate) *rotatingServer {
	t.Helper()
	s := &rotatingServer{Server: httptest.NewUnstartedServer(h)}
	s.cert.Store(cert)
	s.TLS = &tls.Config{
		// Set, so that StartTLS keeps its own certificate out.
		Certificates: []tls.Certificate{*cert},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{*s.cert.Load()}}, nil
		},
	}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// rotate serves cert from now on, on new connections only.
func (s *rotatingServer) rotate(cert *tls.Certificate) {
	s.cert.Store(cert)
	s.CloseClientConnections()
}

// replace writes a file the way a rotation does: a new file renamed over the old.
func replace(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// reloadCount is the value of hopless_plugin_config_reloads_total{result}.
func reloadCount(t *testing.T, m *Metrics, result string) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.reloads.WithLabelValues(result).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// countingRT counts the Close calls of the RoundTrippers a factory built.
type countingRT struct {
	http.RoundTripper
	closed *atomic.Int32
}

func (c countingRT) Close() error {
	c.closed.Add(1)
	return c.RoundTripper.(io.Closer).Close()
}

func counting(closed *atomic.Int32) RoundTripperFactory {
	return func(r conf.Registry) (http.RoundTripper, error) {
		rt, err := FirstEndpoint(r)
		if err != nil {
			return nil, err
		}
		return countingRT{rt, closed}, nil
	}
}

// reloadFixture is a Transferrer over one rotating server, whose host's CA and
// credentials files are in dir.
type reloadFixture struct {
	srv     *rotatingServer
	reg     *fakeRegistry
	hosts   *Hosts
	tr      *Transferrer
	metrics *Metrics
	ca      string
	creds   string
	closed  *atomic.Int32
}

func newReloadFixture(t *testing.T, ca testCA) *reloadFixture {
	t.Helper()
	dir := t.TempDir()
	f := &reloadFixture{
		reg:     &fakeRegistry{user: "node", pass: "s3cr3t"},
		metrics: NewMetrics(prometheus.NewRegistry()),
		ca:      filepath.Join(dir, "ca.pem"),
		creds:   filepath.Join(dir, "creds"),
		closed:  &atomic.Int32{},
	}
	f.srv = newRotatingServer(t, http.HandlerFunc(f.reg.serve), ca.serverCert(t))
	replace(t, f.ca, ca.pem, 0o644)
	replace(t, f.creds, []byte("node:s3cr3t\n"), 0o600)
	rc := registryConf(f.srv.URL, f.ca)
	rc.Auth.CredentialsFile = f.creds
	hosts, err := NewHosts(context.Background(), HostsConfig{
		Load: Static(&conf.Node{Registries: []conf.Registry{rc}}), NewRT: counting(f.closed), Metrics: f.metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	f.hosts = hosts
	f.tr = Wrap(&fakeInner{}, hosts, nil)
	return f
}

func (f *reloadFixture) pull(t *testing.T) error {
	t.Helper()
	return f.tr.Transfer(context.Background(), ociRegistry(t, imageHost+"/app:v1"), nil)
}

func TestReload(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// change changes the files or the server; it returns the error text that
		// Reload must report, empty for none.
		change func(t *testing.T, f *reloadFixture) []string
		// pullsBefore: whether a pull works between the change and the reload.
		pullsBefore bool
	}{
		{name: "CA rotated", change: func(t *testing.T, f *reloadFixture) []string {
			ca := newCA(t, "second")
			f.srv.rotate(ca.serverCert(t))
			replace(t, f.ca, ca.pem, 0o644)
			return nil
		}},
		{name: "garbage CA", pullsBefore: true, change: func(t *testing.T, f *reloadFixture) []string {
			replace(t, f.ca, []byte("garbage"), 0o644)
			return []string{"tls.ca", f.ca, imageHost}
		}},
		{name: "CA without certificates", pullsBefore: true, change: func(t *testing.T, f *reloadFixture) []string {
			replace(t, f.ca, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}), 0o644)
			return []string{"tls.ca", "no PEM certificate in " + f.ca}
		}},
		{name: "CA removed", pullsBefore: true, change: func(t *testing.T, f *reloadFixture) []string {
			if err := os.Remove(f.ca); err != nil {
				t.Fatal(err)
			}
			return []string{"tls.ca", f.ca, "no such file"}
		}},
		{name: "credentials rotated", change: func(t *testing.T, f *reloadFixture) []string {
			f.reg.mu.Lock()
			f.reg.pass = "n3w"
			f.reg.mu.Unlock()
			replace(t, f.creds, []byte("node:n3w\n"), 0o600)
			return nil
		}},
		{name: "credentials unreadable", pullsBefore: true, change: func(t *testing.T, f *reloadFixture) []string {
			replace(t, f.creds, []byte("no colon\n"), 0o600)
			return []string{"auth.credentials_file", f.creds, "username:password"}
		}},
		{name: "credentials too open", pullsBefore: true, change: func(t *testing.T, f *reloadFixture) []string {
			if err := os.Chmod(f.creds, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"auth.credentials_file", f.creds, "too open"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newReloadFixture(t, newCA(t, "first"))
			if err := f.pull(t); err != nil {
				t.Fatalf("first pull: %v", err)
			}
			if changed, err := f.hosts.Reload(context.Background()); changed || err != nil {
				t.Fatalf("Reload without a change: %v, %v", changed, err)
			}
			want := tc.change(t, f)
			if err := f.pull(t); (err == nil) != tc.pullsBefore {
				t.Fatalf("pull after the change, before the reload: %v; want success %v", err, tc.pullsBefore)
			}

			changed, err := f.hosts.Reload(context.Background())
			if !changed {
				t.Fatal("Reload saw no change")
			}
			last := f.hosts.LastReload()
			if len(want) == 0 {
				if err != nil || last.Result != ReloadOK || f.closed.Load() != 1 || reloadCount(t, f.metrics, ReloadOK) != 1 {
					t.Fatalf("Reload: %v; last %+v, %d closed, want ok and the old RoundTripper closed", err, last, f.closed.Load())
				}
			} else {
				if err == nil {
					t.Fatal("Reload: no error")
				}
				for _, w := range want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if last.Result != ReloadError || !errors.Is(last.Err, err) || f.closed.Load() != 0 || reloadCount(t, f.metrics, ReloadError) != 1 {
					t.Errorf("last %+v, %d closed, want the error and the old RoundTripper kept", last, f.closed.Load())
				}
			}
			if err := f.pull(t); err != nil {
				t.Errorf("pull after the reload: %v", err)
			}
			// The change was seen once: no error again until the next change.
			if changed, err := f.hosts.Reload(context.Background()); changed || err != nil {
				t.Errorf("second Reload: %v, %v; want nothing to do", changed, err)
			}
		})
	}
}

func TestReloadKeepsBodiesInFlight(t *testing.T) {
	t.Parallel()
	first := []byte("first half,")
	release := make(chan struct{})
	ca := newCA(t, "ca")
	srv := newRotatingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(first)
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, " second half")
	}), ca.serverCert(t))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	replace(t, caFile, ca.pem, 0o644)
	var closed atomic.Int32
	hosts, err := NewHosts(context.Background(), HostsConfig{
		Load: Static(&conf.Node{Registries: []conf.Registry{registryConf(srv.URL, caFile)}}), NewRT: counting(&closed)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })

	x := hosts.lookup(imageHost)
	resp, err := x.client.Get("https://" + imageHost + "/v2/app/blobs/slow")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, len(first))
	if _, err := io.ReadFull(resp.Body, got); err != nil {
		t.Fatal(err)
	}
	replace(t, caFile, ca.pem, 0o644) // the same CA in a new file
	if changed, err := hosts.Reload(context.Background()); !changed || err != nil {
		t.Fatalf("Reload: %v, %v", changed, err)
	}
	if n := closed.Load(); n != 0 {
		t.Fatalf("old RoundTripper closed %d times while its body is read", n)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(got)+string(rest) != "first half, second half" {
		t.Fatalf("body %q%q, %v; want it whole", got, rest, err)
	}
	if n := closed.Load(); n != 1 {
		t.Errorf("old RoundTripper closed %d times after its last body, want 1", n)
	}
	if g := x.cur.Load(); g.closed || g.retired {
		t.Error("the new generation is closed")
	}
}

func TestReloadNodeConfig(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "", "")
	ca := writeCA(t, srv.Server)
	node := filepath.Join(t.TempDir(), "node.toml")
	write := func(hosts ...string) {
		var b strings.Builder
		for _, h := range hosts {
			fmt.Fprintf(&b, "[[registry]]\nhost = %q\nendpoint = [{url = %q}]\ntls = {ca = %q}\n", h, srv.URL, ca)
		}
		replace(t, node, []byte(b.String()), 0o644)
	}
	write("a.invalid")
	c := &config.Config{NodeConfig: node}
	hosts, err := NewHosts(context.Background(), HostsConfig{Load: c.Node, Files: []string{node}, NewRT: FirstEndpoint})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hosts.Close() })
	inner := &fakeInner{}
	tr := Wrap(inner, hosts, nil)
	served := func() []string {
		var out []string
		for _, s := range hosts.Status() {
			out = append(out, s.Host)
		}
		return out
	}

	for _, step := range []struct {
		name  string
		write func()
		hosts string
		err   string
	}{
		{"host added", func() { write("a.invalid", "b.invalid") }, "a.invalid b.invalid", ""},
		{"host removed", func() { write("b.invalid") }, "b.invalid", ""},
		{"invalid file", func() {
			replace(t, node, []byte("[[registry]]\nhost = \"c.invalid\"\nendpoint = [{url = \"https://x\", weight = 0}]\n"), 0o644)
		}, "b.invalid", node + ": registry[0].endpoint[0].weight: must be > 0"},
		{"unparseable file", func() { replace(t, node, []byte("[[registry]\n"), 0o644) }, "b.invalid", node + ": line 2"},
		{"file removed", func() {
			if err := os.Remove(node); err != nil {
				t.Fatal(err)
			}
		}, "b.invalid", node + ": config file not found"},
		{"file back", func() { write("a.invalid") }, "a.invalid", ""},
	} {
		step.write()
		changed, err := hosts.Reload(context.Background())
		if !changed || (err == nil) != (step.err == "") || (err != nil && !strings.Contains(err.Error(), step.err)) {
			t.Fatalf("%s: Reload: %v, %v; want an error containing %q", step.name, changed, err, step.err)
		}
		if got := strings.Join(served(), " "); got != step.hosts {
			t.Fatalf("%s: serving %q, want %q", step.name, got, step.hosts)
		}
	}

	// A removed host's pulls take containerd's own path again.
	src := ociRegistry(t, "b.invalid/app:v1")
	if err := tr.Transfer(context.Background(), src, nil); err != nil {
		t.Fatal(err)
	}
	if err := tr.Transfer(context.Background(), ociRegistry(t, "a.invalid/app:v1"), nil); err != nil {
		t.Fatal(err)
	}
	if srcs := inner.sources(); len(srcs) != 2 || srcs[0] != any(src) {
		t.Errorf("inner got %v, want the removed host's original source and then ours", srcs)
	} else if _, ok := srcs[1].(*source); !ok {
		t.Errorf("inner got %T for the served host, want our source", srcs[1])
	}
}

func TestWatch(t *testing.T) {
	t.Parallel()
	srv := newFakeRegistry(t, "", "")
	hosts, err := NewHosts(context.Background(), HostsConfig{
		Load:           Static(&conf.Node{Registries: []conf.Registry{registryConf(srv.URL, writeCA(t, srv.Server))}}),
		NewRT:          FirstEndpoint,
		ReloadInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if hosts.stopWatch == nil {
		t.Fatal("no watch goroutine with a reload interval")
	}
	// Close stops the goroutine and waits for it.
	if err := hosts.Close(); err != nil {
		t.Fatal(err)
	}
	hosts.stopWatch() // again: a no-op
}
