package hosts

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/conf"
)

// FuzzRender renders the hosts.toml of arbitrary registries and endpoint orders and
// checks that a rendered file says exactly what it was given, as TOML, and that a
// refused one is refused with an error that does not quote the credentials.
func FuzzRender(f *testing.F) {
	f.Add("registry.example", "https://10.0.0.1:5001", "", "", uint8(1), 1, 0, 0, int64(time.Second), false, "", "", "", "", false)
	f.Add("registry.d8-system.svc:5001", "https://10.0.0.3:5001", "https://10.0.0.1:5001", "https://10.0.0.2:5001", uint8(3), 1, 2, 3,
		int64(500*time.Millisecond), true, "/etc/hopless/ca.pem", "", "", "", false)
	f.Add("registry.example:5000", "https://m1.example:5001", "https://[2001:db8::1]:5001", "", uint8(2), 1, 1, 0, int64(time.Second),
		false, "/etc/hopless/ca.pem", "/etc/hopless/node.pem", "/etc/hopless/node-key.pem", "hopless:s3cret\n", true)
	f.Add("registry.example", "https://10.0.0.1:5001", "", "", uint8(1), 1, 0, 0, int64(time.Second), true, "", "", "", "user:pa:ss", true)
	f.Add("registry.example", "http://10.0.0.1:5001/", "https://10.0.0.2:5001/", "", uint8(2), 1, 1, 0, int64(time.Second), true,
		"/etc/hopless/ca.pem", "", "", "", false)
	f.Add("registry.example", "https://10.0.0.1:5001", "", "", uint8(1), 1, 0, 0, int64(time.Second), true,
		"/etc/hop\"less\\x/ca\tπ.pem", "", "", "", false)
	f.Add("[::1]:5001", "https://a.example", "https://A.example", "", uint8(2), 1, 1, 0, int64(time.Second), false, "", "", "", "", false)
	f.Fuzz(func(t *testing.T, host, url1, url2, url3 string, n uint8, w1, w2, w3 int, dial int64, fallback bool,
		ca, cert, key, creds string, useCreds bool) {
		reg := conf.Registry{
			Host:     host,
			TLS:      conf.TLS{CA: ca, Cert: cert, Key: key},
			Timeouts: conf.Timeouts{Dial: conf.Duration{Duration: time.Duration(dial)}},
			Fallback: fallback,
		}
		var order []conf.Endpoint
		for i, u := range []string{url1, url2, url3}[:min(int(n), 3)] {
			order = append(order, conf.Endpoint{URL: u, Weight: []int{w1, w2, w3}[i]})
		}
		if useCreds {
			reg.Auth.CredentialsFile = filepath.Join(t.TempDir(), "credentials")
			if err := os.WriteFile(reg.Auth.CredentialsFile, []byte(creds), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out, err := Render(reg, order)
		if err != nil {
			if out != nil {
				t.Fatalf("Render returned %q with the error %v", out, err)
			}
			checkRenderErr(t, err, reg, order, creds)
			return
		}

		// The renderer's preconditions, checked independently.
		if err := conf.CheckHost(host); err != nil || strings.Contains(host, "..") {
			t.Errorf("image host %q rendered: %v", host, err)
		}
		if dial <= 0 || len(order) == 0 || (cert == "") != (key == "") {
			t.Errorf("rendered with dial %d, %d endpoints, cert %q, key %q", dial, len(order), cert, key)
		}
		for _, p := range []string{ca, cert, key} {
			if p != "" && (!filepath.IsAbs(p) || !utf8.ValidString(p)) {
				t.Errorf("path %q rendered", p)
			}
		}

		// Only the endpoints' URLs and their order count: the weights write nothing.
		again := slices.Clone(order)
		for i := range again {
			again[i].Weight, again[i].Local = -again[i].Weight-1, !again[i].Local
		}
		if out2, err := Render(reg, again); err != nil || !bytes.Equal(out, out2) {
			t.Errorf("other weights render differently: %v\n%s\n---\n%s", err, out, out2)
		}

		checkHostsTOML(t, out, reg, order, creds)
	})
}

// checkRenderErr asserts that a refusal names the image host and quotes no secret.
func checkRenderErr(t *testing.T, err error, reg conf.Registry, order []conf.Endpoint, creds string) {
	t.Helper()
	msg := err.Error()
	if prefix := fmt.Sprintf("hosts.toml of %q: ", reg.Host); !strings.HasPrefix(msg, prefix) {
		t.Errorf("error %q does not start with %q", msg, prefix)
	}
	if reg.Auth.CredentialsFile == "" {
		return
	}
	inputs := []string{reg.Host, reg.TLS.CA, reg.TLS.Cert, reg.TLS.Key, reg.Auth.CredentialsFile}
	for _, e := range order {
		inputs = append(inputs, e.URL)
	}
	for _, word := range strings.FieldsFunc(creds, func(r rune) bool { return r == ':' || unicode.IsSpace(r) }) {
		// A short word may be in the message by chance, and any word may be there as
		// part of the other inputs, which the message may quote.
		if len(word) < 6 || slices.ContainsFunc(inputs, func(s string) bool { return strings.Contains(s, word) }) {
			continue
		}
		if strings.Contains(msg, word) {
			t.Fatalf("error quotes %q of the credentials file: %q", word, msg)
		}
	}
}

// checkHostsTOML asserts that out is the hosts.toml of reg that lists exactly order:
// nothing else in any table.
func checkHostsTOML(t *testing.T, out []byte, reg conf.Registry, order []conf.Endpoint, creds string) {
	t.Helper()
	first, _, _ := strings.Cut(string(out), "\n")
	if first != Header(reg.Host) {
		t.Errorf("first line %q, want %q", first, Header(reg.Host))
	}
	var doc map[string]any
	md, err := toml.Decode(string(out), &doc)
	if err != nil {
		t.Fatalf("rendered hosts.toml is not TOML: %v\n%s", err, out)
	}
	wantTop := []string{"host", "server"}
	if !reg.Fallback {
		wantTop = append(wantTop, "capabilities")
		if !reflect.DeepEqual(doc["capabilities"], []any{"push"}) {
			t.Errorf("capabilities = %#v, want push only", doc["capabilities"])
		}
	}
	if got := slices.Sorted(maps.Keys(doc)); !slices.Equal(got, slices.Sorted(slices.Values(wantTop))) {
		t.Errorf("top-level keys %q, want %q\n%s", got, wantTop, out)
	}
	if doc["server"] != "https://"+reg.Host {
		t.Errorf("server = %#v, want %q", doc["server"], "https://"+reg.Host)
	}

	var want []string
	for _, e := range order {
		u, err := url.Parse(e.URL)
		if err != nil {
			t.Fatalf("endpoint %q rendered: %v", e.URL, err)
		}
		want = append(want, (&url.URL{Scheme: u.Scheme, Host: u.Host}).String())
	}
	var got []string
	for _, k := range md.Keys() {
		if len(k) == 2 && k[0] == "host" {
			got = append(got, k[1])
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("hosts %q, want %q\n%s", got, want, out)
	}
	hostTable, _ := doc["host"].(map[string]any)
	if len(hostTable) != len(want) {
		t.Fatalf("host table has %d entries, want %d\n%s", len(hostTable), len(want), out)
	}
	seen := map[string]bool{}
	for i, h := range want {
		// containerd parses the key as a URL: it must name the endpoint's host.
		u, err := url.Parse(h)
		in, _ := url.Parse(order[i].URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Host != in.Host || u.User != nil ||
			u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
			t.Errorf("host %q (%v) is not scheme://host[:port] of %q", h, err, order[i].URL)
		}
		if seen[strings.ToLower(h)] {
			t.Errorf("host %q listed twice", h)
		}
		seen[strings.ToLower(h)] = true
		checkHostEntry(t, h, hostTable[h], reg, creds)
	}
}

func checkHostEntry(t *testing.T, h string, v any, reg conf.Registry, creds string) {
	t.Helper()
	entry, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("host %q is %#v, want a table", h, v)
	}
	want := map[string]any{
		"capabilities": []any{"pull", "resolve"},
		"dial_timeout": reg.Timeouts.Dial.Duration.String(),
	}
	if strings.HasPrefix(h, "https://") {
		if reg.TLS.CA != "" {
			want["ca"] = reg.TLS.CA
		}
		if reg.TLS.Cert != "" {
			want["client"] = []any{[]any{reg.TLS.Cert, reg.TLS.Key}}
		}
	}
	if reg.Auth.CredentialsFile != "" {
		auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(strings.TrimSpace(creds)))
		want["header"] = map[string]any{"Authorization": auth}
	}
	if !reflect.DeepEqual(entry, want) {
		t.Errorf("host %q is\n%#v, want\n%#v", h, entry, want)
	}
}
