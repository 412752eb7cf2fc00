package hosts

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	ctrconfig "github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

func eps(urls ...string) []conf.Endpoint {
	var out []conf.Endpoint
	for _, u := range urls {
		out = append(out, conf.Endpoint{URL: u, Weight: 1})
	}
	return out
}

func registry(host string) conf.Registry {
	return conf.Registry{Host: host, Timeouts: conf.Timeouts{Dial: conf.Duration{Duration: time.Second}}}
}

// writeSecret writes a credentials file of mode perm and returns its path.
func writeSecret(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRenderGolden(t *testing.T) {
	t.Parallel()
	creds := writeSecret(t, "hopless:s3cret\n", 0o600)
	tests := []struct {
		name  string
		reg   func() conf.Registry
		order []conf.Endpoint
		want  string
	}{
		{
			name:  "one endpoint, no TLS settings, fallback off",
			reg:   func() conf.Registry { return registry("registry.example") },
			order: eps("https://10.0.0.1:5001"),
			want: `# managed by hopless-nri: do not edit; registry.example
server = "https://registry.example"
# fallback is off: no pull goes to the image host itself
capabilities = ["push"]

[host."https://10.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "1s"
`,
		},
		{
			name: "CA, order kept, fallback on",
			reg: func() conf.Registry {
				r := registry("registry.d8-system.svc:5001")
				r.TLS.CA = "/etc/hopless/ca.pem"
				r.Timeouts.Dial.Duration = 500 * time.Millisecond
				r.Fallback = true
				return r
			},
			order: eps("https://10.0.0.3:5001", "https://10.0.0.1:5001", "https://10.0.0.2:5001"),
			want: `# managed by hopless-nri: do not edit; registry.d8-system.svc:5001
server = "https://registry.d8-system.svc:5001"

[host."https://10.0.0.3:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  dial_timeout = "500ms"

[host."https://10.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  dial_timeout = "500ms"

[host."https://10.0.0.2:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  dial_timeout = "500ms"
`,
		},
		{
			name: "CA, client pair and credentials",
			reg: func() conf.Registry {
				r := registry("registry.example:5000")
				r.TLS = conf.TLS{CA: "/etc/hopless/ca.pem", Cert: "/etc/hopless/node.pem", Key: "/etc/hopless/node-key.pem"}
				r.Auth.CredentialsFile = creds
				return r
			},
			order: eps("https://m1.example:5001", "https://[2001:db8::1]:5001"),
			want: `# managed by hopless-nri: do not edit; registry.example:5000
server = "https://registry.example:5000"
# fallback is off: no pull goes to the image host itself
capabilities = ["push"]

[host."https://m1.example:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  client = [["/etc/hopless/node.pem", "/etc/hopless/node-key.pem"]]
  dial_timeout = "1s"
  [host."https://m1.example:5001".header]
    Authorization = "Basic aG9wbGVzczpzM2NyZXQ="

[host."https://[2001:db8::1]:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  client = [["/etc/hopless/node.pem", "/etc/hopless/node-key.pem"]]
  dial_timeout = "1s"
  [host."https://[2001:db8::1]:5001".header]
    Authorization = "Basic aG9wbGVzczpzM2NyZXQ="
`,
		},
		{
			name: "credentials without TLS settings",
			reg: func() conf.Registry {
				r := registry("registry.example")
				r.Auth.CredentialsFile = writeSecret(t, "user:pa:ss", 0o400)
				r.Fallback = true
				return r
			},
			order: eps("https://10.0.0.1:5001"),
			want: `# managed by hopless-nri: do not edit; registry.example
server = "https://registry.example"

[host."https://10.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "1s"
  [host."https://10.0.0.1:5001".header]
    Authorization = "Basic dXNlcjpwYTpzcw=="
`,
		},
		{
			name: "plain http endpoint gets no TLS settings, trailing slash dropped",
			reg: func() conf.Registry {
				r := registry("registry.example")
				r.TLS = conf.TLS{CA: "/etc/hopless/ca.pem", Insecure: true}
				r.Fallback = true
				return r
			},
			order: eps("http://10.0.0.1:5001/", "https://10.0.0.2:5001/"),
			want: `# managed by hopless-nri: do not edit; registry.example
server = "https://registry.example"

[host."http://10.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "1s"

[host."https://10.0.0.2:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hopless/ca.pem"
  dial_timeout = "1s"
`,
		},
		{
			name: "IPv6 zone stays escaped, as containerd parses the key",
			reg: func() conf.Registry {
				r := registry("registry.example")
				r.Fallback = true
				return r
			},
			order: eps("https://[fe80::1%25eth0]:5001"),
			want: `# managed by hopless-nri: do not edit; registry.example
server = "https://registry.example"

[host."https://[fe80::1%25eth0]:5001"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "1s"
`,
		},
		{
			name: "paths that need escaping",
			reg: func() conf.Registry {
				r := registry("registry.example")
				r.TLS.CA = "/etc/hop\"less\\x/ca\tπ.pem"
				r.Fallback = true
				return r
			},
			order: eps("https://10.0.0.1:5001"),
			want: `# managed by hopless-nri: do not edit; registry.example
server = "https://registry.example"

[host."https://10.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/hop\"less\\x/ca\tπ.pem"
  dial_timeout = "1s"
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := tt.reg()
			got, err := Render(reg, tt.order)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Render:\n%s\nwant:\n%s", got, tt.want)
			}
			again, err := Render(reg, tt.order)
			if err != nil || string(again) != string(got) {
				t.Errorf("a second Render gave other bytes (%v):\n%s", err, again)
			}
			checkParses(t, reg, tt.order, got)
		})
	}
}

// hostsFile is what containerd decodes from hosts.toml.
type hostsFile struct {
	Server       string              `toml:"server"`
	Capabilities []string            `toml:"capabilities"`
	Host         map[string]hostFile `toml:"host"`
}

type hostFile struct {
	Capabilities []string          `toml:"capabilities"`
	CA           string            `toml:"ca"`
	Client       [][]string        `toml:"client"`
	DialTimeout  string            `toml:"dial_timeout"`
	Header       map[string]string `toml:"header"`
}

// checkParses decodes b with a TOML decoder and checks it says what Render was asked.
func checkParses(t *testing.T, reg conf.Registry, order []conf.Endpoint, b []byte) {
	t.Helper()
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		t.Fatalf("decoding the output: %v", err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		t.Errorf("undecoded keys %v", u)
	}
	if f.Server != "https://"+reg.Host {
		t.Errorf("server = %q", f.Server)
	}
	if wantCaps := []string{"push"}; reg.Fallback && f.Capabilities != nil || !reg.Fallback && !slices.Equal(f.Capabilities, wantCaps) {
		t.Errorf("server capabilities %v with fallback %v", f.Capabilities, reg.Fallback)
	}
	var inOrder []string
	for _, k := range md.Keys() {
		if len(k) == 2 && k[0] == "host" {
			inOrder = append(inOrder, k[1])
		}
	}
	var want []string
	for _, e := range order {
		want = append(want, strings.TrimSuffix(e.URL, "/"))
	}
	if !slices.Equal(inOrder, want) {
		t.Errorf("host tables in the order %v, want %v", inOrder, want)
	}
	for _, u := range want {
		h := f.Host[u]
		if !slices.Equal(h.Capabilities, []string{"pull", "resolve"}) {
			t.Errorf("%s: capabilities %v", u, h.Capabilities)
		}
		if d, err := time.ParseDuration(h.DialTimeout); err != nil || d != reg.Timeouts.Dial.Duration {
			t.Errorf("%s: dial_timeout %q, want %s", u, h.DialTimeout, reg.Timeouts.Dial.Duration)
		}
		https := strings.HasPrefix(u, "https://")
		if wantCA := reg.TLS.CA; https && h.CA != wantCA || !https && h.CA != "" {
			t.Errorf("%s: ca %q, want %q", u, h.CA, wantCA)
		}
		if reg.TLS.Cert != "" && https && !slices.EqualFunc(h.Client, [][]string{{reg.TLS.Cert, reg.TLS.Key}}, slices.Equal) {
			t.Errorf("%s: client %v", u, h.Client)
		}
		if _, ok := h.Header["Authorization"]; ok != (reg.Auth.CredentialsFile != "") {
			t.Errorf("%s: header %v with credentials file %q", u, h.Header, reg.Auth.CredentialsFile)
		}
	}
}

// TestRenderContainerd gives Render's output to containerd's own hosts.toml loader:
// the endpoints come in our order, then the image host, with our TLS settings and
// header.
func TestRenderContainerd(t *testing.T) {
	t.Parallel()
	pki := t.TempDir()
	ca, cert, key := writePKI(t, pki)
	creds := writeSecret(t, "hopless:s3cret", 0o600)
	tests := []struct {
		name     string
		fallback bool
		tls      conf.TLS
		creds    string
	}{
		{"bare", false, conf.TLS{}, ""},
		{"fallback", true, conf.TLS{}, ""},
		{"CA", false, conf.TLS{CA: ca}, ""},
		{"CA, client pair, credentials", true, conf.TLS{CA: ca, Cert: cert, Key: key}, creds},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := registry("registry.example:5000")
			reg.Fallback, reg.TLS, reg.Auth.CredentialsFile = tt.fallback, tt.tls, tt.creds
			order := eps("https://10.0.0.2:5001", "https://m1.example", "https://[2001:db8::1]:5001", "https://10.0.0.1:5001")
			b, err := Render(reg, order)
			if err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			dir := filepath.Join(root, reg.Host)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, FileName), b, 0o600); err != nil {
				t.Fatal(err)
			}
			hosts, err := ctrconfig.ConfigureHosts(context.Background(), ctrconfig.HostOptions{HostDir: ctrconfig.HostDirFromRoot(root)})(reg.Host)
			if err != nil {
				t.Fatal(err)
			}
			type got struct {
				scheme, host string
				caps         docker.HostCapabilities
			}
			var gotHosts []got
			for _, h := range hosts {
				gotHosts = append(gotHosts, got{h.Scheme, h.Host, h.Capabilities})
			}
			pr := docker.HostCapabilityPull | docker.HostCapabilityResolve
			serverCaps := docker.HostCapabilityPush
			if tt.fallback {
				serverCaps = pr | docker.HostCapabilityPush | docker.HostCapabilityReferrers
			}
			want := []got{{"https", "10.0.0.2:5001", pr}, {"https", "m1.example", pr}, {"https", "[2001:db8::1]:5001", pr}, {"https", "10.0.0.1:5001", pr}, {"https", "registry.example:5000", serverCaps}}
			if !slices.Equal(gotHosts, want) {
				t.Fatalf("containerd's hosts %+v, want %+v", gotHosts, want)
			}
			for _, h := range hosts[:len(order)] {
				if h.Path != "/v2" {
					t.Errorf("%s: path %q", h.Host, h.Path)
				}
				wantAuth := ""
				if tt.creds != "" {
					wantAuth = "Basic aG9wbGVzczpzM2NyZXQ="
				}
				if a := h.Header.Get("Authorization"); a != wantAuth {
					t.Errorf("%s: Authorization %q, want %q", h.Host, a, wantAuth)
				}
				tr, ok := h.Client.Transport.(*http.Transport)
				if !ok {
					t.Fatalf("%s: transport %T", h.Host, h.Client.Transport)
				}
				if (tr.TLSClientConfig.RootCAs != nil) != (tt.tls.CA != "") {
					t.Errorf("%s: RootCAs set %v, CA %q", h.Host, tr.TLSClientConfig.RootCAs != nil, tt.tls.CA)
				}
				if n, want := len(tr.TLSClientConfig.Certificates), map[bool]int{true: 1}[tt.tls.Cert != ""]; n != want {
					t.Errorf("%s: %d client certificates, want %d", h.Host, n, want)
				}
			}
		})
	}
}

// writePKI writes a self-signed CA and a client pair signed by it under dir.
func writePKI(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	nodeTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	nodeDER, err := x509.CreateCertificate(rand.Reader, nodeTmpl, caTmpl, &nodeKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{ca, "CERTIFICATE", caDER}, {cert, "CERTIFICATE", nodeDER}, {key, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca, cert, key
}

func TestRenderErrors(t *testing.T) {
	t.Parallel()
	open := writeSecret(t, "hopless:s3cret", 0o644)
	bad := writeSecret(t, "no colon here", 0o600)
	tests := []struct {
		name    string
		edit    func(*conf.Registry)
		order   []conf.Endpoint
		want    string // in the error
		invalid bool   // errdefs.IsInvalidArgument
	}{
		{"empty host", func(r *conf.Registry) { r.Host = "" }, nil, "empty image host", true},
		{"traversal host", func(r *conf.Registry) { r.Host = "../etc" }, nil, "would escape", true},
		{"slash in host", func(r *conf.Registry) { r.Host = "a/b" }, nil, "would escape", true},
		{"not a host", func(r *conf.Registry) { r.Host = "_default" }, nil, "bad image host", true},
		{"no endpoints", nil, []conf.Endpoint{}, "no endpoints", true},
		{"no dial timeout", func(r *conf.Registry) { r.Timeouts.Dial.Duration = 0 }, nil, "timeouts.dial must be > 0", true},
		{"relative CA", func(r *conf.Registry) { r.TLS.CA = "ca.pem" }, nil, `tls.ca: path "ca.pem" must be absolute`, true},
		{"relative key", func(r *conf.Registry) { r.TLS.Cert, r.TLS.Key = "/c.pem", "k.pem" }, nil, "tls.key", true},
		{"cert without key", func(r *conf.Registry) { r.TLS.Cert = "/c.pem" }, nil, "tls.cert and tls.key", true},
		{"CA not UTF-8", func(r *conf.Registry) { r.TLS.CA = "/ca\xff.pem" }, nil, "not valid UTF-8", true},
		{"duplicate endpoint", nil, eps("https://a:1", "https://b:1", "https://A:1/"), "endpoint 2: https://A:1 is endpoint 0 already", true},
		{"endpoint with path", nil, eps("https://a:1/v2"), `endpoint 0: bad URL "https://a:1/v2"`, true},
		{"endpoint without scheme", nil, eps("10.0.0.1:5001"), "endpoint 0: bad URL", true},
		{"endpoint ftp", nil, eps("ftp://a"), "endpoint 0: bad URL", true},
		{"credentials too open", func(r *conf.Registry) { r.Auth.CredentialsFile = open }, nil, "credentials file " + open + ": mode 0644 is too open", false},
		{"credentials malformed", func(r *conf.Registry) { r.Auth.CredentialsFile = bad }, nil, "credentials file " + bad + `: want one line`, false},
		{"credentials missing", func(r *conf.Registry) { r.Auth.CredentialsFile = "/nonexistent/creds" }, nil, "credentials file /nonexistent/creds", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := registry("registry.example")
			if tt.edit != nil {
				tt.edit(&reg)
			}
			order := tt.order
			if order == nil {
				order = eps("https://10.0.0.1:5001")
			}
			b, err := Render(reg, order)
			if err == nil {
				t.Fatalf("Render succeeded:\n%s", b)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "hosts.toml of ") {
				t.Errorf("error %q, want it to start with hosts.toml of and contain %q", err, tt.want)
			}
			if errdefs.IsInvalidArgument(err) != tt.invalid {
				t.Errorf("IsInvalidArgument(%v) = %v, want %v", err, !tt.invalid, tt.invalid)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
}

func TestDir(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host, want string
		err        string
	}{
		{"registry.example", "registry.example", ""},
		{"registry.example:5000", "registry.example:5000", ""},
		{"10.0.0.1:5000", "10.0.0.1:5000", ""},
		{"[2001:db8::1]:5000", "[2001:db8::1]:5000", ""},
		{"", "", "empty image host"},
		{".", "", "bad image host"},
		{"..", "", "would escape"},
		{"../x", "", "would escape"},
		{"a/../..", "", "would escape"},
		{"/etc", "", "would escape"},
		{"a/b", "", "would escape"},
		{`a\b`, "", "would escape"},
		{"a\x00b", "", "would escape"},
		{"a..b", "", "would escape"},
		{"_default", "", "bad image host"},
		{"host name", "", "bad image host"},
		{"-x", "", "bad image host"},
	}
	for _, tt := range tests {
		got, err := Dir(tt.host)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("Dir(%q) = %q, %v; want %q", tt.host, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, errdefs.ErrInvalidArgument)):
			t.Errorf("Dir(%q) = %q, %v; want an invalid-argument error with %q", tt.host, got, err, tt.err)
		}
	}
}
