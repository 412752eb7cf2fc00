package conf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
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
					Dial:               Duration{time.Second},
					ResponseHeader:     Duration{10 * time.Second},
					Stall:              Duration{5 * time.Second},
					HealthInterval:     Duration{time.Second},
					HealthTimeout:      Duration{ms(500)},
					HealthIdleInterval: Duration{30 * time.Second},
					HedgeMin:           Duration{ms(100)},
					HedgeMax:           Duration{time.Second},
				}
				if r.Timeouts != want {
					t.Errorf("Timeouts = %+v, want %+v", r.Timeouts, want)
				}
				if o := (Outlier{ConsecutiveFailures: 3, Consecutive5xx: 5, MaxEjectionPercent: 50, SlowStart: Duration{10 * time.Second}}); r.Outlier != o {
					t.Errorf("Outlier = %+v, want %+v", r.Outlier, o)
				}
				if h := (Hedge{BudgetPercent: 8, Burst: 1}); r.Hedge != h {
					t.Errorf("Hedge = %+v, want %+v", r.Hedge, h)
				}
				wantBody := Body{MinRate: 64 << 10, RelativeRate: 0.1, Warmup: Duration{2 * time.Second}, Window: Duration{2 * time.Second}, ResumeAttempts: 6}
				if r.Body != wantBody {
					t.Errorf("Body = %+v, want %+v", r.Body, wantBody)
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
			name: "health schedule and slow start",
			text: nodeOK + "[registry.timeouts]\nhealth_idle_interval = \"1m\"\n[registry.outlier]\nslow_start = \"30s\"\n",
			check: func(t *testing.T, _ string, n *Node) {
				r := n.Registries[0]
				if r.Timeouts.HealthIdleInterval.Duration != time.Minute || r.Outlier.SlowStart.Duration != 30*time.Second {
					t.Errorf("health_idle_interval %s, slow_start %s; want 1m and 30s", r.Timeouts.HealthIdleInterval, r.Outlier.SlowStart)
				}
			},
		},
		{
			name: "slow_start 0 is kept: off",
			text: nodeOK + "[registry.outlier]\nslow_start = \"0s\"\n",
			check: func(t *testing.T, _ string, n *Node) {
				if d := n.Registries[0].Outlier.SlowStart.Duration; d != 0 {
					t.Errorf("slow_start %s, want 0", d)
				}
			},
		},
		{
			name: "a health_interval above the default idle interval raises it",
			text: nodeOK + "[registry.timeouts]\nhealth_interval = \"30s\"\n",
			check: func(t *testing.T, _ string, n *Node) {
				if d := n.Registries[0].Timeouts.HealthIdleInterval.Duration; d != 30*time.Second {
					t.Errorf("health_idle_interval %s, want 30s, the health_interval", d)
				}
			},
		},
		{
			name: "full valid file, relative paths resolved against the config directory",
			text: fuzzNodeFull,
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
					Dial:               Duration{2 * time.Second},
					ResponseHeader:     Duration{4 * time.Second},
					Stall:              Duration{time.Minute},
					HealthInterval:     Duration{2 * time.Second},
					HealthTimeout:      Duration{2 * time.Second},
					HealthIdleInterval: Duration{30 * time.Second},
					HedgeMin:           Duration{time.Second},
					HedgeMax:           Duration{time.Second},
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
			name: "float of the wrong type",
			text: nodeOK + "[registry.body]\nrelative_rate = \"0.5\"\n",
			want: []fieldWant{{"registry[0].body.relative_rate", `must be a number, got string "0.5"`}},
		},
		{
			name: "float from an integer a float64 cannot hold",
			text: nodeOK + "[registry.body]\nrelative_rate = 9007199254740993\n",
			want: []fieldWant{{"registry[0].body.relative_rate", "integer 9007199254740993 is out of range"}},
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
		{
			// The decoder's message quotes the text, line break included.
			name: "syntax error quoting a line break stays on one line",
			text: nodeOK + "weight = 0b\n",
			want: []fieldWant{{"line 10", `not a binary number: '0b\n'`}},
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
			name: "hedge_max not below response_header",
			text: nodeOK + "[registry.timeouts]\nresponse_header = \"1s\"\nhedge_max = \"1s\"\n",
			want: []fieldWant{{"registry[0].timeouts.hedge_max", "must be < response_header (1s), got 1s"}},
		},
		{
			name: "outlier thresholds",
			text: nodeOK + "[registry.outlier]\nconsecutive_failures = 0\nconsecutive_5xx = 0\nmax_ejection_percent = 101\n",
			want: []fieldWant{
				{"registry[0].outlier.consecutive_failures", "must be >= 1, got 0"},
				{"registry[0].outlier.consecutive_5xx", "must be >= 1, got 0"},
				{"registry[0].outlier.max_ejection_percent", "must be 0..100, got 101"},
			},
		},
		{
			name: "hedge budget",
			text: nodeOK + "[registry.hedge]\nbudget_percent = -1\nburst = -2\n",
			want: []fieldWant{
				{"registry[0].hedge.budget_percent", "must be 0..100, got -1"},
				{"registry[0].hedge.burst", "must be >= 0, got -2"},
			},
		},
		{
			name: "body watchdog",
			text: nodeOK + "[registry.body]\nrelative_rate = 1.5\nwarmup = \"0s\"\nwindow = \"0s\"\nresume_attempts = -1\nmin_rate = \"1MiB\"\n",
			want: []fieldWant{
				{"registry[0].body.relative_rate", "must be >= 0 and < 1, got 1.5"},
				{"registry[0].body.warmup", "must be > 0, got 0s"},
				{"registry[0].body.window", "must be > 0, got 0s"},
				{"registry[0].body.resume_attempts", "must be >= 0, got -1"},
			},
		},
		{
			name: "relative_rate nan",
			text: nodeOK + "[registry.body]\nrelative_rate = nan\n",
			want: []fieldWant{{"registry[0].body.relative_rate", "must be >= 0 and < 1, got NaN"}},
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
		{
			name: "health_idle_interval < health_interval",
			text: nodeOK + "[registry.timeouts]\nhealth_interval = \"2s\"\nhealth_idle_interval = \"1s\"\n",
			want: []fieldWant{{"registry[0].timeouts.health_idle_interval", "must be >= health_interval (2s), got 1s"}},
		},
		{
			name: "health_idle_interval < default health_interval",
			text: nodeOK + "[registry.timeouts]\nhealth_idle_interval = \"500ms\"\n",
			want: []fieldWant{{"registry[0].timeouts.health_idle_interval", "must be >= health_interval (1s), got 500ms"}},
		},
		{
			name: "zero health_idle_interval",
			text: nodeOK + "[registry.timeouts]\nhealth_idle_interval = \"0s\"\n",
			want: []fieldWant{{"registry[0].timeouts.health_idle_interval", "must be > 0, got 0s"}},
		},
		{
			name: "negative slow_start",
			text: nodeOK + "[registry.outlier]\nslow_start = \"-1s\"\n",
			want: []fieldWant{{"registry[0].outlier.slow_start", `bad duration "-1s": must not be negative`}},
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

// peersStatic is a [peers] table with two static endpoints and the token file
// "peer-token"; a case appends keys of the second endpoint or more tables.
func peersStatic(self string) string {
	return `
[peers]
self = "` + self + `"
token_file = "peer-token"
[[peers.endpoint]]
url = "https://master-0.example"
[[peers.endpoint]]
url = "https://master-1.example"
`
}

// authToken is a complete [auth.token] table; its bundle is "token-ca.pem".
const authToken = `
[auth.token]
realm = "https://auth.example/token"
service = "registryd"
issuer = "auth.example"
rootcertbundle = "token-ca.pem"
`

// registrydFull sets every registryd key.
const registrydFull = `
[server]
listen = ":5001"
tls_cert = "tls/server.crt"
tls_key = "tls/server.key"
shutdown_timeout = "15s"

[metrics]
listen = ":9090"

[storage]
driver = "filesystem"
root = "/var/lib/registryd"
spool = "/var/spool/registryd"
max_bytes = "200GiB"
ttl = "72h"
evict_interval = "5m"
min_free = "10GiB"
spool_max_age = "30m"
scrub_interval = "10m"

[cache]
tag_ttl = "30s"
stale_after = "2s"
negative_ttl = "5s"
max_manifest_bytes = "8MiB"
fill_retries = 3
fill_backoff = "500ms"
prefetch_workers = 8

[[upstream]]
url = "https://registry.deckhouse.io"
local_prefix = "system/deckhouse"
path = "deckhouse/ee"
ns = ["registry.deckhouse.io", "registry.d8-system.svc:5001"]
max_concurrent = 0
max_retry_after = "2m"
[upstream.tls]
ca = "pki/upstream-ca.pem"
[upstream.auth]
credentials_file = "secrets/upstream-creds"
[upstream.timeouts]
dial = "1s"
response_header = "6s"
stall = "2s"

[[upstream]]
url = "https://mirror.example:5000"
local_prefix = "mirror"

[peers]
self = "https://10.0.0.1:5001"
token_file = "secrets/peer-token"
health_interval = "3s"
response_header = "7s"
stall = "5s"
endpoint = [
  { url = "https://10.0.0.1:5001", local = true },
  { url = "https://10.0.0.2:5001" },
  { url = "https://10.0.0.3:5001", weight = 2 },
]
[peers.tls]
ca = "pki/ca.pem"
cert = "pki/peer.crt"
key = "pki/peer.key"

[auth.token]
realm = "https://auth.example/token"
service = "registryd"
issuer = "auth.example"
rootcertbundle = "pki/token-ca.pem"

[api]
token_file = "secrets/api-token"

[log]
level = "warn"
`

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
				wantStorage := Storage{
					Driver:        "filesystem",
					Root:          filepath.Join(dir, "cache"),
					Spool:         filepath.Join(dir, "cache", "_spool"),
					TTL:           Duration{168 * time.Hour},
					EvictInterval: Duration{time.Minute},
					MaxBytesShare: 90,
					MinFree:       Space{Percent: 5},
					SpoolMaxAge:   Duration{time.Hour},
					ScrubRate:     16 << 20,
					ScrubInterval: Duration{time.Minute},
					EvictGrace:    Duration{DefaultEvictGrace},
				}
				if !reflect.DeepEqual(r.Storage, wantStorage) {
					t.Errorf("Storage = %+v, want %+v", r.Storage, wantStorage)
				}
				wantCache := Cache{
					TagTTL:           Duration{time.Minute},
					StaleAfter:       Duration{time.Second},
					NegativeTTL:      Duration{3 * time.Second},
					MaxManifestBytes: 4 << 20,
					FillRetries:      5,
					FillBackoff:      Duration{ms(200)},
					PrefetchWorkers:  4,
				}
				if r.Cache != wantCache {
					t.Errorf("Cache = %+v, want %+v", r.Cache, wantCache)
				}
				wantUp := []Upstream{{
					URL:           "https://registry.example",
					LocalPrefix:   "system/deckhouse",
					Path:          "deckhouse/ce",
					NS:            []string{"registry.example"},
					Timeouts:      UpstreamTimeouts{Dial: Duration{2 * time.Second}, ResponseHeader: Duration{4 * time.Second}, Stall: Duration{3 * time.Second}},
					MaxConcurrent: 64,
					MaxRetryAfter: Duration{30 * time.Second},
				}}
				if !reflect.DeepEqual(r.Upstream, wantUp) {
					t.Errorf("Upstream = %+v, want %+v", r.Upstream, wantUp)
				}
				wantPeers := Peers{HealthInterval: Duration{2 * time.Second}, ResponseHeader: Duration{5 * time.Second}, Stall: Duration{4 * time.Second}}
				if !reflect.DeepEqual(r.Peers, wantPeers) {
					t.Errorf("Peers = %+v, want %+v", r.Peers, wantPeers)
				}
				if r.Auth != (ClientAuth{}) || r.API != (API{PinTTL: Duration{10 * time.Minute}, MaxPinSources: 10000}) {
					t.Errorf("Auth %+v, API %+v; want no auth, no API files, pin defaults", r.Auth, r.API)
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
ttl = "24h"

[[upstream]]
url = "https://registry.example"
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
				if r.Storage.TTL.Duration != 24*time.Hour || r.Storage.Spool != "/var/lib/registryd/_spool" {
					t.Errorf("Storage = %+v", r.Storage)
				}
				if u.LocalPrefix != "system/deckhouse" || u.Path != "" || !reflect.DeepEqual(u.NS, []string{"registry.example"}) {
					t.Errorf("Upstream[0] = %+v", u)
				}
				if u.TLS.CA != filepath.Join(dir, "ca.pem") || u.Auth.CredentialsFile != filepath.Join(dir, "creds") {
					t.Errorf("Upstream[0] paths not resolved: %+v", u)
				}
				if u := r.Upstream[1]; u.LocalPrefix != "mirror" || !reflect.DeepEqual(u.NS, []string{"mirror.local:8080"}) || !u.TLS.Insecure {
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
			name: "debug.pprof_listen off by default",
			text: registrydOK,
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Debug.PprofListen != "" {
					t.Errorf("Debug.PprofListen = %q, want empty", r.Debug.PprofListen)
				}
			},
		},
		{
			name: "debug.pprof_listen on loopback",
			text: registrydOK + "[debug]\npprof_listen = \"127.0.0.1:6060\"\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Debug.PprofListen != "127.0.0.1:6060" {
					t.Errorf("Debug.PprofListen = %q", r.Debug.PprofListen)
				}
			},
		},
		{
			name: "debug.pprof_listen on a wildcard address",
			text: registrydOK + "[debug]\npprof_listen = \":6060\"\n",
			want: []fieldWant{{"debug.pprof_listen", "must be a loopback IP address"}},
		},
		{
			name: "debug.pprof_listen on a routable address",
			text: registrydOK + "[debug]\npprof_listen = \"10.0.0.1:6060\"\n",
			want: []fieldWant{{"debug.pprof_listen", "must be a loopback IP address"}},
		},
		{
			name: "debug.pprof_listen on the server's port",
			text: registrydOK + "[debug]\npprof_listen = \"[::1]:5001\"\n",
			want: []fieldWant{{"debug.pprof_listen", "conflicts with server.listen"}},
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
			name: "allow_unprefixed is off unless set",
			text: registrydOK + "[[upstream]]\nurl = \"https://b.example\"\nlocal_prefix = \"b\"\nallow_unprefixed = true\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Upstream[0].AllowUnprefixed || !r.Upstream[1].AllowUnprefixed {
					t.Errorf("AllowUnprefixed = %v, %v; want false, true", r.Upstream[0].AllowUnprefixed, r.Upstream[1].AllowUnprefixed)
				}
			},
		},
		{
			name: "allow_unprefixed of the wrong type",
			text: registrydOK + "allow_unprefixed = \"yes\"\n",
			want: []fieldWant{{"upstream[0].allow_unprefixed", `must be true or false, got string "yes"`}},
		},
		{
			name: "bad upstream URL",
			text: strings.Replace(registrydOK, "https://registry.example", "http://registry.example", 1),
			want: []fieldWant{{"upstream[0].url", "plain http needs tls.insecure = true"}},
		},
		{
			name: "upstream ttl is unknown: the TTL is storage.ttl",
			text: registrydOK + "ttl = \"24h\"\n",
			want: []fieldWant{{"upstream[0].ttl", "unknown key"}},
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
		// Storage.
		{
			name: "storage.max_bytes as an integer",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = 1073741824", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.MaxBytes != 1<<30 {
					t.Errorf("MaxBytes = %d, want %d", r.Storage.MaxBytes, 1<<30)
				}
			},
		},
		{
			name: "storage.max_bytes as a size string",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = \"50GiB\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.MaxBytes != 50<<30 {
					t.Errorf("MaxBytes = %d, want %d", r.Storage.MaxBytes, int64(50)<<30)
				}
			},
		},
		{
			name: "storage.max_bytes 0 is unbounded",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = 0", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.MaxBytes != 0 || r.Storage.MaxBytesShare != 0 {
					t.Errorf("MaxBytes = %d, MaxBytesShare = %v; want 0 and no share of the filesystem", r.Storage.MaxBytes, r.Storage.MaxBytesShare)
				}
			},
		},
		{
			name: "storage.max_bytes set: no share of the filesystem",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = \"1GiB\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.MaxBytes != 1<<30 || r.Storage.MaxBytesShare != 0 {
					t.Errorf("MaxBytes = %d, MaxBytesShare = %v; want 1GiB and 0", r.Storage.MaxBytes, r.Storage.MaxBytesShare)
				}
			},
		},
		{
			name: "storage.min_free as a percentage",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = \"2.5%\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if want := (Space{Percent: 2.5}); r.Storage.MinFree != want {
					t.Errorf("MinFree = %+v, want %+v", r.Storage.MinFree, want)
				}
			},
		},
		{
			name: "storage.min_free as a size string",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = \"1GiB\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if want := (Space{Bytes: 1 << 30}); r.Storage.MinFree != want {
					t.Errorf("MinFree = %+v, want %+v", r.Storage.MinFree, want)
				}
			},
		},
		{
			name: "storage.min_free as an integer, 0 disables the floor",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = 0", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if !r.Storage.MinFree.IsZero() {
					t.Errorf("MinFree = %+v, want zero", r.Storage.MinFree)
				}
			},
		},
		{
			name: "storage.min_free of 100%",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = \"100%\"", 1),
			want: []fieldWant{{"storage.min_free", "must be below 100%, got 100%"}},
		},
		{
			name: "storage.min_free a bad percentage",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = \"-5%\"", 1),
			want: []fieldWant{{"storage.min_free", `bad share "-5%": want a percentage such as 5%`}},
		},
		{
			name: "storage.min_free a bad size",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = \"5GB\"", 1),
			want: []fieldWant{{"storage.min_free", `bad space "5GB": want a size such as 1GiB or a percentage such as 5%`}},
		},
		{
			name: "storage.min_free a negative integer",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = -1", 1),
			want: []fieldWant{{"storage.min_free", "must be >= 0, got -1"}},
		},
		{
			name: "storage.min_free a float",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmin_free = 0.5", 1),
			want: []fieldWant{{"storage.min_free", `must be a number of bytes, a size string such as "1GiB" or a percentage such as "5%", got float 0.5`}},
		},
		{
			name: "zero storage.spool_max_age",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nspool_max_age = \"0s\"", 1),
			want: []fieldWant{{"storage.spool_max_age", "must be > 0, got 0s"}},
		},
		{
			name: "bad storage.spool_max_age",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nspool_max_age = \"1d\"", 1),
			want: []fieldWant{{"storage.spool_max_age", `bad duration "1d"`}},
		},
		{
			name: "storage.scrub_rate as a size string",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_rate = \"4MiB\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.ScrubRate != 4<<20 {
					t.Errorf("ScrubRate = %d, want %d", r.Storage.ScrubRate, 4<<20)
				}
			},
		},
		{
			name: "storage.scrub_rate 0 disables the scrub",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_rate = \"0\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.ScrubRate != 0 {
					t.Errorf("ScrubRate = %d, want 0", r.Storage.ScrubRate)
				}
			},
		},
		{
			name: "bad storage.scrub_rate",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_rate = \"16MB\"", 1),
			want: []fieldWant{{"storage.scrub_rate", `bad size "16MB"`}},
		},
		{
			name: "negative storage.scrub_rate",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_rate = -1", 1),
			want: []fieldWant{{"storage.scrub_rate", "must be >= 0, got -1"}},
		},
		{
			name: "storage.scrub_interval kept",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_interval = \"2s\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.ScrubInterval.Duration != 2*time.Second {
					t.Errorf("ScrubInterval = %s, want 2s", r.Storage.ScrubInterval.Duration)
				}
			},
		},
		{
			name: "zero storage.scrub_interval",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_interval = \"0s\"", 1),
			want: []fieldWant{{"storage.scrub_interval", "must be > 0, got 0s"}},
		},
		{
			name: "negative storage.scrub_interval",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_interval = \"-1s\"", 1),
			want: []fieldWant{{"storage.scrub_interval", `bad duration "-1s": must not be negative`}},
		},
		{
			name: "bad storage.scrub_interval",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nscrub_interval = \"1d\"", 1),
			want: []fieldWant{{"storage.scrub_interval", `bad duration "1d"`}},
		},
		{
			name: "bad size string",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = \"50GB\"", 1),
			want: []fieldWant{{"storage.max_bytes", `bad size "50GB": want a whole number of bytes or one with a unit`}},
		},
		{
			name: "negative size string",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = \"-1MiB\"", 1),
			want: []fieldWant{{"storage.max_bytes", `bad size "-1MiB"`}},
		},
		{
			name: "size string too large",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = \"9000000TiB\"", 1),
			want: []fieldWant{{"storage.max_bytes", `bad size "9000000TiB": too large`}},
		},
		{
			name: "negative size integer",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = -1", 1),
			want: []fieldWant{{"storage.max_bytes", "must be >= 0, got -1"}},
		},
		{
			name: "size as a float",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nmax_bytes = 1.5", 1),
			want: []fieldWant{{"storage.max_bytes", `must be a number of bytes or a size string such as "256MiB", got float 1.5`}},
		},
		{
			name: "s3 driver with free-form parameters and a spool",
			text: strings.Replace(registrydOK, `root = "cache"`, `driver = "s3"
spool = "spool"
[storage.parameters]
bucket = "registry"
region = "us-east-1"
regionendpoint = "https://s3.example"
secure = true
chunksize = 10485760
[storage.parameters.credentials]
Type = "static"`, 1),
			check: func(t *testing.T, dir string, r *Registryd) {
				s := r.Storage
				if s.Driver != "s3" || s.Root != "" || s.Spool != filepath.Join(dir, "spool") {
					t.Errorf("Storage = %+v", s)
				}
				want := map[string]any{
					"bucket":         "registry",
					"region":         "us-east-1",
					"regionendpoint": "https://s3.example",
					"secure":         true,
					"chunksize":      int64(10485760),
					"credentials":    map[string]any{"Type": "static"},
				}
				if !reflect.DeepEqual(s.Parameters, want) {
					t.Errorf("Parameters = %#v, want %#v", s.Parameters, want)
				}
			},
		},
		{
			name: "storage.parameters not a table",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3\"\nspool = \"spool\"\nparameters = \"bucket=x\"", 1),
			want: []fieldWant{{"storage.parameters", `must be a table, got string "bucket=x"`}},
		},
		{
			name: "s3 driver is shared by default",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3\"\nspool = \"spool\"\nmaster_id = \"m-1.a\"\n[storage.parameters]\nbucket = \"registry\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if !r.Storage.Shared || r.Storage.MasterID != "m-1.a" || r.Storage.EvictGrace.Duration != DefaultEvictGrace {
					t.Errorf("Shared, MasterID, EvictGrace = %v, %q, %s; want true, m-1.a, %s", r.Storage.Shared, r.Storage.MasterID, r.Storage.EvictGrace.Duration, DefaultEvictGrace)
				}
			},
		},
		{
			name: "filesystem is not shared by default",
			text: registrydOK,
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.Shared {
					t.Error("Shared = true on the filesystem driver, want false")
				}
			},
		},
		{
			name: "shared storage with a short evict_grace",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nshared = true\nevict_grace = \"10s\"", 1),
			want: []fieldWant{{"storage.evict_grace", "must be at least 30s, got 10s"}},
		},
		{
			name: "shared storage with a bad master_id",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nshared = true\nmaster_id = \"../m1\"", 1),
			want: []fieldWant{{"storage.master_id", `must be 1-63 of letters, digits, '.', '_' and '-', starting with a letter or digit, got "../m1"`}},
		},
		{
			name: "s3 driver without spool",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3\"\n[storage.parameters]\nbucket = \"registry\"", 1),
			want: []fieldWant{{"storage.spool", `is required when driver is not filesystem, got driver "s3"`}},
		},
		{
			name: "explicit filesystem driver, default spool",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"filesystem\"\nroot = \"/srv/cache\"", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Storage.Spool != "/srv/cache/_spool" {
					t.Errorf("Spool = %q, want /srv/cache/_spool", r.Storage.Spool)
				}
			},
		},
		{
			name: "explicit spool kept and resolved",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nspool = \"fast/spool\"", 1),
			check: func(t *testing.T, dir string, r *Registryd) {
				if want := filepath.Join(dir, "fast/spool"); r.Storage.Spool != want {
					t.Errorf("Spool = %q, want %q", r.Storage.Spool, want)
				}
			},
		},
		{
			name: "explicit empty spool is not defaulted",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nspool = \"\"", 1),
			want: []fieldWant{{"storage.spool", "must not be empty"}},
		},
		{
			name: "bad storage driver",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3 aws\"\nspool = \"spool\"", 1),
			want: []fieldWant{{"storage.driver", `must be a driver name of letters, digits, - and _, got "s3 aws"`}},
		},
		{
			name: "explicit empty storage driver is not defaulted",
			text: strings.Replace(registrydOK, `root = "cache"`, "driver = \"\"\nspool = \"spool\"", 1),
			want: []fieldWant{{"storage.driver", `got ""`}},
		},
		{
			name: "missing storage.root names the driver",
			text: strings.Replace(registrydOK, `root = "cache"`, `driver = "filesystem"`, 1),
			want: []fieldWant{{"storage.root", "is required when driver is filesystem"}},
		},
		{
			name: "zero storage.ttl",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nttl = \"0s\"", 1),
			want: []fieldWant{{"storage.ttl", "must be > 0, got 0s"}},
		},
		{
			name: "bad storage.ttl",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nttl = \"7d\"", 1),
			want: []fieldWant{{"storage.ttl", `bad duration "7d"`}},
		},
		{
			name: "zero storage.evict_interval",
			text: strings.Replace(registrydOK, `root = "cache"`, "root = \"cache\"\nevict_interval = \"0s\"", 1),
			want: []fieldWant{{"storage.evict_interval", "must be > 0, got 0s"}},
		},

		// Cache.
		{
			name: "cache values kept, max_manifest_bytes as an integer, fill_retries 0",
			text: registrydOK + "[cache]\ntag_ttl = \"30s\"\nstale_after = \"500ms\"\nnegative_ttl = \"10s\"\nmax_manifest_bytes = 1024\nfill_retries = 0\nfill_backoff = \"1s\"\nprefetch_workers = 16\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				want := Cache{TagTTL: Duration{30 * time.Second}, StaleAfter: Duration{ms(500)}, NegativeTTL: Duration{10 * time.Second},
					MaxManifestBytes: 1024, FillBackoff: Duration{time.Second}, PrefetchWorkers: 16}
				if r.Cache != want {
					t.Errorf("Cache = %+v, want %+v", r.Cache, want)
				}
			},
		},
		{
			name: "cache.max_manifest_bytes as a size string",
			text: registrydOK + "[cache]\nmax_manifest_bytes = \"64MiB\"\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Cache.MaxManifestBytes != 64<<20 {
					t.Errorf("MaxManifestBytes = %d, want %d", r.Cache.MaxManifestBytes, 64<<20)
				}
			},
		},
		{
			name: "cache.max_manifest_bytes below 1KiB",
			text: registrydOK + "[cache]\nmax_manifest_bytes = 1023\n",
			want: []fieldWant{{"cache.max_manifest_bytes", "must be between 1KiB (1024) and 64MiB (67108864) bytes, got 1023"}},
		},
		{
			name: "cache.max_manifest_bytes above 64MiB",
			text: registrydOK + "[cache]\nmax_manifest_bytes = \"65MiB\"\n",
			want: []fieldWant{{"cache.max_manifest_bytes", "got 68157440"}},
		},
		{
			name: "cache.max_manifest_bytes of the wrong type",
			text: registrydOK + "[cache]\nmax_manifest_bytes = true\n",
			want: []fieldWant{{"cache.max_manifest_bytes", "must be a number of bytes or a size string"}},
		},
		{
			name: "zero cache.tag_ttl",
			text: registrydOK + "[cache]\ntag_ttl = \"0s\"\n",
			want: []fieldWant{{"cache.tag_ttl", "must be > 0, got 0s"}},
		},
		{
			name: "zero cache.stale_after and cache.negative_ttl",
			text: registrydOK + "[cache]\nstale_after = \"0s\"\nnegative_ttl = \"0s\"\n",
			want: []fieldWant{
				{"cache.stale_after", "must be > 0, got 0s"},
				{"cache.negative_ttl", "must be > 0, got 0s"},
			},
		},
		{
			name: "cache.stale_after not below the upstream's response_header",
			text: registrydOK + "[cache]\nstale_after = \"4s\"\n",
			want: []fieldWant{{"cache.stale_after", "must be < upstream[0].timeouts.response_header (4s), got 4s"}},
		},
		{
			name: "cache.stale_after checked against every upstream",
			text: registrydOK + "[cache]\nstale_after = \"2s\"\n" +
				"[[upstream]]\nurl = \"https://mirror.example\"\nlocal_prefix = \"mirror\"\n[upstream.timeouts]\nresponse_header = \"1500ms\"\n",
			want: []fieldWant{{"cache.stale_after", "must be < upstream[1].timeouts.response_header (1.5s), got 2s"}},
		},
		{
			name: "cache.stale_after below a raised upstream response_header",
			text: registrydOK + "[upstream.timeouts]\nresponse_header = \"6s\"\n[cache]\nstale_after = \"5s\"\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Cache.StaleAfter.Duration != 5*time.Second {
					t.Errorf("Cache.StaleAfter = %s, want 5s", r.Cache.StaleAfter)
				}
			},
		},
		{
			name: "negative cache.fill_retries",
			text: registrydOK + "[cache]\nfill_retries = -1\n",
			want: []fieldWant{{"cache.fill_retries", "must be between 0 and 100, got -1"}},
		},
		{
			name: "cache.fill_retries above 100",
			text: registrydOK + "[cache]\nfill_retries = 101\n",
			want: []fieldWant{{"cache.fill_retries", "must be between 0 and 100, got 101"}},
		},
		{
			name: "zero cache.fill_backoff",
			text: registrydOK + "[cache]\nfill_backoff = \"0s\"\n",
			want: []fieldWant{{"cache.fill_backoff", "must be > 0, got 0s"}},
		},
		{
			name: "zero cache.prefetch_workers",
			text: registrydOK + "[cache]\nprefetch_workers = 0\n",
			want: []fieldWant{{"cache.prefetch_workers", "must be between 1 and 256, got 0"}},
		},
		{
			name: "cache.prefetch_workers above 256",
			text: registrydOK + "[cache]\nprefetch_workers = 257\n",
			want: []fieldWant{{"cache.prefetch_workers", "must be between 1 and 256, got 257"}},
		},
		{
			name: "unknown key in cache",
			text: registrydOK + "[cache]\ntag_tl = \"1m\"\n",
			want: []fieldWant{{"cache.tag_tl", "unknown key"}},
		},

		// Upstream ns.
		{
			name: "ns defaults to the URL's host with its port",
			text: strings.Replace(registrydOK, "https://registry.example", "https://registry.example:5000", 1),
			check: func(t *testing.T, _ string, r *Registryd) {
				if want := []string{"registry.example:5000"}; !reflect.DeepEqual(r.Upstream[0].NS, want) {
					t.Errorf("NS = %q, want %q", r.Upstream[0].NS, want)
				}
			},
		},
		{
			name: "explicit ns kept",
			text: registrydOK + "ns = [\"registry.example\", \"registry.d8-system.svc:5001\"]\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if want := []string{"registry.example", "registry.d8-system.svc:5001"}; !reflect.DeepEqual(r.Upstream[0].NS, want) {
					t.Errorf("NS = %q, want %q", r.Upstream[0].NS, want)
				}
			},
		},
		{
			name: "explicit empty ns is not defaulted",
			text: registrydOK + "ns = []\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				if len(r.Upstream[0].NS) != 0 {
					t.Errorf("NS = %q, want empty", r.Upstream[0].NS)
				}
			},
		},
		{
			name: "bad ns",
			text: registrydOK + "ns = [\"registry.example\", \"https://registry.example\"]\n",
			want: []fieldWant{{"upstream[0].ns[1]", `bad image host "https://registry.example"`}},
		},
		{
			name: "empty ns value",
			text: registrydOK + "ns = [\"\"]\n",
			want: []fieldWant{{"upstream[0].ns[0]", "is required"}},
		},
		{
			name: "ns not an array",
			text: registrydOK + "ns = \"registry.example\"\n",
			want: []fieldWant{{"upstream[0].ns", `must be an array, got string "registry.example"`}},
		},
		{
			name: "ns value not a string",
			text: registrydOK + "ns = [5001]\n",
			want: []fieldWant{{"upstream[0].ns[0]", "must be a string, got integer 5001"}},
		},
		{
			name: "ns in two upstreams",
			text: registrydOK + "[[upstream]]\nurl = \"https://mirror.example\"\nlocal_prefix = \"mirror\"\nns = [\"mirror.example\", \"registry.example\"]\n",
			want: []fieldWant{{"upstream[1].ns[1]", `duplicate ns "registry.example", also upstream[0].ns[0]`}},
		},
		{
			name: "defaulted ns in two upstreams, differs in case",
			text: registrydOK + "[[upstream]]\nurl = \"https://Registry.Example\"\nlocal_prefix = \"mirror\"\n",
			want: []fieldWant{{"upstream[1].ns[0]", `duplicate ns "Registry.Example", also upstream[0].ns[0]`}},
		},
		{
			name: "ns repeated in one upstream",
			text: registrydOK + "ns = [\"a.example\", \"a.example\"]\n",
			want: []fieldWant{{"upstream[0].ns[1]", `duplicate ns "a.example", also upstream[0].ns[0]`}},
		},

		// Peers.
		{
			name:  "static peers, self matches an endpoint canonically",
			text:  registrydOK + peersStatic("https://Master-0.example:443") + "weight = 2\n",
			files: []file{{name: "peer-token", text: "t"}},
			check: func(t *testing.T, dir string, r *Registryd) {
				want := Peers{
					Self: "https://Master-0.example:443",
					Endpoints: []Endpoint{
						{URL: "https://master-0.example", Weight: 1},
						{URL: "https://master-1.example", Weight: 2},
					},
					TokenFile:      filepath.Join(dir, "peer-token"),
					HealthInterval: Duration{2 * time.Second},
					ResponseHeader: Duration{5 * time.Second},
					Stall:          Duration{4 * time.Second},
				}
				if !reflect.DeepEqual(r.Peers, want) {
					t.Errorf("Peers = %+v, want %+v", r.Peers, want)
				}
			},
		},
		{
			name: "absolute peers.token_file is not resolved",
			text: registrydOK + `
[peers]
self = "https://10.0.0.1:5001"
dns = "registryd.d8-system.svc.cluster.local"
port = 5001
token_file = "/abs/peer-token"
health_interval = "5s"
`,
			files: []file{{name: "abs/peer-token", text: "t"}},
			want:  []fieldWant{{"peers.token_file", "/abs/peer-token not found"}},
		},
		{
			name:  "peers via dns, relative token file",
			text:  registrydOK + "[peers]\nself = \"https://10.0.0.1:5001\"\ndns = \"registryd.d8-system.svc\"\nport = 5001\ntoken_file = \"peer-token\"\nhealth_interval = \"5s\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			check: func(t *testing.T, dir string, r *Registryd) {
				p := r.Peers
				if p.DNS != "registryd.d8-system.svc" || p.Port != 5001 || p.TokenFile != filepath.Join(dir, "peer-token") || p.HealthInterval.Duration != 5*time.Second {
					t.Errorf("Peers = %+v", p)
				}
			},
		},
		{
			name: "peers without token_file and self",
			text: registrydOK + "[[peers.endpoint]]\nurl = \"https://10.0.0.1:5001\"\n",
			want: []fieldWant{
				{"peers.token_file", "is required when peers are configured"},
				{"peers.self", "is required when peers are configured"},
			},
		},
		{
			name: "dns peers without token_file and self",
			text: registrydOK + "[peers]\ndns = \"registryd\"\nport = 5001\n",
			want: []fieldWant{
				{"peers.token_file", "is required when peers are configured"},
				{"peers.self", "is required when peers are configured"},
			},
		},
		{
			name:  "peers.token_file too open",
			text:  registrydOK + peersStatic("https://master-0.example"),
			files: []file{{name: "peer-token", text: secret, mode: 0o640}},
			want:  []fieldWant{{"peers.token_file", "has mode 0640, want 0600 or stricter"}},
		},
		{
			name: "peers.token_file missing",
			text: registrydOK + peersStatic("https://master-0.example"),
			want: []fieldWant{{"peers.token_file", "peer-token not found"}},
		},
		{
			name:  "peers.token_file is a directory",
			text:  registrydOK + peersStatic("https://master-0.example"),
			files: []file{{name: "peer-token", dir: true}},
			want:  []fieldWant{{"peers.token_file", "is not a regular file"}},
		},
		{
			name:  "peers.self not among the endpoints",
			text:  registrydOK + peersStatic("https://master-2.example"),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.self", `"https://master-2.example" is not the URL of any [[peers.endpoint]]`}},
		},
		{
			name:  "peers.self with a path",
			text:  registrydOK + peersStatic("https://master-0.example/v2"),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.self", "want scheme://host[:port] only"}},
		},
		{
			name:  "peers.self plain http without peers.tls.insecure",
			text:  registrydOK + "[peers]\nself = \"http://10.0.0.1:5001\"\ndns = \"registryd\"\nport = 5001\ntoken_file = \"peer-token\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.self", "plain http needs tls.insecure = true"}},
		},
		{
			name:  "plain http peers with peers.tls.insecure",
			text:  registrydOK + strings.ReplaceAll(peersStatic("http://master-0.example"), "https://", "http://") + "[peers.tls]\ninsecure = true\n",
			files: []file{{name: "peer-token", text: "t"}},
			check: func(t *testing.T, _ string, r *Registryd) {
				if !r.Peers.TLS.Insecure || r.Peers.Endpoints[0].URL != "http://master-0.example" {
					t.Errorf("Peers = %+v", r.Peers)
				}
			},
		},
		{
			name:  "peer endpoint weight 0, bad URL and duplicate",
			text:  registrydOK + peersStatic("https://master-0.example") + "weight = 0\n[[peers.endpoint]]\nurl = \"10.0.0.3\"\n[[peers.endpoint]]\nurl = \"https://master-0.example:443\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want: []fieldWant{
				{"peers.endpoint[1].weight", "must be > 0, got 0"},
				{"peers.endpoint[2].url", `bad URL "10.0.0.3"`},
				{"peers.endpoint[3].url", `duplicate endpoint "https://master-0.example:443", also endpoint[0]`},
			},
		},
		{
			name:  "peer endpoint and dns together",
			text:  registrydOK + strings.Replace(peersStatic("https://master-0.example"), "[peers]\n", "[peers]\ndns = \"registryd\"\nport = 5001\n", 1),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.dns", "is mutually exclusive with [[peers.endpoint]]"}},
		},
		{
			name:  "peers.dns with a port",
			text:  registrydOK + "[peers]\nself = \"https://10.0.0.1:5001\"\ndns = \"registryd.svc:5001\"\nport = 5001\ntoken_file = \"peer-token\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.dns", `bad DNS name "registryd.svc:5001": want a host name such as registryd.d8-system.svc, without port`}},
		},
		{
			name:  "peers.dns a URL",
			text:  registrydOK + "[peers]\nself = \"https://10.0.0.1:5001\"\ndns = \"https://registryd\"\nport = 5001\ntoken_file = \"peer-token\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.dns", `bad DNS name "https://registryd"`}},
		},
		{
			name:  "peers.dns without port",
			text:  registrydOK + "[peers]\nself = \"https://10.0.0.1:5001\"\ndns = \"registryd\"\ntoken_file = \"peer-token\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.port", "must be 1-65535 when dns is set, got 0"}},
		},
		{
			name:  "peers.port out of range",
			text:  registrydOK + "[peers]\nself = \"https://10.0.0.1:5001\"\ndns = \"registryd\"\nport = 65536\ntoken_file = \"peer-token\"\n",
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.port", "must be 1-65535 when dns is set, got 65536"}},
		},
		{
			name:  "peers.port without dns",
			text:  registrydOK + strings.Replace(peersStatic("https://master-0.example"), "[peers]\n", "[peers]\nport = 5001\n", 1),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.port", "is only used with dns, which is not set"}},
		},
		{
			name:  "peers.tls files are checked",
			text:  registrydOK + peersStatic("https://master-0.example") + "[peers.tls]\nca = \"peer-ca.pem\"\ncert = \"peer.crt\"\n",
			files: []file{{name: "peer-token", text: "t"}, {name: "peer.crt", text: "cert"}},
			want: []fieldWant{
				{"peers.tls.ca", "peer-ca.pem not found"},
				{"peers.tls.key", "is required when cert is set"},
			},
		},
		{
			name:  "peers.tls paths resolved",
			text:  registrydOK + peersStatic("https://master-0.example") + "[peers.tls]\nca = \"pki/ca.pem\"\ncert = \"pki/peer.crt\"\nkey = \"pki/peer.key\"\n",
			files: []file{{name: "peer-token", text: "t"}, {name: "pki/ca.pem", text: "ca"}, {name: "pki/peer.crt", text: "c"}, {name: "pki/peer.key", text: "k"}},
			check: func(t *testing.T, dir string, r *Registryd) {
				want := TLS{CA: filepath.Join(dir, "pki/ca.pem"), Cert: filepath.Join(dir, "pki/peer.crt"), Key: filepath.Join(dir, "pki/peer.key")}
				if r.Peers.TLS != want {
					t.Errorf("Peers.TLS = %+v, want %+v", r.Peers.TLS, want)
				}
			},
		},
		{
			name: "zero peers.health_interval",
			text: registrydOK + "[peers]\nhealth_interval = \"0s\"\n",
			want: []fieldWant{{"peers.health_interval", "must be > 0, got 0s"}},
		},
		{
			name: "unknown key in a peer endpoint",
			text: registrydOK + "[[peers.endpoint]]\nurl = \"https://10.0.0.1:5001\"\nwieght = 2\n",
			want: []fieldWant{{"peers.endpoint[0].wieght", "unknown key"}},
		},
		{
			name: "zero peers.response_header and peers.stall",
			text: registrydOK + "[peers]\nresponse_header = \"0s\"\nstall = \"0s\"\n",
			want: []fieldWant{
				{"peers.response_header", "must be > 0, got 0s"},
				{"peers.stall", "must be > 0, got 0s"},
			},
		},
		{
			name:  "peers.response_header not above the upstream's",
			text:  registrydOK + "[upstream.timeouts]\nresponse_header = \"5s\"\n" + peersStatic("https://master-0.example"),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.response_header", "must be > upstream[0].timeouts.response_header (5s), got 5s"}},
		},
		{
			name:  "peers.stall not above the upstream's",
			text:  registrydOK + "[upstream.timeouts]\nstall = \"4500ms\"\n" + peersStatic("https://master-0.example"),
			files: []file{{name: "peer-token", text: "t"}},
			want:  []fieldWant{{"peers.stall", "must be > upstream[0].timeouts.stall (4.5s), got 4s"}},
		},
		{
			name: "peer timeouts checked against every upstream",
			text: registrydOK + "[[upstream]]\nurl = \"https://mirror.example\"\nlocal_prefix = \"mirror\"\n" +
				"[upstream.timeouts]\nresponse_header = \"10s\"\nstall = \"10s\"\n" +
				peersStatic("https://master-0.example"),
			files: []file{{name: "peer-token", text: "t"}},
			want: []fieldWant{
				{"peers.response_header", "must be > upstream[1].timeouts.response_header (10s), got 5s"},
				{"peers.stall", "must be > upstream[1].timeouts.stall (10s), got 4s"},
			},
		},
		{
			name: "peer timeouts raised above the upstream's",
			text: registrydOK + "[upstream.timeouts]\nresponse_header = \"10s\"\nstall = \"10s\"\n" +
				strings.Replace(peersStatic("https://master-0.example"), "token_file", "response_header = \"11s\"\nstall = \"10500ms\"\ntoken_file", 1),
			files: []file{{name: "peer-token", text: "t"}},
			check: func(t *testing.T, _ string, r *Registryd) {
				if r.Peers.ResponseHeader.Duration != 11*time.Second || r.Peers.Stall.Duration != ms(10500) {
					t.Errorf("Peers.ResponseHeader %s, Stall %s; want 11s and 10.5s", r.Peers.ResponseHeader, r.Peers.Stall)
				}
			},
		},
		{
			name: "long upstream timeouts without peers",
			text: registrydOK + "[upstream.timeouts]\ndial = \"3s\"\nresponse_header = \"30s\"\nstall = \"20s\"\n",
			check: func(t *testing.T, _ string, r *Registryd) {
				want := UpstreamTimeouts{Dial: Duration{3 * time.Second}, ResponseHeader: Duration{30 * time.Second}, Stall: Duration{20 * time.Second}}
				if r.Upstream[0].Timeouts != want {
					t.Errorf("Upstream[0].Timeouts = %+v, want %+v", r.Upstream[0].Timeouts, want)
				}
			},
		},
		{
			name: "zero upstream timeouts",
			text: registrydOK + "[upstream.timeouts]\ndial = \"0s\"\nresponse_header = \"0s\"\nstall = \"0s\"\n",
			want: []fieldWant{
				{"upstream[0].timeouts.dial", "must be > 0, got 0s"},
				{"upstream[0].timeouts.response_header", "must be > 0, got 0s"},
				{"upstream[0].timeouts.stall", "must be > 0, got 0s"},
			},
		},
		{
			name: "unknown key in upstream.timeouts",
			text: registrydOK + "[upstream.timeouts]\nconnect = \"1s\"\n",
			want: []fieldWant{{"upstream[0].timeouts.connect", "unknown key"}},
		},
		{
			name: "negative upstream max_concurrent, zero max_retry_after",
			text: strings.Replace(registrydOK, "[[upstream]]\n", "[[upstream]]\nmax_concurrent = -1\nmax_retry_after = \"0s\"\n", 1),
			want: []fieldWant{
				{"upstream[0].max_concurrent", "must be >= 0 (0 is unbounded), got -1"},
				{"upstream[0].max_retry_after", "must be > 0, got 0s"},
			},
		},
		{
			name: "bad upstream max_retry_after",
			text: strings.Replace(registrydOK, "[[upstream]]\n", "[[upstream]]\nmax_retry_after = \"30\"\n", 1),
			want: []fieldWant{{"upstream[0].max_retry_after", `bad duration "30"`}},
		},

		// Client auth.
		{
			name:  "auth.htpasswd resolved",
			text:  registrydOK + "[auth]\nhtpasswd = \"htpasswd\"\n",
			files: []file{{name: "htpasswd", text: "u:$2y$05$x"}},
			check: func(t *testing.T, dir string, r *Registryd) {
				if want := filepath.Join(dir, "htpasswd"); r.Auth.Htpasswd != want {
					t.Errorf("Htpasswd = %q, want %q", r.Auth.Htpasswd, want)
				}
			},
		},
		{
			name: "auth.htpasswd missing",
			text: registrydOK + "[auth]\nhtpasswd = \"htpasswd\"\n",
			want: []fieldWant{{"auth.htpasswd", "htpasswd not found"}},
		},
		{
			name:  "auth.htpasswd and auth.token together",
			text:  registrydOK + "[auth]\nhtpasswd = \"htpasswd\"\n" + authToken,
			files: []file{{name: "htpasswd", text: "u:$2y$05$x"}, {name: "token-ca.pem", text: "ca"}},
			want:  []fieldWant{{"auth.token", "is mutually exclusive with auth.htpasswd"}},
		},
		{
			name: "auth.token incomplete",
			text: registrydOK + "[auth.token]\nservice = \"registryd\"\n",
			want: []fieldWant{
				{"auth.token.realm", "is required with token authentication"},
				{"auth.token.issuer", "is required with token authentication"},
				{"auth.token.rootcertbundle", "is required with token authentication"},
			},
		},
		{
			name:  "auth.token.realm plain http",
			text:  registrydOK + strings.Replace(authToken, "https://auth.example/token", "http://auth.example/token", 1),
			files: []file{{name: "token-ca.pem", text: "ca"}},
			want:  []fieldWant{{"auth.token.realm", `bad URL "http://auth.example/token": scheme must be https`}},
		},
		{
			name:  "auth.token.realm without host",
			text:  registrydOK + strings.Replace(authToken, "https://auth.example/token", "https:///token", 1),
			files: []file{{name: "token-ca.pem", text: "ca"}},
			want:  []fieldWant{{"auth.token.realm", "want https://host[:port][/path]"}},
		},
		{
			name: "auth.token.rootcertbundle missing",
			text: registrydOK + authToken,
			want: []fieldWant{{"auth.token.rootcertbundle", "token-ca.pem not found"}},
		},

		// API.
		{
			name:  "api.token_file resolved",
			text:  registrydOK + "[api]\ntoken_file = \"api-token\"\n",
			files: []file{{name: "api-token", text: secret, mode: 0o400}},
			check: func(t *testing.T, dir string, r *Registryd) {
				if want := filepath.Join(dir, "api-token"); r.API.TokenFile != want {
					t.Errorf("API.TokenFile = %q, want %q", r.API.TokenFile, want)
				}
			},
		},
		{
			name:  "api.token_file too open",
			text:  registrydOK + "[api]\ntoken_file = \"api-token\"\n",
			files: []file{{name: "api-token", text: secret, mode: 0o644}},
			want:  []fieldWant{{"api.token_file", "has mode 0644, want 0600 or stricter"}},
		},
		{
			name: "api.token_file missing",
			text: registrydOK + "[api]\ntoken_file = \"api-token\"\n",
			want: []fieldWant{{"api.token_file", "api-token not found"}},
		},
		{
			name:  "api pins settings",
			text:  registrydOK + "[api]\nnode_key_file = \"node.key\"\npin_ttl = \"1m\"\nmax_pin_sources = 50\n",
			files: []file{{name: "node.key", text: secret, mode: 0o600}},
			check: func(t *testing.T, dir string, r *Registryd) {
				want := API{NodeKeyFile: filepath.Join(dir, "node.key"), PinTTL: Duration{time.Minute}, MaxPinSources: 50}
				if r.API != want {
					t.Errorf("API = %+v, want %+v", r.API, want)
				}
			},
		},
		{
			name:  "api.node_key_file too open",
			text:  registrydOK + "[api]\nnode_key_file = \"node.key\"\n",
			files: []file{{name: "node.key", text: secret, mode: 0o640}},
			want:  []fieldWant{{"api.node_key_file", "has mode 0640, want 0600 or stricter"}},
		},
		{
			name: "api.pin_ttl too short",
			text: registrydOK + "[api]\npin_ttl = \"5s\"\n",
			want: []fieldWant{{"api.pin_ttl", "must be at least 10s, got 5s"}},
		},
		{
			name: "zero api.max_pin_sources",
			text: registrydOK + "[api]\nmax_pin_sources = 0\n",
			want: []fieldWant{{"api.max_pin_sources", "must be > 0, got 0"}},
		},

		// Everything.
		{
			name: "full valid registryd.toml with peers, auth and api",
			text: registrydFull,
			files: []file{
				{name: "pki/upstream-ca.pem", text: "ca"},
				{name: "secrets/upstream-creds", text: "u:" + secret},
				{name: "secrets/peer-token", text: "t"},
				{name: "pki/ca.pem", text: "ca"},
				{name: "pki/peer.crt", text: "c"},
				{name: "pki/peer.key", text: "k"},
				{name: "pki/token-ca.pem", text: "ca"},
				{name: "secrets/api-token", text: "t"},
			},
			check: func(t *testing.T, dir string, r *Registryd) {
				want := Registryd{
					Server: Server{
						Listen:          ":5001",
						TLSCert:         filepath.Join(dir, "tls/server.crt"),
						TLSKey:          filepath.Join(dir, "tls/server.key"),
						ShutdownTimeout: Duration{15 * time.Second},
					},
					Metrics: Metrics{Listen: ":9090"},
					Storage: Storage{
						Driver:        "filesystem",
						Root:          "/var/lib/registryd",
						Spool:         "/var/spool/registryd",
						MaxBytes:      200 << 30,
						TTL:           Duration{72 * time.Hour},
						EvictInterval: Duration{5 * time.Minute},
						MinFree:       Space{Bytes: 10 << 30},
						SpoolMaxAge:   Duration{30 * time.Minute},
						ScrubRate:     16 << 20,
						ScrubInterval: Duration{10 * time.Minute},
						EvictGrace:    Duration{DefaultEvictGrace},
					},
					Cache: Cache{
						TagTTL:           Duration{30 * time.Second},
						StaleAfter:       Duration{2 * time.Second},
						NegativeTTL:      Duration{5 * time.Second},
						MaxManifestBytes: 8 << 20,
						FillRetries:      3,
						FillBackoff:      Duration{ms(500)},
						PrefetchWorkers:  8,
					},
					Upstream: []Upstream{
						{
							URL:           "https://registry.deckhouse.io",
							LocalPrefix:   "system/deckhouse",
							Path:          "deckhouse/ee",
							NS:            []string{"registry.deckhouse.io", "registry.d8-system.svc:5001"},
							TLS:           TLS{CA: filepath.Join(dir, "pki/upstream-ca.pem")},
							Auth:          Auth{CredentialsFile: filepath.Join(dir, "secrets/upstream-creds")},
							Timeouts:      UpstreamTimeouts{Dial: Duration{time.Second}, ResponseHeader: Duration{6 * time.Second}, Stall: Duration{2 * time.Second}},
							MaxRetryAfter: Duration{2 * time.Minute},
						},
						{
							URL:           "https://mirror.example:5000",
							LocalPrefix:   "mirror",
							NS:            []string{"mirror.example:5000"},
							Timeouts:      UpstreamTimeouts{Dial: Duration{2 * time.Second}, ResponseHeader: Duration{4 * time.Second}, Stall: Duration{3 * time.Second}},
							MaxConcurrent: 64,
							MaxRetryAfter: Duration{30 * time.Second},
						},
					},
					Peers: Peers{
						Self: "https://10.0.0.1:5001",
						Endpoints: []Endpoint{
							{URL: "https://10.0.0.1:5001", Weight: 1, Local: true},
							{URL: "https://10.0.0.2:5001", Weight: 1},
							{URL: "https://10.0.0.3:5001", Weight: 2},
						},
						TokenFile: filepath.Join(dir, "secrets/peer-token"),
						TLS: TLS{
							CA:   filepath.Join(dir, "pki/ca.pem"),
							Cert: filepath.Join(dir, "pki/peer.crt"),
							Key:  filepath.Join(dir, "pki/peer.key"),
						},
						HealthInterval: Duration{3 * time.Second},
						ResponseHeader: Duration{7 * time.Second},
						Stall:          Duration{5 * time.Second},
					},
					Auth: ClientAuth{Token: TokenAuth{
						Realm:          "https://auth.example/token",
						Service:        "registryd",
						Issuer:         "auth.example",
						RootCertBundle: filepath.Join(dir, "pki/token-ca.pem"),
					}},
					API: API{TokenFile: filepath.Join(dir, "secrets/api-token"), PinTTL: Duration{10 * time.Minute}, MaxPinSources: 10000},
					Log: Log{Level: "warn"},
				}
				if !reflect.DeepEqual(*r, want) {
					t.Errorf("got\n%+v\nwant\n%+v", *r, want)
				}
			},
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
	// A value with a line break (a path, here) stays on the error's one line.
	fe = &FieldError{File: "nri.conf", Field: "pins_token_file", Msg: "file /etc/x\ny not found"}
	if got, want := fe.Error(), `nri.conf: pins_token_file: file /etc/x\ny not found`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
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
