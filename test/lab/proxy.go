package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/hopless/hopless/conf"
)

// ProxyOptions configures ServeProxy.
type ProxyOptions struct {
	// Addr is the host:port to listen on; port 0 picks a free port.
	Addr string
	// CertFile and KeyFile are the PEM server certificate and key.
	CertFile, KeyFile string
	// StorageDir is the root of the cache's filesystem storage; empty with S3.
	StorageDir string
	// S3, if set, puts the cache in an S3 bucket instead of StorageDir.
	S3 *ProxyS3
	// RemoteURL is the registry to cache, as scheme://host[:port].
	RemoteURL string
	// RemoteCA is a PEM file of CA certificates trusted for RemoteURL in
	// addition to the system roots. Empty means the system roots alone.
	RemoteCA string
	// AccessLog is the file that every request is appended to as one JSON
	// line (see AccessEntry). Empty means no access log.
	AccessLog string
	// Ready, if set, is called with the bound address once listening.
	Ready func(addr string)
}

// ProxyS3 is the bucket of a proxy's cache: the parameters of distribution's s3
// driver, with the keys read from files.
type ProxyS3 struct {
	// Endpoint is the S3 server, http://host:port or https://host:port.
	Endpoint string
	Region   string
	Bucket   string
	// AccessKeyFile and SecretKeyFile each hold one key on one line, in a file
	// that neither group nor others may read.
	AccessKeyFile, SecretKeyFile string
	// RootDirectory is the prefix of the proxy's keys in the bucket, so that it
	// shares the bucket with others (the masters keep theirs under /hopless).
	RootDirectory string
	// ForcePathStyle names the bucket in the URL's path, not its host name.
	ForcePathStyle bool
}

// storage is the s3 driver's configuration; its keys are read from their files.
func (o *ProxyS3) storage() (configuration.Storage, error) {
	switch {
	case o.Endpoint == "" || o.Region == "" || o.Bucket == "":
		return nil, errors.New("proxy: s3 storage needs an endpoint, a region and a bucket")
	case o.AccessKeyFile == "" || o.SecretKeyFile == "":
		return nil, errors.New("proxy: s3 storage needs an access key file and a secret key file")
	case o.RootDirectory == "" || o.RootDirectory == "/":
		return nil, errors.New("proxy: s3 storage needs a root directory of its own in the bucket")
	}
	u, err := url.Parse(o.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("proxy: s3 endpoint: %w", err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("proxy: s3 endpoint %q is not http(s)://host[:port]", o.Endpoint)
	}
	ak, err := conf.ReadToken(o.AccessKeyFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: s3 access key: %w", err)
	}
	sk, err := conf.ReadToken(o.SecretKeyFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: s3 secret key: %w", err)
	}
	return configuration.Storage{"s3": configuration.Parameters{
		"regionendpoint": o.Endpoint, "secure": u.Scheme == "https", "region": o.Region, "bucket": o.Bucket,
		"accesskey": ak, "secretkey": sk, "rootdirectory": o.RootDirectory, "forcepathstyle": o.ForcePathStyle,
	}}, nil
}

const remotePingTimeout = 10 * time.Second

// ServeProxy runs distribution's own pull-through cache (its proxy mode, with
// the default 7-day TTL), the baseline that registryd is measured against,
// over TLS until ctx is cancelled, then shuts it down gracefully. It returns
// nil after a clean shutdown. The remote must answer when ServeProxy starts.
//
// distribution's proxy reaches the remote only through http.DefaultTransport,
// so ServeProxy replaces http.DefaultTransport, for the whole process, with
// one that trusts RemoteCA, and leaves it replaced; the s3 driver reaches the
// bucket through it too. On S3 it also drops AWS_CA_BUNDLE from the process's
// environment: given that, the AWS SDK sets http.DefaultClient, with which
// distribution's proxy first asks the remote, to trust that bundle alone. It is
// meant for a process of its own (hopless-lab proxy).
func ServeProxy(ctx context.Context, o ProxyOptions) error {
	switch {
	case o.Addr == "":
		return errors.New("proxy: no listen address")
	case o.CertFile == "" || o.KeyFile == "":
		return errors.New("proxy: TLS certificate and key files are required")
	case o.StorageDir == "" && o.S3 == nil:
		return errors.New("proxy: no storage directory and no s3 storage")
	case o.StorageDir != "" && o.S3 != nil:
		return errors.New("proxy: both a storage directory and s3 storage")
	case o.RemoteURL == "":
		return errors.New("proxy: no remote URL")
	}
	// distribution appends "/v2/" to the URL as a string.
	remote := strings.TrimSuffix(o.RemoteURL, "/")
	if u, err := url.Parse(remote); err != nil {
		return fmt.Errorf("proxy: remote URL: %w", err)
	} else if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Path != "" {
		return fmt.Errorf("proxy: remote URL %q is not http(s)://host[:port]", o.RemoteURL)
	}
	storage := filesystemStorage(o.StorageDir)
	if o.S3 != nil {
		s, err := o.S3.storage()
		if err != nil {
			return err
		}
		storage = s
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return fmt.Errorf("proxy: load TLS key pair %s, %s: %w", o.CertFile, o.KeyFile, err)
	}
	tr, err := remoteTransport(o.RemoteCA)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("proxy: listen on %s: %w", o.Addr, err)
	}
	defer ln.Close()

	http.DefaultTransport = tr
	// distribution reports an unreachable remote by panicking after it has
	// started a TTL scheduler that nothing can stop then; fail before that.
	if err := pingRemote(ctx, tr, remote); err != nil {
		return err
	}
	if o.S3 != nil {
		if err := os.Unsetenv("AWS_CA_BUNDLE"); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	quietRegistryLogs()
	app, err := newRegistryApp(ctx, "proxy", storage, configuration.Proxy{RemoteURL: remote})
	if err != nil {
		return err
	}
	defer app.Shutdown()
	return serveLogged(ctx, "proxy", ln, o.AccessLog, o.Ready, app, cert)
}

// remoteTransport clones http.DefaultTransport to trust the system roots and
// the certificates in caFile.
func remoteTransport(caFile string) (*http.Transport, error) {
	base, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("proxy: http.DefaultTransport is a %T, not an *http.Transport", http.DefaultTransport)
	}
	tr := base.Clone()
	if caFile == "" {
		return tr, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: remote CA: %w", err)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("proxy: remote CA %s holds no PEM certificate", caFile)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return tr, nil
}

// pingRemote checks that the remote answers GET /v2/, with any status.
func pingRemote(ctx context.Context, tr http.RoundTripper, remote string) error {
	ctx, cancel := context.WithTimeout(ctx, remotePingTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, remote+"/v2/", nil)
	if err != nil {
		return fmt.Errorf("proxy: remote %s: %w", remote, err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("proxy: remote %s does not answer: %w", remote, err)
	}
	resp.Body.Close()
	return nil
}
