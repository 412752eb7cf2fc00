package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/hopless/hopless/conf"
)

// hostTransport sends requests for one scheme://host:port through its own transport
// and everything else through next.
type hostTransport struct {
	origin string
	own    http.RoundTripper
	next   http.RoundTripper
}

func (t *hostTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if origin(r.URL) == t.origin {
		return t.own.RoundTrip(r)
	}
	return t.next.RoundTrip(r)
}

// origin is the canonical scheme://host:port of u.
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "https":
			port = "443"
		case "http":
			port = "80"
		}
	}
	return strings.ToLower(u.Scheme) + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// upstreamTransport returns a RoundTripper that verifies the upstream with its
// configured CA and presents its client certificate, delegating every other host to
// next. ok is false when the upstream needs nothing beyond next (no CA, no client
// certificate, or plain http).
func upstreamTransport(next http.RoundTripper, up conf.Upstream) (rt http.RoundTripper, ok bool, err error) {
	u, err := url.Parse(up.URL)
	if err != nil {
		return nil, false, fmt.Errorf("parsing upstream URL %q: %w", up.URL, err)
	}
	if u.Scheme != "https" || (up.TLS.CA == "" && up.TLS.Cert == "") {
		return next, false, nil
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if up.TLS.CA != "" {
		pem, err := os.ReadFile(up.TLS.CA)
		if err != nil {
			return nil, false, fmt.Errorf("reading upstream CA: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, false, fmt.Errorf("upstream CA %s: no PEM certificates found", up.TLS.CA)
		}
		tlsCfg.RootCAs = pool
	}
	if up.TLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(up.TLS.Cert, up.TLS.Key)
		if err != nil {
			return nil, false, fmt.Errorf("loading upstream client certificate %s: %w", up.TLS.Cert, err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	// The same settings as http.DefaultTransport, plus the TLS config.
	own := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       tlsCfg,
	}
	return &hostTransport{origin: origin(u), own: own, next: next}, true, nil
}
