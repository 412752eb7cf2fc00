package peers

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Run health-checks every peer each health interval and, in DNS mode, resolves the
// peers again every five intervals. It returns when ctx is done.
func (s *Set) Run(ctx context.Context) {
	if s.dns != "" {
		s.refresh(ctx)
	}
	s.checkAll(ctx)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.dns != "" && n%dnsEvery == 0 {
			s.refresh(ctx)
		}
		s.checkAll(ctx)
	}
}

// checkAll checks every peer at once and waits for all the checks, each of which is
// bounded by the check timeout.
func (s *Set) checkAll(ctx context.Context) {
	type target struct {
		url   string
		epoch uint64
	}
	s.mu.RLock()
	targets := make([]target, 0, len(s.peers))
	for u, m := range s.peers {
		targets = append(targets, target{url: u, epoch: m.epoch})
	}
	s.mu.RUnlock()
	var wg sync.WaitGroup
	for _, tg := range targets {
		wg.Go(func() {
			err := s.check(ctx, tg.url)
			if ctx.Err() != nil {
				return // shutting down: the peer is not to blame
			}
			s.report(tg.url, tg.epoch, err)
		})
	}
	wg.Wait()
}

// check asks GET <peer>/healthz with a timeout of min(interval, 1s).
func (s *Set) check(ctx context.Context, peerURL string) error {
	return s.checkWithin(ctx, peerURL, min(s.interval, maxHealthTimeout))
}

// checkWithin asks GET <peer>/healthz with a timeout of d.
func (s *Set) checkWithin(ctx context.Context, peerURL string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peerURL+healthPath, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s%s: status %d", peerURL, healthPath, resp.StatusCode)
	}
	return nil
}

// report applies the result of a health check that started at epoch.
func (s *Set) report(peerURL string, epoch uint64, err error) {
	s.mu.Lock()
	m := s.peers[peerURL]
	if m == nil {
		s.mu.Unlock()
		return // removed from DNS while the check ran
	}
	wasUp := m.up
	switch {
	case err == nil && m.epoch == epoch:
		m.fails = 0
		m.up = true
	case err == nil:
		// Ejected while this check ran: only a check started afterwards may revive it.
	default:
		m.fails++
		if m.fails >= downAfter {
			m.up = false
		}
	}
	up, fails := m.up, m.fails
	s.mu.Unlock()
	switch {
	case !wasUp && up:
		s.log.Info("peer up", "peer", peerURL)
	case wasUp && !up:
		s.log.Warn("peer down", "peer", peerURL, "failed_checks", fails, "err", err)
	case err != nil && up:
		s.log.Debug("peer health check failed", "peer", peerURL, "failed_checks", fails, "err", err)
	}
}

// eject marks a peer down at once after a failed request.
func (s *Set) eject(p Peer, err error) {
	s.mu.Lock()
	m := s.peers[p.URL]
	if m == nil {
		s.mu.Unlock()
		return
	}
	wasUp := m.up
	m.up = false
	m.fails = downAfter
	m.epoch++
	s.mu.Unlock()
	if wasUp {
		s.log.Warn("peer ejected after a failed request", "peer", p.URL, "err", err)
	}
}

// refresh resolves the DNS name into peers of weight 1. A failed lookup keeps the
// current peers; new peers start up, like static ones.
func (s *Set) refresh(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, min(dnsEvery*s.interval, maxDNSTimeout))
	defer cancel()
	addrs, err := s.lookup(lctx, s.dns)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("resolving peers failed, keeping the current ones", "dns", s.dns, "err", err)
		}
		return
	}
	want := make(map[string]bool, len(addrs))
	selfListed := false
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			s.log.Warn("ignoring a peer address that is not an IP", "dns", s.dns, "addr", a)
			continue
		}
		u := s.dnsScheme + "://" + net.JoinHostPort(ip.Unmap().String(), s.dnsPort)
		if u == s.self.URL {
			selfListed = true
			continue
		}
		want[u] = true
	}
	var added, removed []string
	s.mu.Lock()
	for u := range s.peers {
		if !want[u] {
			delete(s.peers, u)
			removed = append(removed, u)
		}
	}
	for u := range want {
		if s.peers[u] == nil {
			s.peers[u] = &member{peer: Peer{URL: u, Weight: 1}, up: true}
			added = append(added, u)
		}
	}
	warnSelf := s.selfListed && !selfListed
	s.selfListed = selfListed
	s.mu.Unlock()
	if len(added) > 0 || len(removed) > 0 {
		sort.Strings(added)
		sort.Strings(removed)
		s.log.Info("peers changed", "dns", s.dns, "added", added, "removed", removed)
	}
	if warnSelf {
		s.log.Warn("self is not among the resolved peers, so masters may disagree on blob owners",
			"dns", s.dns, "self", s.self.URL)
	}
}
