package conf

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// fuzzName is the name the fuzz targets decode under: every error must start with it.
const fuzzName = "fuzz.toml"

// fuzzNodeFull is the "full valid file" of TestLoadNode, which reads it from here.
const fuzzNodeFull = `
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
`

// fuzzFiles creates the files that the seed configs name, in a new directory, and
// returns it with the content of its secret files. That content is random, so that no
// input can contain it: an error that does has read a file.
func fuzzFiles(f *testing.F) (dir, secret string) {
	f.Helper()
	secret = "user:" + rand.Text()
	dir = f.TempDir()
	public := []string{
		"ca.pem", "pki/ca.pem", "pki/client.pem", "pki/client.key", "pki/upstream-ca.pem",
		"pki/peer.crt", "pki/peer.key", "pki/token-ca.pem", "token-ca.pem", "tls/server.crt", "tls/server.key",
	}
	secrets := []string{
		"creds", "peer-token", "node.token", "secrets/upstream-creds", "secrets/peer-token", "secrets/api-token",
		"secrets/node-key", "s3/access", "s3/secret",
	}
	write := func(name, text string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			f.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			f.Fatal(err)
		}
	}
	for _, n := range public {
		write(n, "-----BEGIN CERTIFICATE-----\n", 0o644)
	}
	for _, n := range secrets {
		write(n, secret+"\n", 0o600)
	}
	// A secret file that others may read, whose refusal must not quote it.
	write("open-secret", secret+"\n", 0o644)
	return dir, secret
}

// leafErrors flattens the trees that errors.Join and %w build.
func leafErrors(err error) []error {
	switch e := err.(type) {
	case *FieldError:
		return []error{e}
	case interface{ Unwrap() []error }:
		var out []error
		for _, c := range e.Unwrap() {
			out = append(out, leafErrors(c)...)
		}
		return out
	}
	return []error{err}
}

// checkDecodeErr asserts what every decode error must be: an invalid argument whose
// every line starts with the file's name, that never quotes a secret file and, once
// the text is valid TOML, is made of field errors only.
func checkDecodeErr(t *testing.T, text string, err error, secret string) {
	t.Helper()
	msg := err.Error()
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("not an invalid argument: %q", msg)
	}
	if strings.Contains(msg, secret) {
		t.Fatalf("error quotes a secret file: %q", msg)
	}
	for _, l := range strings.Split(msg, "\n") {
		if !strings.HasPrefix(l, fuzzName+": ") {
			t.Errorf("error line %q does not name the file %s; error:\n%s", l, fuzzName, msg)
		}
	}
	validTOML := toml.Unmarshal([]byte(text), &map[string]any{}) == nil
	for _, e := range leafErrors(err) {
		var fe *FieldError
		if !errors.As(e, &fe) {
			if validTOML {
				t.Errorf("valid TOML, but the error %q names no field", e)
			}
			continue
		}
		if fe.File != fuzzName || fe.Field == "" || fe.Msg == "" {
			t.Errorf("field error %+v: want file %s, a field and a message", fe, fuzzName)
		}
	}
}

// reencode decodes the TOML encoding of an accepted config v again and checks that it
// is accepted as the same config; norm, when set, evens out what the encoding
// cannot carry.
func reencode[T any, P config[T]](t *testing.T, v *T, dir string, norm func(orig, again *T)) {
	t.Helper()
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(v); err != nil {
		t.Fatalf("encoding an accepted config: %v", err)
	}
	again, err := decodeText[T, P](fuzzName, b.String(), dir)
	if err != nil {
		t.Fatalf("an accepted config, encoded, is refused: %v\nencoded:\n%s", err, b.String())
	}
	if norm != nil {
		norm(v, again)
	}
	if !reflect.DeepEqual(v, again) {
		t.Fatalf("an accepted config, encoded and decoded again, differs:\n got %+v\nwant %+v\nencoded:\n%s", again, v, b.String())
	}
}

// checkEndpoints asserts the invariants of validated endpoints.
func checkEndpoints(t *testing.T, f string, eps []Endpoint, insecure bool) {
	t.Helper()
	locals := 0
	for j, e := range eps {
		u, err := url.Parse(e.URL)
		if err != nil || u.Hostname() == "" || (u.Scheme != "https" && (u.Scheme != "http" || !insecure)) {
			t.Errorf("%s.endpoint[%d].url %q accepted", f, j, e.URL)
		}
		if e.Weight <= 0 {
			t.Errorf("%s.endpoint[%d].weight %d accepted", f, j, e.Weight)
		}
		if e.Local {
			locals++
		}
	}
	if locals > 1 {
		t.Errorf("%s: %d local endpoints accepted", f, locals)
	}
}

func positive(t *testing.T, field string, ds ...Duration) {
	t.Helper()
	for i, d := range ds {
		if d.Duration <= 0 {
			t.Errorf("%s[%d] = %s accepted, want > 0", field, i, d.Duration)
		}
	}
}

func checkNode(t *testing.T, n *Node) {
	t.Helper()
	if len(n.Registries) == 0 {
		t.Error("no registries accepted")
	}
	for i, r := range n.Registries {
		f := fmt.Sprintf("registry[%d]", i)
		if err := CheckHost(r.Host); err != nil {
			t.Errorf("%s.host: %v", f, err)
		}
		if len(r.Endpoints) == 0 {
			t.Errorf("%s: no endpoints accepted", f)
		}
		checkEndpoints(t, f, r.Endpoints, r.TLS.Insecure)
		to := r.Timeouts
		positive(t, f+".timeouts", to.Dial, to.ResponseHeader, to.Stall, to.HealthInterval, to.HealthIdleInterval,
			to.HealthTimeout, to.HedgeMin, to.HedgeMax)
		if to.HedgeMin.Duration > to.HedgeMax.Duration || to.HedgeMax.Duration >= to.ResponseHeader.Duration ||
			to.HealthTimeout.Duration > to.HealthInterval.Duration || to.HealthIdleInterval.Duration < to.HealthInterval.Duration {
			t.Errorf("%s.timeouts out of order: %+v", f, to)
		}
		o := r.Outlier
		if o.ConsecutiveFailures < 1 || o.Consecutive5xx < 1 || o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 || o.SlowStart.Duration < 0 {
			t.Errorf("%s.outlier %+v accepted", f, o)
		}
		if h := r.Hedge; h.BudgetPercent < 0 || h.BudgetPercent > 100 || h.Burst < 0 {
			t.Errorf("%s.hedge %+v accepted", f, h)
		}
		b := r.Body
		if b.MinRate < 0 || !(b.RelativeRate >= 0 && b.RelativeRate < 1) || b.ResumeAttempts < 0 {
			t.Errorf("%s.body %+v accepted", f, b)
		}
		positive(t, f+".body", b.Warmup, b.Window)
		if (r.TLS.Cert == "") != (r.TLS.Key == "") {
			t.Errorf("%s.tls: cert %q without key %q accepted", f, r.TLS.Cert, r.TLS.Key)
		}
	}
}

func FuzzDecodeNode(f *testing.F) {
	dir, secret := fuzzFiles(f)
	for _, s := range []string{
		nodeOK,
		nodeOK + "[registry.tls]\nca = \"ca.pem\"\n",
		nodeOK + "[registry.auth]\ncredentials_file = \"creds\"\n",
		nodeOK + "[registry.auth]\ncredentials_file = \"open-secret\"\n",
		nodeOK + "[registry.timeouts]\nhealth_idle_interval = \"1m\"\n[registry.outlier]\nslow_start = \"30s\"\n",
		nodeOK + "[registry.body]\nmin_rate = \"1MiB\"\nrelative_rate = 0.5\nwarmup = \"1s\"\n",
		nodeOK + "weight = 0\n",
		fuzzNodeFull,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		n, err := DecodeNode(fuzzName, text, dir)
		if err != nil {
			if n != nil {
				t.Error("a config returned with an error")
			}
			checkDecodeErr(t, text, err, secret)
			return
		}
		checkNode(t, n)
		reencode[Node](t, n, dir, nil)
	})
}

func FuzzDecodeRegistryd(f *testing.F) {
	dir, secret := fuzzFiles(f)
	s3 := strings.Replace(registrydOK, `root = "cache"`, "driver = \"s3\"\nspool = \"spool\"\n[storage.parameters]\nbucket = \"b\"\n", 1)
	for _, s := range []string{
		registrydOK,
		registrydFull,
		registrydOK + peersStatic("https://master-0.example"),
		registrydOK + authToken,
		registrydOK + "[api]\ntoken_file = \"secrets/api-token\"\nnode_key_file = \"open-secret\"\n",
		s3 + "accesskey_file = \"s3/access\"\nsecretkey_file = \"s3/secret\"\n",
		s3 + "secretkey_file = \"open-secret\"\n",
		registrydOK + "[debug]\npprof_listen = \"127.0.0.1:6060\"\n[metrics]\nlisten = \":9090\"\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := decodeText[Registryd](fuzzName, text, dir)
		if err != nil {
			if r != nil {
				t.Error("a config returned with an error")
			}
			checkDecodeErr(t, text, err, secret)
			return
		}
		if _, err := checkURL(r.Peers.Self, r.Peers.TLS.Insecure); r.Peers.Self != "" && err != nil {
			t.Errorf("peers.self: %v", err)
		}
		checkEndpoints(t, "peers", r.Peers.Endpoints, r.Peers.TLS.Insecure)
		s := r.Storage
		if s.MaxBytes < 0 || s.ScrubRate < 0 || s.MinFree.Bytes < 0 ||
			!(s.MinFree.Percent >= 0 && s.MinFree.Percent < 100) || (s.MinFree.Percent > 0 && s.MinFree.Bytes != 0) {
			t.Errorf("storage %+v accepted", s)
		}
		positive(t, "storage", s.TTL, s.EvictInterval, s.SpoolMaxAge, s.ScrubInterval)
		c := r.Cache
		if c.MaxManifestBytes < minManifestBytes || c.MaxManifestBytes > maxManifestBytes || c.FillRetries < 0 || c.PrefetchWorkers < 1 {
			t.Errorf("cache %+v accepted", c)
		}
		positive(t, "cache", c.TagTTL, c.StaleAfter, c.NegativeTTL, c.FillBackoff)
		if len(r.Upstream) == 0 {
			t.Error("no upstream accepted")
		}
		for i, u := range r.Upstream {
			if _, err := checkURL(u.URL, u.TLS.Insecure); err != nil {
				t.Errorf("upstream[%d].url: %v", i, err)
			}
			positive(t, fmt.Sprintf("upstream[%d]", i), u.Timeouts.Dial, u.Timeouts.ResponseHeader, u.Timeouts.Stall, u.MaxRetryAfter)
			if u.MaxConcurrent < 0 {
				t.Errorf("upstream[%d].max_concurrent %d accepted", i, u.MaxConcurrent)
			}
		}
		positive(t, "server", r.Server.ShutdownTimeout)
		positive(t, "peers", r.Peers.HealthInterval, r.Peers.ResponseHeader, r.Peers.Stall)
		reencode[Registryd](t, r, dir, func(orig, again *Registryd) {
			// The share applies when max_bytes is left out, which an encoding never does.
			again.Storage.MaxBytesShare = orig.Storage.MaxBytesShare
		})
	})
}

func FuzzDecodeInstall(f *testing.F) {
	dir, secret := fuzzFiles(f)
	fileOK := "\n[[file]]\nsource = \"ca.pem\"\ndest = \"/etc/hopless/ca.pem\"\n"
	for _, s := range []string{
		installHead,
		installHead + fileOK,
		`node_name = "worker-1"
[containerd]
config = "/etc/k3s/containerd/config.toml"
imports_dir = "/etc/k3s/containerd/conf.d"
socket = "/run/k3s/containerd/containerd.sock"
unit = "k3s-agent.service"
restart_timeout = "1s"
` + installHead + `
[[file]]
source = "/abs/node.key"
dest = "/etc/hopless/node.key"
mode = "0600"
[nri]
plugin = "preinstalled"
index = "05"
plugin_dir = "/opt/nri/p"
conf_dir = "/etc/nri/c"
hosts = "off"
metrics_listen = "127.0.0.1:9761"
node_key_file = "node.key"
state_dir = "/var/lib/x"
log_level = "debug"
`,
		installHead + "[registry.auth]\ncredentials_file = \"/etc/hopless/creds\"\n" + fileOK,
		installHead + "[containerd]\nmetrics_address = \":1338\"\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		in, err := decodeText[Install](fuzzName, text, dir)
		if err != nil {
			if in != nil {
				t.Error("a config returned with an error")
			}
			checkDecodeErr(t, text, err, secret)
			return
		}
		if in.Containerd.RestartTimeout.Duration < time.Second {
			t.Errorf("containerd.restart_timeout %s accepted", in.Containerd.RestartTimeout)
		}
		for i, fl := range in.Files {
			if m, err := ParseFileMode(fl.Mode); err != nil || m > 0o777 {
				t.Errorf("file[%d].mode %q accepted", i, fl.Mode)
			}
			if !filepath.IsAbs(fl.Dest) {
				t.Errorf("file[%d].dest %q accepted", i, fl.Dest)
			}
		}
		// node.toml is written from the tables: they must be the registries.
		if len(in.RegistryTables) != len(in.Registries) {
			t.Fatalf("%d registries but %d registry tables", len(in.Registries), len(in.RegistryTables))
		}
		for i, r := range in.Registries {
			if r.Host == "" || in.RegistryTables[i]["host"] != r.Host {
				t.Errorf("registry[%d].host %q, table's %v", i, r.Host, in.RegistryTables[i]["host"])
			}
		}
		reencode[Install](t, in, dir, func(orig, again *Install) {
			// The tables are as written, which the encoding of the decoded config is not.
			again.RegistryTables = orig.RegistryTables
		})
	})
}

func FuzzDecodeNRI(f *testing.F) {
	dir, secret := fuzzFiles(f)
	for _, s := range []string{
		"node_config = \"node.toml\"\n",
		nriEverything,
		"node_config = \"n.toml\"\npins_token_file = \"open-secret\"\n",
		"node_config = \"n.toml\"\nconfig_path = \"/etc/containerd/certs.d\"\nstate_dir = \"/etc/containerd/certs.d/hopless\"\n",
		"node_config = \"n.toml\"\nkubeconfig = \"kube/config\"\nlog_file = \"/var/log/hopless-nri.log\"\nhosts = \"off\"\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		n, err := DecodeNRI(fuzzName, text, dir)
		if err != nil {
			if n != nil {
				t.Error("a config returned with an error")
			}
			checkDecodeErr(t, text, err, secret)
			return
		}
		if n.NodeConfig == "" || !filepath.IsAbs(n.ConfigPath) || !filepath.IsAbs(n.StateDir) || !filepath.IsAbs(n.ContainerdSocket) {
			t.Errorf("accepted %+v", n)
		}
		if n.Hosts != HostsAuto && n.Hosts != HostsManage && n.Hosts != HostsOff {
			t.Errorf("hosts %q accepted", n.Hosts)
		}
		if isUnder(n.StateDir, n.ConfigPath) || filepath.Clean(n.StateDir) == filepath.Clean(n.ConfigPath) {
			t.Errorf("state_dir %q under config_path %q accepted", n.StateDir, n.ConfigPath)
		}
		reencode[NRI](t, n, dir, nil)
	})
}

// refSize is ParseSize done in arbitrary precision: ok false for a string it must
// refuse, big the value otherwise (which may not fit).
func refSize(s string) (v *big.Int, ok bool) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if rest, cut := strings.CutSuffix(t, u.suffix); cut {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, ok := new(big.Int).SetString(t, 10)
	if !ok || n.Sign() < 0 {
		return nil, false
	}
	return n.Mul(n, big.NewInt(mult)), true
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{
		"512", "512B", "64KiB", "256MiB", "50GiB", "1TiB", " 4 MiB ", "0", "-1", "-0", "+7",
		"9223372036854775807", "9223372036854775808", "8388607TiB", "8388608TiB", "1.5GiB", "1GB", "KiB", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		z, err := ParseSize(s)
		want, ok := refSize(s)
		fits := ok && want.IsInt64()
		if err != nil {
			if fits {
				t.Fatalf("ParseSize(%q) = %v, want %s", s, err, want)
			}
			if z != 0 {
				t.Errorf("ParseSize(%q) = %d with an error", s, z)
			}
			return
		}
		if !fits || int64(z) != want.Int64() {
			t.Fatalf("ParseSize(%q) = %d, want an error or %v (ok %v)", s, z, want, ok)
		}
		if z < 0 {
			t.Fatalf("ParseSize(%q) = %d < 0", s, z)
		}
		text, _ := z.MarshalText()
		var again Size
		if err := again.UnmarshalText(text); err != nil || again != z {
			t.Fatalf("%d written as %q reads back as %d, %v", z, text, again, err)
		}
	})
}

func FuzzParseSpace(f *testing.F) {
	for _, s := range []string{
		"5%", "0.5%", " 5 % ", "0%", "-0%", "100%", "1e308%", "1e309%", "NaN%", "Inf%", "-1%", "0x1p-2%",
		"1GiB", "1073741824", "10GiB", "8388608TiB", "%", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSpace(s)
		var fromTOML Space
		tomlErr := fromTOML.UnmarshalTOML(s)
		if (err == nil) != (tomlErr == nil) || v != fromTOML {
			t.Fatalf("ParseSpace(%q) = %v, %v but UnmarshalTOML %v, %v", s, v, err, fromTOML, tomlErr)
		}
		if err != nil {
			if !v.IsZero() {
				t.Errorf("ParseSpace(%q) = %+v with an error", s, v)
			}
			return
		}
		if v.Bytes < 0 || v.Percent < 0 || math.IsNaN(v.Percent) || math.IsInf(v.Percent, 0) || (v.Percent > 0 && v.Bytes != 0) {
			t.Fatalf("ParseSpace(%q) = %+v", s, v)
		}
		if !strings.HasSuffix(strings.TrimSpace(s), "%") {
			if z, err := ParseSize(s); err != nil || z != v.Bytes {
				t.Fatalf("ParseSpace(%q) = %+v but ParseSize %d, %v", s, v, z, err)
			}
		}
		again, err := ParseSpace(v.String())
		if err != nil || again != v {
			t.Fatalf("%+v written as %q reads back as %+v, %v", v, v.String(), again, err)
		}
		if text, _ := v.MarshalText(); string(text) != v.String() {
			t.Fatalf("MarshalText %q, String %q", text, v.String())
		}
	})
}

func FuzzParseFileMode(f *testing.F) {
	for _, s := range []string{"0644", "0600", "644", "0", "777", "0777", "1000", "0o644", "+644", "-1", "8", "", "00000000000000000000644"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseFileMode(s)
		want, ok := new(big.Int).SetString(s, 8)
		valid := ok && s != "" && strings.Trim(s, "01234567") == "" && want.Cmp(big.NewInt(0o777)) <= 0
		if (err == nil) != valid {
			t.Fatalf("ParseFileMode(%q) = %#o, %v; want valid %v", s, m, err, valid)
		}
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(s)) {
				t.Errorf("error %q does not quote the mode", err)
			}
			return
		}
		if int64(m) != want.Int64() {
			t.Fatalf("ParseFileMode(%q) = %#o, want %#o", s, m, want)
		}
		if again, err := ParseFileMode(fmt.Sprintf("%04o", m)); err != nil || again != m {
			t.Fatalf("%#o written as %04o reads back as %#o, %v", m, m, again, err)
		}
	})
}

func FuzzDuration(f *testing.F) {
	for _, s := range []string{
		"500ms", "3s", "1h", "1m30s", "0", "0s", "-1s", "-0s", "1", "1.5h", ".5s", "2562047h47m16.854775807s",
		"2562047h47m16.854775808s", "1us", "1µs", "", "1d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var d Duration
		err := d.UnmarshalText([]byte(s))
		want, perr := time.ParseDuration(s)
		if valid := perr == nil && want >= 0; (err == nil) != valid {
			t.Fatalf("UnmarshalText(%q) = %v, want valid %v (ParseDuration %v, %v)", s, err, valid, want, perr)
		}
		if err != nil {
			if d.Duration != 0 {
				t.Errorf("UnmarshalText(%q) set %s with an error", s, d.Duration)
			}
			return
		}
		if d.Duration != want || d.Duration < 0 {
			t.Fatalf("UnmarshalText(%q) = %s, want %s", s, d.Duration, want)
		}
		text, _ := d.MarshalText()
		var again Duration
		if err := again.UnmarshalText(text); err != nil || again != d {
			t.Fatalf("%s written as %q reads back as %s, %v", d.Duration, text, again.Duration, err)
		}
		if !utf8.ValidString(s) {
			return
		}
		// The TOML decoder takes the same path, through the string it decoded.
		var b bytes.Buffer
		if err := toml.NewEncoder(&b).Encode(map[string]string{"d": s}); err != nil {
			t.Fatal(err)
		}
		var v struct {
			D Duration `toml:"d"`
		}
		if _, err := toml.Decode(b.String(), &v); err != nil || v.D != d {
			t.Fatalf("d = %q in TOML decodes as %s, %v; want %s", s, v.D.Duration, err, d.Duration)
		}
	})
}
