package transfer

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/containerd/log"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/plugin/balance"
)

// Balanced returns the RoundTripperFactory that spreads each registry's requests over
// its endpoints with plugin/balance. Every balancer records into m, which belongs to
// the process (register it once, on the registry containerd's metrics endpoint
// serves).
func Balanced(m *balance.Metrics) RoundTripperFactory {
	return func(r conf.Registry) (http.RoundTripper, error) {
		tc, err := tlsConfig(r.TLS, false)
		if err != nil {
			return nil, err
		}
		dial := r.Timeouts.Dial.Duration
		// The balancer owns response-header deadlines and hedging; this transport
		// only bounds the handshake.
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: dial}).DialContext,
			TLSClientConfig:     tc,
			TLSHandshakeTimeout: dial,
			MaxIdleConnsPerHost: 16,
			ForceAttemptHTTP2:   true,
			DisableCompression:  true,
		}
		var eps []balance.Endpoint
		preferLocal := false
		for i, e := range r.Endpoints {
			u, err := url.Parse(e.URL)
			if err != nil {
				return nil, fmt.Errorf("endpoint[%d].url: %w", i, err)
			}
			eps = append(eps, balance.Endpoint{URL: u, Weight: e.Weight, Local: e.Local})
			preferLocal = preferLocal || e.Local
		}
		t := r.Timeouts
		b, err := balance.New(balance.Config{
			Endpoints: eps, Host: r.Host, Transport: tr, PreferLocal: preferLocal,
			Dial: t.Dial.Duration, ResponseHeader: t.ResponseHeader.Duration, Stall: t.Stall.Duration,
			HealthInterval: t.HealthInterval.Duration, HealthTimeout: t.HealthTimeout.Duration,
			HedgeMin: t.HedgeMin.Duration, HedgeMax: t.HedgeMax.Duration,
			Metrics: m, Logger: slogFromContainerd(log.L.WithField("host", r.Host)),
		})
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.Run(ctx)
		}()
		return &running{Balancer: b, stop: func() { cancel(); <-done; tr.CloseIdleConnections() }}, nil
	}
}

// running is a balancer whose health checks stop when containerd closes it.
type running struct {
	*balance.Balancer
	stop func()
}

func (r *running) Close() error {
	r.stop()
	return nil
}
