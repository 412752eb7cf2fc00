package transfer

import (
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/containerd/errdefs"

	"github.com/hopless/hopless/conf"
)

var _ RoundTripperFactory = FirstEndpoint

// FirstEndpoint is the simplest RoundTripperFactory: every request goes to the
// registry's first endpoint, with its TLS settings and its dial and response-header
// timeouts. A transport error means that endpoint, the only one it uses, is down. It
// stands in for the balancer (plugin/balance).
func FirstEndpoint(r conf.Registry) (http.RoundTripper, error) {
	if len(r.Endpoints) == 0 {
		return nil, fmt.Errorf("no endpoint: %w", errdefs.ErrInvalidArgument)
	}
	base, err := url.Parse(r.Endpoints[0].URL)
	if err != nil {
		return nil, fmt.Errorf("endpoint[0].url: %w", err)
	}
	tc, err := r.TLS.ClientConfig(false)
	if err != nil {
		return nil, err
	}
	dial := r.Timeouts.Dial.Duration
	return &firstEndpoint{
		base: base,
		transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: dial}).DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   dial,
			ResponseHeaderTimeout: r.Timeouts.ResponseHeader.Duration,
			MaxIdleConnsPerHost:   10,
			ForceAttemptHTTP2:     true,
		},
	}, nil
}

type firstEndpoint struct {
	base      *url.URL
	transport *http.Transport
}

func (f *firstEndpoint) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	out.URL.Scheme, out.URL.Host = f.base.Scheme, f.base.Host
	out.Host = ""
	resp, err := f.transport.RoundTrip(out)
	if err != nil {
		if req.Context().Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("endpoint %s is down: %w: %w", f.base.Host, err, errdefs.ErrUnavailable)
	}
	return resp, nil
}

// Close closes idle connections.
func (f *firstEndpoint) Close() error {
	f.transport.CloseIdleConnections()
	return nil
}
