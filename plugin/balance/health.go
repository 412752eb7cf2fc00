package balance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Run checks every endpoint at once, then again about every HealthInterval (±10 %,
// so that many nodes do not check in step), until ctx ends. While it runs, an
// ejected endpoint comes back only through a passing check. Without Run the
// balancer relies on passive ejection and half-open trial requests.
func (b *Balancer) Run(ctx context.Context) {
	b.checking.Store(true)
	defer b.checking.Store(false)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.checkAll(ctx)
		t.Reset(time.Duration(float64(b.cfg.HealthInterval) * (0.9 + 0.2*rand.Float64())))
	}
}

// checkAll checks every endpoint concurrently and waits for the checks, each
// bounded by HealthTimeout.
func (b *Balancer) checkAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, e := range b.eps {
		wg.Go(func() {
			err := b.check(ctx, e, b.cfg.HealthTimeout)
			if ctx.Err() != nil {
				return // shutting down: the endpoint is not to blame
			}
			b.checked(e, err)
		})
	}
	wg.Wait()
}

// probe checks e at once, bounded by timeout, unless a probe of e is running: a
// request has waited on e past its hedge delay. A master that answers GET /v2/
// but is slow to serve (its upstream is slow) passes, and the request keeps
// waiting within the hedge budget; a frozen one fails, is marked unhealthy, and
// every request waiting on it moves on now instead of at the next periodic check.
func (b *Balancer) probe(e *endpoint, timeout time.Duration) {
	if !e.probing.CompareAndSwap(false, true) {
		return
	}
	b.metrics.probe()
	go func() {
		defer e.probing.Store(false)
		b.checked(e, b.check(context.Background(), e, timeout))
	}()
}

// check asks GET <endpoint>/v2/. 200, or 401 from a registry that wants a token,
// means the registry is serving.
func (b *Balancer) check(ctx context.Context, e *endpoint, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target := e.url.JoinPath("/v2/").String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("health check GET %s: %w", target, err)
	}
	began := time.Now()
	resp, err := b.transport.RoundTrip(req)
	if err == nil {
		b.hedge.observeCheck(time.Since(began))
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = &timeoutError{what: "no answer", d: timeout}
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
