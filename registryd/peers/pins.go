package peers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"

	"github.com/containerd/errdefs"
)

// PinsPath is the peer endpoint that takes pin leases that a node reported to
// another master.
const PinsPath = "/hopless/v1/peer/pins"

// All returns every peer, up or down, sorted by URL. Self is not among them.
func (s *Set) All() []Peer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ps := make([]Peer, 0, len(s.peers))
	for _, m := range s.peers {
		ps = append(ps, m.peer)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].URL < ps[j].URL })
	return ps
}

// PutPins sends body, pin leases as JSON, to p's pins endpoint. A failure does not
// mark p down: pins are renewed by their nodes, and the peer's health is judged by
// the requests that serve content.
func (s *Set) PutPins(ctx context.Context, p Peer, body []byte) error {
	what := fmt.Sprintf("peer %s: pins", p.URL)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, p.URL+PinsPath, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderPeer, s.self.URL)
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d: %s: %w", what, resp.StatusCode, bytes.TrimSpace(msg), errdefs.ErrUnavailable)
	}
	return nil
}
