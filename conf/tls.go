package conf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
)

// ClientConfig is the client side of t. With a CA, only the CA verifies servers unless
// systemRoots is set, which adds the CA to the system roots.
func (t TLS) ClientConfig(systemRoots bool) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls.ca: %w", err)
		}
		pool := x509.NewCertPool()
		if systemRoots {
			if sys, err := x509.SystemCertPool(); err == nil {
				pool = sys
			}
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca: no PEM certificate in %s: %w", t.CA, errdefs.ErrInvalidArgument)
		}
		c.RootCAs = pool
	}
	if t.Cert != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls.cert, tls.key: %s, %s: %w", t.Cert, t.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// PlainHTTP lists the settings of r that turn TLS off, by field (server.insecure,
// upstream[i].tls.insecure, peers.tls.insecure). TLS is on unless one of them is
// set; registryd logs each one when it starts, so that it is never off unseen.
func (r *Registryd) PlainHTTP() []string {
	var out []string
	if r.Server.Insecure {
		out = append(out, "server.insecure")
	}
	for i, u := range r.Upstream {
		if u.TLS.Insecure {
			out = append(out, fmt.Sprintf("upstream[%d].tls.insecure", i))
		}
	}
	if r.Peers.TLS.Insecure {
		out = append(out, "peers.tls.insecure")
	}
	return out
}

// PlainHTTP lists the registries of n whose tls.insecure allows plain http to the
// masters (registry[i].tls.insecure), for the node's daemons to log.
func (n *Node) PlainHTTP() []string {
	var out []string
	for i, r := range n.Registries {
		if r.TLS.Insecure {
			out = append(out, fmt.Sprintf("registry[%d].tls.insecure (%s)", i, r.Host))
		}
	}
	return out
}
