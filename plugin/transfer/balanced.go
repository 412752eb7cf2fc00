package transfer

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

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
		tr, err := Transport(r)
		if err != nil {
			return nil, err
		}
		cfg, err := BalanceConfig(r, tr, m)
		if err != nil {
			return nil, err
		}
		b, err := balance.New(cfg)
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

// Transport is the HTTP transport to one [[registry]]'s masters. The balancer owns
// response-header deadlines and hedging; this transport only bounds the handshake.
func Transport(r conf.Registry) (*http.Transport, error) {
	tc, err := r.TLS.ClientConfig(false)
	if err != nil {
		return nil, err
	}
	dial := r.Timeouts.Dial.Duration
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: dial}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: dial,
		MaxIdleConnsPerHost: 16,
		ForceAttemptHTTP2:   true,
		DisableCompression:  true,
	}, nil
}

// BalanceConfig maps one [[registry]] to the balancer's Config. A new conf.Registry
// key that the balancer takes is passed through here, one field per line.
func BalanceConfig(r conf.Registry, tr http.RoundTripper, m *balance.Metrics) (balance.Config, error) {
	var eps []balance.Endpoint
	preferLocal := false
	for i, e := range r.Endpoints {
		u, err := url.Parse(e.URL)
		if err != nil {
			return balance.Config{}, fmt.Errorf("endpoint[%d].url: %w", i, err)
		}
		eps = append(eps, balance.Endpoint{URL: u, Weight: e.Weight, Local: e.Local})
		preferLocal = preferLocal || e.Local
	}
	t := r.Timeouts
	return balance.Config{
		Endpoints:   eps,
		Host:        r.Host,
		Transport:   tr,
		PreferLocal: preferLocal,

		// [registry.timeouts]
		Dial:               t.Dial.Duration,
		ResponseHeader:     t.ResponseHeader.Duration,
		Stall:              t.Stall.Duration,
		HealthInterval:     t.HealthInterval.Duration,
		HealthTimeout:      t.HealthTimeout.Duration,
		HealthIdleInterval: t.HealthIdleInterval.Duration,
		HedgeMin:           t.HedgeMin.Duration,
		HedgeMax:           t.HedgeMax.Duration,

		// [registry.outlier], [registry.hedge], [registry.body]. conf has applied
		// the defaults, so a zero here was written as 0, which for the balancer is
		// "off": it takes a negative value for that.
		ConsecutiveFailures: r.Outlier.ConsecutiveFailures,
		Consecutive5xx:      r.Outlier.Consecutive5xx,
		MaxEjectionPercent:  off(r.Outlier.MaxEjectionPercent),
		SlowStart:           offDuration(r.Outlier.SlowStart.Duration),
		HedgeBudgetPercent:  off(r.Hedge.BudgetPercent),
		HedgeBurst:          off(r.Hedge.Burst),
		MinRate:             int64(off(int(r.Body.MinRate))),
		RelativeRate:        offRate(r.Body.RelativeRate),
		Warmup:              r.Body.Warmup.Duration,
		Window:              r.Body.Window.Duration,
		ResumeAttempts:      off(r.Body.ResumeAttempts),

		Metrics: m,
		Logger:  slogFromContainerd(log.L.WithField("host", r.Host)),
	}, nil
}

// off maps a configured 0 to the balancer's "off" (negative); the balancer reads 0
// as "default".
func off(v int) int {
	if v == 0 {
		return -1
	}
	return v
}

func offDuration(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func offRate(v float64) float64 {
	if v == 0 {
		return -1
	}
	return v
}

// running is a balancer whose health checks stop when it is closed: when containerd
// stops, or after a reload replaced it. Status is the balancer's.
type running struct {
	*balance.Balancer
	stop func()
}

func (r *running) Close() error {
	r.stop()
	return nil
}
