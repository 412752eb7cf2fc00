package hosts

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

// FileName is the file that containerd reads in a host directory.
const FileName = "hosts.toml"

// headerPrefix starts the first line of every hosts.toml we write.
const headerPrefix = "# managed by hopless-nri: do not edit; "

// Header is the first line, without its newline, of the hosts.toml we write for the
// image host host: the mark by which a file is known to be ours.
func Header(host string) string { return headerPrefix + host }

// Render returns the hosts.toml of the image host reg.Host that sends its pulls to the
// endpoints of order, tried in that order (each endpoint at most once). The bytes
// depend only on the arguments and the content of reg.Auth.CredentialsFile.
//
// The file starts with Header(reg.Host), then server is the image host itself, which
// containerd tries after every endpoint. Unless reg.Fallback is set, the server may
// only be pushed to (capabilities = ["push"]), so that no pull goes to the image
// host. Each endpoint gets capabilities pull and resolve, reg.TLS.CA as ca and
// reg.TLS.Cert and Key as its client pair (https endpoints only), reg.Timeouts.Dial
// as dial_timeout, and, when reg.Auth.CredentialsFile is set, an Authorization:
// Basic header with its credentials: the file then holds a secret.
func Render(reg conf.Registry, order []conf.Endpoint) ([]byte, error) {
	b, err := render(reg, order)
	if err != nil {
		return nil, fmt.Errorf("hosts.toml of %q: %w", reg.Host, err)
	}
	return b, nil
}

func render(reg conf.Registry, order []conf.Endpoint) ([]byte, error) {
	if _, err := Dir(reg.Host); err != nil {
		return nil, err
	}
	if len(order) == 0 {
		// containerd would send every pull to the image host: the caller says that by
		// removing the file, not by writing one without endpoints.
		return nil, fmt.Errorf("no endpoints: %w", errdefs.ErrInvalidArgument)
	}
	if reg.Timeouts.Dial.Duration <= 0 {
		// Without it containerd waits 30s to connect to a master that is down.
		return nil, fmt.Errorf("timeouts.dial must be > 0, got %s: %w", reg.Timeouts.Dial.Duration, errdefs.ErrInvalidArgument)
	}
	var tlsLines []string
	if reg.TLS.CA != "" {
		l, err := pathLine("ca", "tls.ca", reg.TLS.CA)
		if err != nil {
			return nil, err
		}
		tlsLines = append(tlsLines, l)
	}
	switch {
	case reg.TLS.Cert != "" && reg.TLS.Key != "":
		cert, err := absPath("tls.cert", reg.TLS.Cert)
		if err != nil {
			return nil, err
		}
		key, err := absPath("tls.key", reg.TLS.Key)
		if err != nil {
			return nil, err
		}
		tlsLines = append(tlsLines, fmt.Sprintf("client = [[%s, %s]]", cert, key))
	case reg.TLS.Cert != "" || reg.TLS.Key != "":
		return nil, fmt.Errorf("tls.cert and tls.key must be set together: %w", errdefs.ErrInvalidArgument)
	}
	var auth string
	if reg.Auth.CredentialsFile != "" {
		user, pass, err := conf.ReadCredentials(reg.Auth.CredentialsFile)
		if err != nil {
			return nil, err
		}
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}

	var b strings.Builder
	b.WriteString(Header(reg.Host) + "\n")
	b.WriteString("server = " + quote("https://"+reg.Host) + "\n")
	if !reg.Fallback {
		b.WriteString("# fallback is off: no pull goes to the image host itself\n")
		b.WriteString(`capabilities = ["push"]` + "\n")
	}
	seen := map[string]int{}
	for i, e := range order {
		u, err := endpointURL(e.URL)
		if err != nil {
			return nil, fmt.Errorf("endpoint %d: %w", i, err)
		}
		if prev, dup := seen[strings.ToLower(u)]; dup {
			return nil, fmt.Errorf("endpoint %d: %s is endpoint %d already: %w", i, u, prev, errdefs.ErrInvalidArgument)
		}
		seen[strings.ToLower(u)] = i
		key := quote(u)
		fmt.Fprintf(&b, "\n[host.%s]\n", key)
		b.WriteString(`  capabilities = ["pull", "resolve"]` + "\n")
		// containerd tries https first on an http host that has TLS settings.
		if strings.HasPrefix(u, "https://") {
			for _, l := range tlsLines {
				b.WriteString("  " + l + "\n")
			}
		}
		b.WriteString("  dial_timeout = " + quote(reg.Timeouts.Dial.Duration.String()) + "\n")
		if auth != "" {
			fmt.Fprintf(&b, "  [host.%s.header]\n", key)
			b.WriteString("    Authorization = " + quote(auth) + "\n")
		}
	}
	return []byte(b.String()), nil
}

// endpointURL returns the endpoint's URL as scheme://host[:port]. A path of "/" is
// dropped: containerd would make it "//v2".
func endpointURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || !utf8.ValidString(s) {
		return "", fmt.Errorf("bad URL %q: %w", s, errdefs.ErrInvalidArgument)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.Opaque != "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("bad URL %q: want https://host[:port] or http://host[:port]: %w", s, errdefs.ErrInvalidArgument)
	}
	// String escapes the host again: an IPv6 zone's % must be written %25 for containerd
	// to parse the URL.
	return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String(), nil
}

func pathLine(key, field, p string) (string, error) {
	q, err := absPath(field, p)
	if err != nil {
		return "", err
	}
	return key + " = " + q, nil
}

// absPath quotes the file path p of the config field. containerd would take a
// relative path relative to the host directory, not to node.toml.
func absPath(field, p string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s: path %q must be absolute: %w", field, p, errdefs.ErrInvalidArgument)
	}
	if !utf8.ValidString(p) {
		return "", fmt.Errorf("%s: path %q is not valid UTF-8: %w", field, p, errdefs.ErrInvalidArgument)
	}
	return quote(p), nil
}

// quote returns s, valid UTF-8, as a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
