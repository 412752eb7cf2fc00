package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Run checks every endpoint at once, then again every HealthInterval, until ctx
// ends. Without Run the balancer relies on passive ejection and trial requests only.
func (b *Balancer) Run(ctx context.Context) {
	t := time.NewTicker(b.cfg.HealthInterval)
	defer t.Stop()
	for {
		b.checkAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkAll checks every endpoint concurrently and waits for the checks, each
// bounded by HealthTimeout.
func (b *Balancer) checkAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, e := range b.eps {
		wg.Go(func() {
			err := b.check(ctx, e)
			if ctx.Err() != nil {
				return // shutting down: the endpoint is not to blame
			}
			b.checked(e, err)
		})
	}
	wg.Wait()
}

// check asks GET <endpoint>/v2/. 200, or 401 from a registry that wants a token,
// means the registry is serving.
func (b *Balancer) check(ctx context.Context, e *endpoint) error {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.HealthTimeout)
	defer cancel()
	target := e.url.JoinPath("/v2/").String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("health check GET %s: %w", target, err)
	}
	resp, err := b.transport.RoundTrip(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = &timeoutError{what: "no answer", d: b.cfg.HealthTimeout}
		}
		return fmt.Errorf("health check GET %s: %w", target, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("health check GET %s: status %s", target, resp.Status)
	}
	return nil
}
