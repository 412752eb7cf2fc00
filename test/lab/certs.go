package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CertKind is what ReissueCert gives a server.
type CertKind int

const (
	// CertRenewed is a new key and certificate from the lab's CA: a routine
	// replacement.
	CertRenewed CertKind = iota
	// CertExpired is a certificate from the lab's CA that expired a day ago.
	CertExpired
	// CertUntrusted is a certificate from a CA of its own that no one trusts.
	CertUntrusted
)

func (k CertKind) String() string {
	switch k {
	case CertRenewed:
		return "renewed"
	case CertExpired:
		return "expired"
	case CertUntrusted:
		return "untrusted"
	}
	return fmt.Sprintf("CertKind(%d)", int(k))
}

// ReissueCert stops the named master or proxy, gives it a certificate of kind for
// the same addresses, and starts it again. It is ready once it serves that very
// certificate, trusted or not.
func (l *Lab) ReissueCert(ctx context.Context, name string, kind CertKind) error {
	if !strings.HasPrefix(name, "master-") && !strings.HasPrefix(name, proxyPrefix) {
		return fmt.Errorf("reissue cert: %s is no master or proxy", name)
	}
	l.syncProcs()
	p := l.proc(name)
	if p == nil {
		return fmt.Errorf("reissue cert: lab has no process %q", name)
	}
	if p.Alive() {
		if err := l.Stop(name); err != nil {
			return fmt.Errorf("reissue cert for %s: %w", name, err)
		}
	}
	der, err := l.writeCert(name, kind)
	if err != nil {
		return err
	}
	// Readiness trusts exactly the certificate just issued: the nodes may not.
	pinned := &tls.Config{
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], der) {
				return errors.New("not the certificate just issued")
			}
			return nil
		},
	}
	if err := l.startProc(ctx, p, pinned); err != nil {
		return fmt.Errorf("reissue cert for %s: starting it again: %w", name, err)
	}
	return nil
}

// ReplaceCert writes a renewed certificate and key for the named master over its
// files while it runs, as cert-manager would, and returns the certificate (DER).
func (l *Lab) ReplaceCert(name string) ([]byte, error) {
	if !strings.HasPrefix(name, "master-") {
		return nil, fmt.Errorf("replace cert: %s is no master", name)
	}
	return l.writeCert(name, CertRenewed)
}

// writeCert issues name a certificate of kind, for the addresses of its current one.
func (l *Lab) writeCert(name string, kind CertKind) ([]byte, error) {
	dir := filepath.Join(l.Dir, name)
	old, err := readCert(filepath.Join(dir, "cert.pem"))
	if err != nil {
		return nil, fmt.Errorf("reissue cert for %s: %w", name, err)
	}
	var ca *CA
	if kind == CertUntrusted {
		ca, err = NewCA(filepath.Join(l.Dir, "untrusted-ca", name))
	} else {
		ca, err = LoadCA(filepath.Join(l.Dir, "ca"))
	}
	if err != nil {
		return nil, fmt.Errorf("reissue cert for %s: %w", name, err)
	}
	notBefore, notAfter := time.Now().Add(-time.Hour), time.Now().Add(30*24*time.Hour)
	if kind == CertExpired {
		notBefore, notAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	}
	der, err := ca.issue(dir, notBefore, notAfter, old.DNSNames, old.IPAddresses)
	if err != nil {
		return nil, fmt.Errorf("reissue cert for %s: %w", name, err)
	}
	return der, nil
}

// ServedCert is the certificate (DER) that addr presents, trusted or not.
func ServedCert(ctx context.Context, addr string) ([]byte, error) {
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS dial %s: %w", addr, err)
	}
	defer c.Close()
	certs := c.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, fmt.Errorf("TLS dial %s: no certificate", addr)
	}
	return certs[0].Raw, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}
