package peers

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
)

// Owner returns the peer that owns key (a blob digest) among the healthy peers and
// self, by weighted rendezvous hashing (see the package doc). It returns (Peer{}, false)
// when self is the owner, including when no peer is healthy.
func (s *Set) Owner(key string) (Peer, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.peers) == 0 {
		return Peer{}, false
	}
	best, bestScore := s.self, score(s.self, key)
	for _, m := range s.peers {
		if !m.up {
			continue
		}
		// Ties break on the URL so that the result does not depend on map order.
		if sc := score(m.peer, key); sc > bestScore || (sc == bestScore && m.peer.URL < best.URL) {
			best, bestScore = m.peer, sc
		}
	}
	if best.URL == s.self.URL {
		return Peer{}, false
	}
	return best, true
}

// score is -weight/ln(h) with h = SHA-256(URL, 0, key) mapped into (0,1).
func score(p Peer, key string) float64 {
	b := make([]byte, 0, len(p.URL)+1+len(key))
	b = append(append(append(b, p.URL...), 0), key...)
	sum := sha256.Sum256(b)
	// The top 53 bits, offset by half a step, give a float strictly between 0 and 1.
	h := (float64(binary.BigEndian.Uint64(sum[:8])>>11) + 0.5) / (1 << 53)
	return -float64(p.Weight) / math.Log(h)
}
