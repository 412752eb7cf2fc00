package conf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// secret is the password used in every credentials file; no error may contain it.
const secret = "s3cr3t-PASSWORD"

// file is a file (or, with dir set, a directory) that a test case creates next to
// the config file before loading it.
type file struct {
	name string
	text string
	mode os.FileMode // 0 means 0600
	dir  bool
}

// fieldWant is one expected problem: a line of the error that starts with
// "<config path>: <field>: " and contains reason.
type fieldWant struct {
	field  string
	reason string
}

func writeFiles(t *testing.T, dir string, files []file) {
	t.Helper()
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if f.dir {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mode := f.mode
		if mode == 0 {
			mode = 0o600
		}
		if err := os.WriteFile(p, []byte(f.text), mode); err != nil {
			t.Fatal(err)
		}
		// Chmod explicitly: WriteFile's mode is subject to the umask.
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// writeConfig writes text as dir/name plus the extra files and returns its path.
func writeConfig(t *testing.T, name, text string, files []file) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkErr asserts that err is a validation error naming every wanted field with its
// reason, none of the unwanted fields, and never the password.
func checkErr(t *testing.T, path string, err error, want []fieldWant, absent []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", want)
	}
	msg := err.Error()
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("errdefs.IsInvalidArgument(%q) = false, want true", msg)
	}
	if strings.Contains(msg, secret) {
		t.Errorf("error contains the password: %q", msg)
	}
	lines := strings.Split(msg, "\n")
	for _, w := range want {
		prefix := path + ": " + w.field + ": "
		found := false
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) && strings.Contains(l[len(prefix):], w.reason) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("error has no line %q...%q; got:\n%s", prefix, w.reason, msg)
		}
	}
	for _, a := range absent {
		for _, l := range lines {
			if strings.HasPrefix(l, path+": "+a+": ") {
				t.Errorf("error names %s, want not; got:\n%s", a, msg)
			}
		}
	}
	if len(want) > 0 && len(lines) != len(want) {
		t.Errorf("error has %d lines, want %d; got:\n%s", len(lines), len(want), msg)
	}
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// nodeHead is a valid registry without endpoints; cases append endpoints and tables.
const nodeHead = `
[[registry]]
host = "registry.d8-system.svc:5001"
`

// nodeOK is a valid node.toml with two endpoints.
const nodeOK = nodeHead + `
[[registry.endpoint]]
url = "https://10.0.0.1:5001"

[[registry.endpoint]]
url = "https://10.0.0.2:5001"
`

func TestLoadNode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		text   string
		files  []file
		want   []fieldWant // nil: must load
		absent []string
		check  func(t *testing.T, dir string, n *Node)
	}{
		{
			name: "valid with all defaults",
			text: nodeOK,
			check: func(t *testing.T, _ string, n *Node) {
				if len(n.Registries) != 1 {
					t.Fatalf("got %d registries, want 1", len(n.Registries))
				}
				r := n.Registries[0]
				if r.Host != "registry.d8-system.svc:5001" {
					t.Errorf("Host = %q", r.Host)
				}
				if len(r.Endpoints) != 2 || r.Endpoints[0].URL != "https://10.0.0.1:5001" || r.Endpoints[1].URL != "https://10.0.0.2:5001" {
					t.Errorf("Endpoints = %+v", r.Endpoints)
				}
				for j, e := range r.Endpoints {
					if e.Weight != 1 || e.Local {
						t.Errorf("endpoint[%d] = %+v, want weight 1, not local", j, e)
					}
				}
				want := Timeouts{
					Dial:           Duration{time.Second},
					ResponseHeader: Duration{3 * time.Second},
					Stall:          Duration{5 * time.Second},
					HealthInterval: Duration{time.Second},
					HealthTimeout:  Duration{ms(500)},
					HedgeMin:       Duration{ms(100)},
					HedgeMax:       Duration{time.Second},
				}
				if r.Timeouts != want {
					t.Errorf("Timeouts = %+v, want %+v", r.Timeouts, want)
				}
				if r.TLS != (TLS{}) || r.Auth != (Auth{}) || r.Fallback {
					t.Errorf("TLS %+v, Auth %+v, Fallback %v; want zero", r.TLS, r.Auth, r.Fallback)
				}
			},
		},
		{
			name: "omitted weight defaults to 1, explicit weight kept",
			text: nodeHead + `
[[registry.endpoint]]
url = "https://10.0.0.1:5001"
weight = 3
local = true

[[registry.endpoint]]
url = "https://10.0.0.2:5001"
`,
			check: func(t *testing.T, _ string, n *Node) {
				e := n.Registries[0].Endpoints
				if e[0].Weight != 3 || !e[0].Local || e[1].Weight != 1 || e[1].Local {
					t.Errorf("Endpoints = %+v, want weights 3 and 1, first local", e)
				}
			},
		},
		{
			name: "full valid file, relative paths resolved against the config directory",
			text: `
[[registry]]
host = "Registry.Example"
fallback = true
endpoint = [{ url = "http://10.0.0.1" }, { url = "https://10.0.0.1" }]

[registry.tls]
ca = "pki/ca.pem"
cert = "pki/client.pem"
key = "pki/client.key"
insecure = true

[registry.auth]
credentials_file = "creds"

[registry.timeouts]
dial = "2s"
response_header = "4s"
stall = "1m"
health_interval = "2s"
health_timeout = "2s"
hedge_min = "1s"
hedge_max = "1s"

[[registry]]
host = "[::1]:5001"
[[registry.endpoint]]
url = "https://[::1]:5001"
`,
			files: []file{
				{name: "pki/ca.pem", text: "ca"},
				{name: "pki/client.pem", text: "cert"},
				{name: "pki/client.key", text: "key"},
				{name: "creds", text: "user:" + secret, mode: 0o600},
			},
			check: func(t *testing.T, dir string, n *Node) {
				r := n.Registries[0]
				wantTLS := TLS{
					CA:       filepath.Join(dir, "pki/ca.pem"),
					Cert:     filepath.Join(dir, "pki/client.pem"),
					Key:      filepath.Join(dir, "pki/client.key"),
					Insecure: true,
				}
				if r.TLS != wantTLS {
					t.Errorf("TLS = %+v, want %+v", r.TLS, wantTLS)
				}
				if want := filepath.Join(dir, "creds"); r.Auth.CredentialsFile != want {
					t.Errorf("CredentialsFile = %q, want %q", r.Auth.CredentialsFile, want)
				}
				if !r.Fallback || len(r.Endpoints) != 2 {
					t.Errorf("Fallback %v, Endpoints %+v", r.Fallback, r.Endpoints)
				}
				want := Timeouts{
					Dial:           Duration{2 * time.Second},
					ResponseHeader: Duration{4 * time.Second},
					Stall:          Duration{time.Minute},
					HealthInterval: Duration{2 * time.Second},
					HealthTimeout:  Duration{2 * time.Second},
					HedgeMin:       Duration{time.Second},
					HedgeMax:       Duration{time.Second},
				}
				if r.Timeouts != want {
					t.Errorf("Timeouts = %+v, want %+v", r.Timeouts, want)
				}
				if n.Registries[1].Timeouts.Dial.Duration != time.Second {
					t.Errorf("registry[1] dial = %v, want default 1s", n.Registries[1].Timeouts.Dial)
				}
			},
		},

		// Strict decoding.
		{
			name: "unknown key at top level",
			text: "wieght = 1\n" + nodeOK,
			want: []fieldWant{{"wieght", "unknown key"}},
		},
		{
			name: "unknown key nested in an array of tables",
			text: nodeOK + "wieght = 2\n",
			want: []fieldWant{{"registry[0].endpoint[1].wieght", "unknown key"}},
		},
		{
			name: "unknown key in the second registry",
			text: nodeOK + nodeHead + `
[[registry.endpoint]]
url = "https://10.0.0.3:5001"
[registry.timeouts]
dail = "1s"
`,
			want: []fieldWant{{"registry[1].timeouts.dail", "unknown key"}},
		},
		{
			name:   "unknown table is reported once, not its keys",
			text:   nodeOK + "[registry.foo]\nbar = 1\n",
			want:   []fieldWant{{"registry[0].foo", "unknown key"}},
			absent: []string{"registry[0].foo.bar"},
		},
		{
			// The TOML decoder matches keys case-insensitively; a strict config must
			// not, or "Weight = 0" would silently become the default 1.
			name: "key in the wrong case is unknown",
			text: nodeOK + "Weight = 0\n",
			want: []fieldWant{{"registry[0].endpoint[1].Weight", "unknown key"}},
		},
		{
			name: "value of the wrong type",
			text: nodeOK + "weight = \"2\"\n",
			want: []fieldWant{{"registry[0].endpoint[1].weight", `must be an integer, got string "2"`}},
		},
		{
			name: "table where an array of tables belongs",
			text: "[registry]\nhost = \"a\"\n",
			want: []fieldWant{{"registry", "must be an array, got a table"}},
		},
		{
			name: "syntax error",
			text: nodeOK + "weight = = 1\n",
			want: []fieldWant{{"line 10", "expected value"}},
		},

		// URLs.
		{
			name: "URL without scheme",
			text: nodeOK + "[[registry]]\nhost = \"b.example\"\n[[registry.endpoint]]\nurl = \"10.0.0.9\"\n",
			want: []fieldWant{{"registry[1].endpoint[0].url", `bad URL "10.0.0.9": scheme must be https`}},
		},
		{
			name: "URL without scheme, with port",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"10.0.0.9:5001\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", `bad URL "10.0.0.9:5001"`}},
		},
		{
			name: "ftp URL",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"ftp://10.0.0.9\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", `bad URL "ftp://10.0.0.9": scheme must be https`}},
		},
		{
			name: "URL with a path",
			text: nodeOK + "[[registry.endpoint]]\nurl = \"https://10.0.0.3:5001/v2\"\n",
			want: []fieldWant{{"registry[0].endpoint[2].url", "want scheme://host[:port] only"}},
		},
		{
			name: "URL with user info",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"https://u:p@10.0.0.3\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", "want scheme://host[:port] only"}},
		},
		{
			name: "URL with a query",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"https://10.0.0.3?x=1\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", "want scheme://host[:port] only"}},
		},
		{
			name: "URL without host",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"https://:5001\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", "want scheme://host[:port] only"}},
		},
		{
			name: "URL port out of range",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"https://10.0.0.3:65536\"\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", "port must be 1-65535"}},
		},
		{
			name: "URL missing",
			text: nodeHead + "[[registry.endpoint]]\nweight = 1\n",
			want: []fieldWant{{"registry[0].endpoint[0].url", "is required"}},
		},
		{
			name: "http without tls.insecure",
			text: nodeOK + "[[registry.endpoint]]\nurl = \"http://10.0.0.3:5001\"\n",
			want: []fieldWant{{"registry[0].endpoint[2].url", "plain http needs tls.insecure = true"}},
		},

		// Weights.
		{
			name: "weight 0",
			text: nodeOK + "weight = 0\n",
			want: []fieldWant{{"registry[0].endpoint[1].weight", "must be > 0, got 0"}},
		},
		{
			name: "negative weight",
			text: nodeHead + "[[registry.endpoint]]\nurl = \"https://10.0.0.1\"\nweight = -3\n",
			want: []fieldWant{{"registry[0].endpoint[0].weight", "must be > 0, got -3"}},
		},
		{
			name: "two local endpoints",
			text: nodeOK + "local = true\n[[registry.endpoint]]\nurl = \"https://10.0.0.3\"\nlocal = true\n",
			want: []fieldWant{{"registry[0].endpoint", "at most one endpoint may be local, got 2"}},
		},

		// Duplicates.
		{
			name: "duplicate endpoint",
			text: nodeOK + "[[registry.endpoint]]\nurl = \"https://10.0.0.1:5001\"\n",
			want: []fieldWant{{"registry[0].endpoint[2].url", `duplicate endpoint "https://10.0.0.1:5001", also endpoint[0]`}},
		},
		{
			name: "duplicate endpoint, host differs in case",
			text: nodeHead + `
[[registry.endpoint]]
url = "https://master-0.example:5001"
[[registry.endpoint]]
url = "HTTPS://Master-0.EXAMPLE:5001/"
`,
			want: []fieldWant{{"registry[0].endpoint[1].url", `duplicate endpoint "HTTPS://Master-0.EXAMPLE:5001/", also endpoint[0]`}},
		},
		{
			name: "duplicate endpoint, default port written out",
			text: nodeHead + `
[[registry.endpoint]]
url = "https://master-0.example"
[[registry.endpoint]]
url = "https://master-0.example:443"
`,
			want: []fieldWant{{"registry[0].endpoint[1].url", "duplicate endpoint"}},
		},
		{
			name: "same host in two registries is not a duplicate endpoint",
			text: nodeOK + `
[[registry]]
host = "other.example"
[[registry.endpoint]]
url = "https://10.0.0.1:5001"
`,
		},
		{
			name: "duplicate registry host",
			text: nodeOK + nodeOK,
			want: []fieldWant{{"registry[1].host", `duplicate host "registry.d8-system.svc:5001", also registry[0]`}},
		},
		{
			name: "duplicate registry host, differs in case",
			text: nodeOK + strings.Replace(nodeOK, "registry.d8-system.svc", "Registry.D8-System.svc", 1),
			want: []fieldWant{{"registry[1].host", `duplicate host "Registry.D8-System.svc:5001", also registry[0]`}},
		},
		{
			name: "bad registry host",
			text: strings.Replace(nodeOK, "registry.d8-system.svc:5001", "https://registry.example", 1),
			want: []fieldWant{{"registry[0].host", `bad image host "https://registry.example"`}},
		},
		{
			name: "missing registry host",
			text: "[[registry]]\n[[registry.endpoint]]\nurl = \"https://10.0.0.1\"\n",
			want: []fieldWant{{"registry[0].host", "is required"}},
		},

		// TLS files.
		{
			name: "missing CA file",
			text: nodeOK + "[registry.tls]\nca = \"missing-ca.pem\"\n",
			want: []fieldWant{{"registry[0].tls.ca", "missing-ca.pem not found"}},
		},
		{
			name:  "CA path is a directory",
			text:  nodeOK + "[registry.tls]\nca = \"pki\"\n",
			files: []file{{name: "pki", dir: true}},
			want:  []fieldWant{{"registry[0].tls.ca", "pki is a directory, want a file"}},
		},
		{
			name:  "cert without key",
			text:  nodeOK + "[registry.tls]\ncert = \"client.pem\"\n",
			files: []file{{name: "client.pem", text: "cert"}},
			want:  []fieldWant{{"registry[0].tls.key", "is required when cert is set"}},
		},
		{
			name:  "key without cert",
			text:  nodeOK + "[registry.tls]\nkey = \"client.key\"\n",
			files: []file{{name: "client.key", text: "key"}},
			want:  []fieldWant{{"registry[0].tls.cert", "is required when key is set"}},
		},
		{
			name:  "missing key file",
			text:  nodeOK + "[registry.tls]\ncert = \"client.pem\"\nkey = \"client.key\"\n",
			files: []file{{name: "client.pem", text: "cert"}},
			want:  []fieldWant{{"registry[0].tls.key", "client.key not found"}},
		},

		// Structure.
		{
			name: "no [[registry]]",
			text: "# nothing here\n",
			want: []fieldWant{{"registry", "at least one [[registry]] is required"}},
		},
		{
			name: "empty file",
			text: "",
			want: []fieldWant{{"registry", "at least one [[registry]] is required"}},
		},
		{
			name: "registry with no endpoints",
			text: nodeOK + "[[registry]]\nhost = \"b.example\"\n",
			want: []fieldWant{{"registry[1].endpoint", "at least one [[registry.endpoint]] is required"}},
		},

		// Durations and timeouts.
		{
			name: "bad duration",
			text: nodeOK + "[registry.timeouts]\ndial = \"5x\"\n",
			want: []fieldWant{{"registry[0].timeouts.dial", `bad duration "5x": want a number with a unit`}},
		},
		{
			name: "bad duration in the second registry",
			text: nodeOK + strings.Replace(nodeOK, "registry.d8", "b.d8", 1) + "[registry.timeouts]\nstall = \"5\"\n",
			want: []fieldWant{{"registry[1].timeouts.stall", `bad duration "5"`}},
		},
		{
			name: "negative duration",
			text: nodeOK + "[registry.timeouts]\nresponse_header = \"-3s\"\n",
			want: []fieldWant{{"registry[0].timeouts.response_header", `bad duration "-3s": must not be negative`}},
		},
		{
			name: "zero duration",
			text: nodeOK + "[registry.timeouts]\nstall = \"0s\"\n",
			want: []fieldWant{{"registry[0].timeouts.stall", "must be > 0, got 0s"}},
		},
		{
			name: "duration as an integer",
			text: nodeOK + "[registry.timeouts]\ndial = 5\n",
			want: []fieldWant{{"registry[0].timeouts.dial", `must be a duration string such as "500ms", got integer 5`}},
		},
		{
			name: "hedge_min > hedge_max",
			text: nodeOK + "[registry.timeouts]\nhedge_min = \"300ms\"\nhedge_max = \"200ms\"\n",
			want: []fieldWant{{"registry[0].timeouts.hedge_min", "must be <= hedge_max (200ms), got 300ms"}},
		},
		{
			name: "hedge_min > default hedge_max",
			text: nodeOK + "[registry.timeouts]\nhedge_min = \"2s\"\n",
			want: []fieldWant{{"registry[0].timeouts.hedge_min", "must be <= hedge_max (1s), got 2s"}},
		},
		{
			name: "health_timeout > health_interval",
			text: nodeOK + "[registry.timeouts]\nhealth_timeout = \"2s\"\n",
			want: []fieldWant{{"registry[0].timeouts.health_timeout", "must be <= health_interval (1s), got 2s"}},
		},

		// Credentials.
		{
			name:  "credentials file mode 0600 accepted",
			text:  nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", text: "user:" + secret, mode: 0o600}},
		},
		{
			name:  "credentials file mode 0400 accepted",
			text:  nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", text: "user:" + secret, mode: 0o400}},
		},
		{
			name:  "credentials file mode 0644 rejected",
			text:  nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", text: "user:" + secret, mode: 0o644}},
			want:  []fieldWant{{"registry[0].auth.credentials_file", "has mode 0644, want 0600 or stricter"}},
		},
		{
			name:  "credentials file mode 0640 rejected",
			text:  nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", text: "user:" + secret, mode: 0o640}},
			want:  []fieldWant{{"registry[0].auth.credentials_file", "has mode 0640"}},
		},
		{
			name: "missing credentials file",
			text: nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			want: []fieldWant{{"registry[0].auth.credentials_file", "creds not found"}},
		},
		{
			name:  "credentials file is a directory",
			text:  nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", dir: true}},
			want:  []fieldWant{{"registry[0].auth.credentials_file", "is not a regular file"}},
		},

		// Everything at once.
		{
			name: "several decode problems are all reported",
			text: "wieght = 1\n" + nodeOK + "wieght = 2\n[registry.timeouts]\ndial = \"5x\"\nhedge_max = \"-1s\"\n",
			want: []fieldWant{
				{"wieght", "unknown key"},
				{"registry[0].endpoint[1].wieght", "unknown key"},
				{"registry[0].timeouts.dial", `bad duration "5x"`},
				{"registry[0].timeouts.hedge_max", "must not be negative"},
			},
		},
		{
			name: "several validation problems are all reported",
			text: nodeOK + `weight = 0
[[registry.endpoint]]
url = "ftp://10.0.0.3"
[[registry.endpoint]]
url = "https://10.0.0.1:5001"
[registry.tls]
ca = "nope.pem"
cert = "nope.crt"
[registry.timeouts]
hedge_min = "2s"
` + nodeOK,
			want: []fieldWant{
				{"registry[0].endpoint[1].weight", "must be > 0, got 0"},
				{"registry[0].endpoint[2].url", "scheme must be https"},
				{"registry[0].endpoint[3].url", "duplicate endpoint"},
				{"registry[0].tls.ca", "nope.pem not found"},
				{"registry[0].tls.cert", "nope.crt not found"},
				{"registry[0].tls.key", "is required when cert is set"},
				{"registry[0].timeouts.hedge_min", "must be <= hedge_max"},
				{"registry[1].host", "duplicate host"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, "node.toml", tt.text, tt.files)
			n, err := LoadNode(path)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadNode: %v", err)
				}
				if tt.check != nil {
					tt.check(t, filepath.Dir(path), n)
				}
				return
			}
			if n != nil {
				t.Errorf("LoadNode returned a config with an error")
			}
			checkErr(t, path, err, tt.want, tt.absent)
		})
	}
}

func TestDecodeNode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFiles(t, dir, []file{{name: "ca.pem", text: "ca"}})
	n, err := DecodeNode("config.toml", nodeOK+"[registry.tls]\nca = \"ca.pem\"\n", dir)
	if err != nil {
		t.Fatalf("DecodeNode: %v", err)
	}
	if want := filepath.Join(dir, "ca.pem"); n.Registries[0].TLS.CA != want {
		t.Errorf("CA = %q, want %q", n.Registries[0].TLS.CA, want)
	}
	if n.Registries[0].Timeouts.HedgeMax.Duration != time.Second {
		t.Errorf("HedgeMax = %v, want 1s", n.Registries[0].Timeouts.HedgeMax)
	}

	_, err = DecodeNode("config.toml", nodeOK+"weight = 0\n", dir)
	checkErr(t, "config.toml", err, []fieldWant{{"registry[0].endpoint[1].weight", "must be > 0, got 0"}}, nil)
}

const registrydOK = `
[server]
tls_cert = "tls/server.crt"
tls_key = "tls/server.key"

[storage]
root = "cache"

[[upstream]]
url = "https://registry.example"
path = "deckhouse/ce"
`

var registrydFiles = []file{
	{name: "tls/server.crt", text: "cert"},
	{name: "tls/server.key", text: "key"},
}

func TestLoadRegistryd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		text  string
		files []file // added to registrydFiles
		want  []fieldWant
		check func(t *testing.T, dir string, r *Registryd)
	}{
		{
			name: "valid with defaults",
			text: registrydOK,
			check: func(t *testing.T, dir string, r *Registryd) {
				want := Server{
					Listen:          ":5001",
					TLSCert:         filepath.Join(dir, "tls/server.crt"),
					TLSKey:          filepath.Join(dir, "tls/server.key"),
					ShutdownTimeout: Duration{10 * time.Second},
				}
				if r.Server != want {
					t.Errorf("Server = %+v, want %+v", r.Server, want)
				}
				if r.Metrics.Listen != "" {
					t.Errorf("Metrics.Listen = %q, want empty", r.Metrics.Listen)
				}
				if want := filepath.Join(dir, "cache"); r.Storage.Root != want {
					t.Errorf("Storage.Root = %q, want %q", r.Storage.Root, want)
				}
				if len(r.Upstream) != 1 {
					t.Fatalf("got %d upstreams, want 1", len(r.Upstream))
				}
				wantUp := Upstream{
					URL:         "https://registry.example",
					LocalPrefix: "system/deckhouse",
					Path:        "deckhouse/ce",
					TTL:         Duration{168 * time.Hour},
				}
				if r.Upstream[0] != wantUp {
					t.Errorf("Upstream[0] = %+v, want %+v", r.Upstream[0], wantUp)
				}
				if r.Log.Level != "info" {
					t.Errorf("Log.Level = %q, want info", r.Log.Level)
				}
			},
		},
		{
			name: "tls_cert file is checked even when insecure",
			text: `
[server]
listen = "127.0.0.1:5443"
tls_cert = "/abs/ignored-because-insecure.crt"
insecure = true
shutdown_timeout = "30s"

[metrics]
listen = "127.0.0.1:9090"

[storage]
root = "/var/lib/registryd"

[[upstream]]
url = "https://registry.example"
local_prefix = "system/deckhouse"
ttl = "24h"
[upstream.tls]
ca = "ca.pem"
[upstream.auth]
credentials_file = "creds"

[[upstream]]
url = "http://mirror.local:8080"
local_prefix = "mirror"
[upstream.tls]
insecure = true

[log]
level = "debug"
`,
			files: []file{
				{name: "ca.pem", text: "ca"},
				{name: "creds", text: "u:" + secret},
			},
			want: []fieldWant{{"server.tls_cert", "/abs/ignored-because-insecure.crt not found"}},
		},
		{
			name: "valid full file, insecure",
			text: `
[server]
listen = "127.0.0.1:5443"
insecure = true
shutdown_timeout = "30s"

[metrics]
listen = "127.0.0.1:9090"

[storage]
root = "/var/lib/registryd"

[[upstream]]
url = "https://registry.example"
ttl = "24h"
[upstream.tls]
ca = "ca.pem"
[upstream.auth]
credentials_file = "creds"

[[upstream]]
url = "http://mirror.local:8080"
local_prefix = "mirror"
[upstream.tls]
insecure = true

[log]
level = "debug"
`,
			files: []file{
				{name: "ca.pem", text: "ca"},
				{name: "creds", text: "u:" + secret},
			},
			check: func(t *testing.T, dir string, r *Registryd) {
				if r.Server.Listen != "127.0.0.1:5443" || !r.Server.Insecure || r.Server.ShutdownTimeout.Duration != 30*time.Second {
					t.Errorf("Server = %+v", r.Server)
				}
				if r.Metrics.Listen != "127.0.0.1:9090" || r.Storage.Root != "/var/lib/registryd" || r.Log.Level != "debug" {
					t.Errorf("Metrics %+v, Storage %+v, Log %+v", r.Metrics, r.Storage, r.Log)
				}
				u := r.Upstream[0]
				if u.LocalPrefix != "system/deckhouse" || u.TTL.Duration != 24*time.Hour || u.Path != "" {
					t.Errorf("Upstream[0] = %+v", u)
				}
				if u.TLS.CA != filepath.Join(dir, "ca.pem") || u.Auth.CredentialsFile != filepath.Join(dir, "creds") {
					t.Errorf("Upstream[0] paths not resolved: %+v", u)
				}
				if u := r.Upstream[1]; u.LocalPrefix != "mirror" || u.TTL.Duration != 168*time.Hour || !u.TLS.Insecure {
					t.Errorf("Upstream[1] = %+v", u)
				}
			},
		},
		{
			name: "missing storage.root",
			text: strings.Replace(registrydOK, `root = "cache"`, "", 1),
			want: []fieldWant{{"storage.root", "is required"}},
		},
		{
			name: "missing tls_cert and tls_key without insecure",
			text: strings.Replace(registrydOK, "tls_cert = \"tls/server.crt\"\ntls_key = \"tls/server.key\"\n", "", 1),
			want: []fieldWant{
				{"server.tls_cert", "is required unless server.insecure = true"},
				{"server.tls_key", "is required unless server.insecure = true"},
			},
		},
		{
			name: "missing tls_key without insecure",
			text: strings.Replace(registrydOK, "tls_key = \"tls/server.key\"\n", "", 1),
			want: []fieldWant{{"server.tls_key", "is required unless server.insecure = true"}},
		},
		{
			name: "missing tls_cert file",
			text: strings.Replace(registrydOK, "tls/server.crt", "tls/other.crt", 1),
			want: []fieldWant{{"server.tls_cert", "other.crt not found"}},
		},
		{
			name: "bad listen address, no port",
			text: "[server]\nlisten = \"5001\"\n" + registrydOK[len("\n[server]\n"):],
			want: []fieldWant{{"server.listen", `bad address "5001": want host:port`}},
		},
		{
			name: "bad listen address, host name",
			text: "[server]\nlisten = \"localhost:5001\"\n" + registrydOK[len("\n[server]\n"):],
			want: []fieldWant{{"server.listen", "host must be an IP address or empty"}},
		},
		{
			name: "bad listen address, port 0",
			text: "[server]\nlisten = \":0\"\n" + registrydOK[len("\n[server]\n"):],
			want: []fieldWant{{"server.listen", `bad address ":0": bad port`}},
		},
		{
			name: "explicit empty listen is not defaulted",
			text: "[server]\nlisten = \"\"\n" + registrydOK[len("\n[server]\n"):],
			want: []fieldWant{{"server.listen", `bad address ""`}},
		},
		{
			name: "metrics.listen equal to server.listen",
			text: registrydOK + "[metrics]\nlisten = \":5001\"\n",
			want: []fieldWant{{"metrics.listen", `":5001" conflicts with server.listen ":5001"`}},
		},
		{
			name: "metrics.listen on the same port as a wildcard server.listen",
			text: registrydOK + "[metrics]\nlisten = \"127.0.0.1:5001\"\n",
			want: []fieldWant{{"metrics.listen", "conflicts with server.listen"}},
		},
		{
			name: "metrics.listen on another port",
			text: registrydOK + "[metrics]\nlisten = \":9090\"\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Metrics.Listen != ":9090" {
					t.Errorf("Metrics.Listen = %q", r.Metrics.Listen)
				}
			},
		},
		{
			name: "bad metrics.listen",
			text: registrydOK + "[metrics]\nlisten = \"9090\"\n",
			want: []fieldWant{{"metrics.listen", `bad address "9090"`}},
		},
		{
			name: "bad local_prefix, upper case",
			text: registrydOK + "local_prefix = \"System/Deckhouse\"\n",
			want: []fieldWant{{"upstream[0].local_prefix", `must be a repository path like system/deckhouse, got "System/Deckhouse"`}},
		},
		{
			name: "bad local_prefix, leading slash",
			text: registrydOK + "local_prefix = \"/system\"\n",
			want: []fieldWant{{"upstream[0].local_prefix", `got "/system"`}},
		},
		{
			name: "bad local_prefix, explicit empty",
			text: registrydOK + "local_prefix = \"\"\n",
			want: []fieldWant{{"upstream[0].local_prefix", `got ""`}},
		},
		{
			name: "duplicate local_prefix",
			text: registrydOK + "[[upstream]]\nurl = \"https://other.example\"\n",
			want: []fieldWant{{"upstream[1].local_prefix", `duplicate prefix "system/deckhouse", also upstream[0]`}},
		},
		{
			name: "bad upstream path",
			text: strings.Replace(registrydOK, "deckhouse/ce", "deckhouse//ce", 1),
			want: []fieldWant{{"upstream[0].path", `must be a repository path like deckhouse/ce, got "deckhouse//ce"`}},
		},
		{
			name: "bad upstream URL",
			text: strings.Replace(registrydOK, "https://registry.example", "http://registry.example", 1),
			want: []fieldWant{{"upstream[0].url", "plain http needs tls.insecure = true"}},
		},
		{
			name: "zero ttl",
			text: registrydOK + "ttl = \"0s\"\n",
			want: []fieldWant{{"upstream[0].ttl", "must be > 0, got 0s"}},
		},
		{
			name: "bad ttl",
			text: registrydOK + "ttl = \"7d\"\n",
			want: []fieldWant{{"upstream[0].ttl", `bad duration "7d"`}},
		},
		{
			name: "bad shutdown_timeout",
			text: "[server]\nshutdown_timeout = \"-1s\"\n" + registrydOK[len("\n[server]\n"):],
			want: []fieldWant{{"server.shutdown_timeout", "must not be negative"}},
		},
		{
			name: "bad log.level",
			text: registrydOK + "[log]\nlevel = \"verbose\"\n",
			want: []fieldWant{{"log.level", `must be one of debug, info, warn, error, got "verbose"`}},
		},
		{
			name: "explicit empty log.level is not defaulted",
			text: registrydOK + "[log]\nlevel = \"\"\n",
			want: []fieldWant{{"log.level", `got ""`}},
		},
		{
			name: "no [[upstream]]",
			text: registrydOK[:strings.Index(registrydOK, "[[upstream]]")],
			want: []fieldWant{{"upstream", "at least one [[upstream]] is required"}},
		},
		{
			name: "unknown key in the second upstream",
			text: registrydOK + "[[upstream]]\nurl = \"https://b.example\"\nlocal_prefix = \"b\"\nttl_ = \"1h\"\n",
			want: []fieldWant{{"upstream[1].ttl_", "unknown key"}},
		},
		{
			name:  "upstream credentials file too open",
			text:  registrydOK + "[upstream.auth]\ncredentials_file = \"creds\"\n",
			files: []file{{name: "creds", text: "u:" + secret, mode: 0o644}},
			want:  []fieldWant{{"upstream[0].auth.credentials_file", "has mode 0644"}},
		},
		{
			name: "several problems are all reported",
			text: `
[server]
listen = ":5001"
[metrics]
listen = ":5001"
[[upstream]]
url = "ftp://x"
local_prefix = "A"
[log]
level = "loud"
`,
			want: []fieldWant{
				{"server.tls_cert", "is required"},
				{"server.tls_key", "is required"},
				{"metrics.listen", "conflicts with server.listen"},
				{"storage.root", "is required"},
				{"upstream[0].url", "scheme must be https"},
				{"upstream[0].local_prefix", `got "A"`},
				{"log.level", `got "loud"`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, "registryd.toml", tt.text, append(append([]file(nil), registrydFiles...), tt.files...))
			r, err := LoadRegistryd(path)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadRegistryd: %v", err)
				}
				if tt.check != nil {
					tt.check(t, filepath.Dir(path), r)
				}
				return
			}
			if r != nil {
				t.Errorf("LoadRegistryd returned a config with an error")
			}
			checkErr(t, path, err, tt.want, nil)
		})
	}
}

func TestLoadInstall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		text  string
		want  []fieldWant
		check func(t *testing.T, in *Install)
	}{
		{
			name: "defaults",
			text: "",
			check: func(t *testing.T, in *Install) {
				want := Install{
					Mode:             "inprocess",
					HostRoot:         "/host",
					BinDir:           "/opt/hopless/bin",
					ConfDir:          "/etc/hopless",
					ContainerdConfig: "/etc/containerd/config.toml",
					HostsDir:         "/etc/containerd/registry.d",
					NRIPluginDir:     "/opt/nri/plugins",
					NRIConfDir:       "/etc/nri/conf.d",
					NRIIndex:         "10",
				}
				if *in != want {
					t.Errorf("got %+v, want %+v", *in, want)
				}
			},
		},
		{
			name: "explicit values kept",
			text: "mode = \"stock\"\nhost_root = \"/\"\nnri_index = \"05\"\n",
			check: func(t *testing.T, in *Install) {
				if in.Mode != "stock" || in.HostRoot != "/" || in.NRIIndex != "05" || in.BinDir != "/opt/hopless/bin" {
					t.Errorf("got %+v", *in)
				}
			},
		},
		{
			name: "bad mode",
			text: "mode = \"sidecar\"\n",
			want: []fieldWant{{"mode", `must be inprocess or stock, got "sidecar"`}},
		},
		{
			name: "explicit empty mode",
			text: "mode = \"\"\n",
			want: []fieldWant{{"mode", `must be inprocess or stock, got ""`}},
		},
		{
			name: "relative path",
			text: "bin_dir = \"opt/hopless/bin\"\n",
			want: []fieldWant{{"bin_dir", `must be a clean absolute path, got "opt/hopless/bin"`}},
		},
		{
			name: "unclean path",
			text: "hosts_dir = \"/etc/containerd/../registry.d/\"\n",
			want: []fieldWant{{"hosts_dir", "must be a clean absolute path"}},
		},
		{
			name: "nri_index one digit",
			text: "nri_index = \"1\"\n",
			want: []fieldWant{{"nri_index", `must be two digits, got "1"`}},
		},
		{
			name: "nri_index three digits",
			text: "nri_index = \"100\"\n",
			want: []fieldWant{{"nri_index", `must be two digits, got "100"`}},
		},
		{
			name: "nri_index not digits",
			text: "nri_index = \"1a\"\n",
			want: []fieldWant{{"nri_index", `must be two digits, got "1a"`}},
		},
		{
			name: "nri_index as an integer",
			text: "nri_index = 10\n",
			want: []fieldWant{{"nri_index", "must be a string, got integer 10"}},
		},
		{
			name: "unknown key",
			text: "nri_idx = \"10\"\n",
			want: []fieldWant{{"nri_idx", "unknown key"}},
		},
		{
			name: "several problems are all reported",
			text: "mode = \"x\"\nconf_dir = \"etc\"\nnri_conf_dir = \"\"\nnri_index = \"\"\n",
			want: []fieldWant{
				{"mode", "must be inprocess or stock"},
				{"conf_dir", "must be a clean absolute path"},
				{"nri_conf_dir", "must be a clean absolute path"},
				{"nri_index", "must be two digits"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeConfig(t, "install.toml", tt.text, nil)
			in, err := LoadInstall(path)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadInstall: %v", err)
				}
				if tt.check != nil {
					tt.check(t, in)
				}
				return
			}
			checkErr(t, path, err, tt.want, nil)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, load := range map[string]func(string) error{
		"node.toml":      func(p string) error { _, err := LoadNode(p); return err },
		"registryd.toml": func(p string) error { _, err := LoadRegistryd(p); return err },
		"install.toml":   func(p string) error { _, err := LoadInstall(p); return err },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(dir, name)
			err := load(p)
			if !errdefs.IsNotFound(err) {
				t.Errorf("errdefs.IsNotFound(%v) = false, want true", err)
			}
			if errdefs.IsInvalidArgument(err) {
				t.Errorf("errdefs.IsInvalidArgument(%v) = true, want false", err)
			}
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Errorf("error %v does not name %s", err, p)
			}
		})
	}
}

func TestFieldError(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "node.toml", nodeOK+"weight = 0\n", nil)
	_, err := LoadNode(path)
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FieldError", err)
	}
	want := FieldError{File: path, Field: "registry[0].endpoint[1].weight", Msg: "must be > 0, got 0"}
	if *fe != want {
		t.Errorf("got %+v, want %+v", *fe, want)
	}
	if got := fe.Error(); got != path+": registry[0].endpoint[1].weight: must be > 0, got 0" {
		t.Errorf("Error() = %q", got)
	}
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("errors.Is(err, ErrInvalidArgument) = false")
	}
}

func TestReadCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		file     *file // nil: no file
		wantUser string
		wantPass string
		wantErr  string
	}{
		{
			name:     "user:pass",
			file:     &file{text: "user:" + secret + "\n", mode: 0o600},
			wantUser: "user",
			wantPass: secret,
		},
		{
			name:     "mode 0400",
			file:     &file{text: "user:" + secret, mode: 0o400},
			wantUser: "user",
			wantPass: secret,
		},
		{
			name:     "password containing a colon",
			file:     &file{text: "robot$ci:" + secret + ":x", mode: 0o600},
			wantUser: "robot$ci",
			wantPass: secret + ":x",
		},
		{
			name:    "mode 0644",
			file:    &file{text: "user:" + secret, mode: 0o644},
			wantErr: "mode 0644 is too open, want 0600",
		},
		{
			name:    "mode 0604",
			file:    &file{text: "user:" + secret, mode: 0o604},
			wantErr: "mode 0604 is too open",
		},
		{
			name:    "no colon",
			file:    &file{text: secret + "\n", mode: 0o600},
			wantErr: `want one line "username:password"`,
		},
		{
			name:    "empty user",
			file:    &file{text: ":" + secret, mode: 0o600},
			wantErr: `want one line "username:password"`,
		},
		{
			name:    "two lines",
			file:    &file{text: "user:" + secret + "\nuser2:" + secret + "\n", mode: 0o600},
			wantErr: `want one line "username:password"`,
		},
		{
			name:    "empty file",
			file:    &file{text: "", mode: 0o600},
			wantErr: `want one line "username:password"`,
		},
		{
			name:    "directory",
			file:    &file{dir: true},
			wantErr: "not a regular file",
		},
		{
			name:    "missing",
			wantErr: "no such file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, "creds")
			if tt.file != nil {
				f := *tt.file
				f.name = "creds"
				writeFiles(t, dir, []file{f})
			}
			user, pass, err := ReadCredentials(p)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ReadCredentials: %v", err)
				}
				if user != tt.wantUser || pass != tt.wantPass {
					t.Errorf("got %q, %q; want %q, %q", user, pass, tt.wantUser, tt.wantPass)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %q, %q and no error, want %q", user, pass, tt.wantErr)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantErr) || !strings.Contains(msg, p) {
				t.Errorf("error %q, want it to name %s and contain %q", msg, p, tt.wantErr)
			}
			if strings.Contains(msg, secret) {
				t.Errorf("error contains the password: %q", msg)
			}
			if user != "" || pass != "" {
				t.Errorf("got %q, %q with an error, want empty", user, pass)
			}
		})
	}
}
