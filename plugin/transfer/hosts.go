package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/log"

	"github.com/hopless/hopless/conf"
)

// RoundTripperFactory builds the RoundTripper that sends one registry's requests to
// its endpoints. The RoundTripper receives requests addressed to
// https://<registry host>/v2/... and chooses the endpoint that serves each one.
//
// It reports that every endpoint is down with an error that wraps
// errdefs.ErrUnavailable: that error, and only that one, triggers the registry's
// fallback. If it implements io.Closer, it is closed when containerd stops.
type RoundTripperFactory func(conf.Registry) (http.RoundTripper, error)

// Hosts are the image hosts whose pulls hopless serves, each with the HTTP client
// that reaches its endpoints. It is the instance of the hopless plugin.
type Hosts struct {
	byHost  map[string]*host
	closers []io.Closer
}

// host is one configured image host.
type host struct {
	cfg    conf.Registry
	client *http.Client
}

// NewHosts builds a client for every registry of a validated node configuration,
// with a RoundTripper from newRT.
func NewHosts(ctx context.Context, node *conf.Node, newRT RoundTripperFactory) (*Hosts, error) {
	h := &Hosts{byHost: map[string]*host{}}
	for i, r := range node.Registries {
		rt, err := newRT(r)
		if err == nil {
			err = h.add(r, rt)
		}
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("registry[%d] (%s): %w", i, r.Host, err)
		}
		log.G(ctx).WithFields(log.Fields{
			"host":      r.Host,
			"endpoints": len(r.Endpoints),
			"fallback":  r.Fallback,
		}).Info("hopless serves image host")
	}
	return h, nil
}

func (h *Hosts) add(r conf.Registry, rt http.RoundTripper) error {
	if c, ok := rt.(io.Closer); ok {
		h.closers = append(h.closers, c)
	}
	// Redirects (e.g. to object storage) and token realms on other hosts are not the
	// endpoints' business: they go out directly, trusting the registry's CA too.
	tc, err := tlsConfig(r.TLS, true)
	if err != nil {
		return err
	}
	direct := docker.DefaultHTTPTransport(tc)
	h.closers = append(h.closers, closeIdle{direct})
	h.byHost[strings.ToLower(r.Host)] = &host{
		cfg: r,
		client: &http.Client{Transport: &scoped{
			host:     r.Host,
			balanced: rt,
			direct:   direct,
		}},
	}
	return nil
}

// lookup returns the configured host of an image reference's host, or nil.
func (h *Hosts) lookup(imageHost string) *host {
	return h.byHost[strings.ToLower(imageHost)]
}

// Close closes the RoundTrippers that can be closed.
func (h *Hosts) Close() error {
	var errs []error
	for _, c := range h.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// registryHosts are the docker resolver's hosts for h: the image host itself, reached
// through h's client. Any other host (there is none in a pull of an image of h) is
// refused.
func (h *host) registryHosts() docker.RegistryHosts {
	authorizer := docker.NewDockerAuthorizer(
		docker.WithAuthClient(h.client),
		docker.WithAuthCreds(h.credentials),
	)
	return func(name string) ([]docker.RegistryHost, error) {
		if !strings.EqualFold(name, h.cfg.Host) {
			return nil, fmt.Errorf("hopless source for %s asked for host %s", h.cfg.Host, name)
		}
		return []docker.RegistryHost{{
			Client:       h.client,
			Authorizer:   authorizer,
			Host:         h.cfg.Host,
			Scheme:       "https",
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		}}, nil
	}
}

// credentials answers the authorizer's challenge for the image host from the
// credentials file, read at each challenge so that a rotated file needs no restart.
// Without a file, requests stay anonymous.
func (h *host) credentials(name string) (string, string, error) {
	if h.cfg.Auth.CredentialsFile == "" || !strings.EqualFold(name, h.cfg.Host) {
		return "", "", nil
	}
	return conf.ReadCredentials(h.cfg.Auth.CredentialsFile)
}

// scoped hands the requests for the image host to the balanced RoundTripper and sends
// all others directly.
type scoped struct {
	host     string
	balanced http.RoundTripper
	direct   http.RoundTripper
}

func (s *scoped) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.EqualFold(req.URL.Host, s.host) {
		return s.direct.RoundTrip(req)
	}
	resp, err := s.balanced.RoundTrip(req)
	if resp != nil {
		// The docker authorizer keys its state by resp.Request.URL.Host: it must be
		// the image host, not the endpoint that answered.
		resp.Request = req
	}
	return resp, err
}

// closeIdle closes the idle connections of a transport.
type closeIdle struct{ t *http.Transport }

func (c closeIdle) Close() error {
	c.t.CloseIdleConnections()
	return nil
}
