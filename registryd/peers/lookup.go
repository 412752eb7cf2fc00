package peers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

const (
	// TagPath is the peer endpoint that Tag asks: a master's last known answer for
	// a tag, from its store only.
	TagPath = "/hopless/v1/peer/tag"
	// ManifestPath is the peer endpoint that Manifest asks: a manifest by digest,
	// from the peer's store only.
	ManifestPath = "/hopless/v1/peer/manifest"

	// maxTagAnswer bounds the body of a tag answer.
	maxTagAnswer = 4 << 10
)

// Results of a peer lookup, the values of the result label of PeerLookups.
const (
	lookupOK      = "ok"
	lookupUnknown = "unknown"
	lookupError   = "error"
)

// TagAnswer is what a peer last knew of a tag: the digest the upstream named and
// when the upstream last confirmed it. It is the body of the tag endpoint.
type TagAnswer struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Validated time.Time     `json:"validated"`
}

// Tag asks peer p what tag of repo at upstream host last pointed to. The peer answers
// from its own store and never asks its upstream or another peer, so a lookup is one
// hop and cannot loop. A peer that does not know the tag answers 404, which is
// errdefs.ErrNotFound; every other failure is errdefs.ErrUnavailable, and one that is
// the peer's own (no answer, a 5xx, an answer that does not parse) marks it down
// unless ctx ended first.
func (s *Set) Tag(ctx context.Context, p Peer, host, repo, tag string) (TagAnswer, error) {
	q := url.Values{"upstream": {host}, "repo": {repo}, "tag": {tag}}
	what := fmt.Sprintf("peer %s: tag %s:%s", p.URL, repo, tag)
	body, _, err := s.peerGet(ctx, p, TagPath, q, what, maxTagAnswer)
	if err != nil {
		s.countLookup("tag", err)
		return TagAnswer{}, err
	}
	var a TagAnswer
	if jerr := json.Unmarshal(body, &a); jerr != nil {
		err = fmt.Errorf("%s: bad answer: %v: %w", what, jerr, errdefs.ErrUnavailable)
	} else if verr := a.Digest.Validate(); verr != nil {
		err = fmt.Errorf("%s: bad digest %q: %v: %w", what, a.Digest, verr, errdefs.ErrUnavailable)
	} else if a.Size < 0 {
		err = fmt.Errorf("%s: negative size %d: %w", what, a.Size, errdefs.ErrUnavailable)
	}
	if err != nil {
		s.eject(p, err)
		s.countLookup("tag", err)
		return TagAnswer{}, err
	}
	s.countLookup("tag", nil)
	return a, nil
}

// Manifest fetches manifest d of repo at upstream host from peer p's store, at most
// maxBytes of it, and returns its media type and payload, which hashes to d: a
// payload that does not is refused as the peer's failure. Errors are classified as
// Tag's.
func (s *Set) Manifest(ctx context.Context, p Peer, host, repo string, d digest.Digest, maxBytes int64) (string, []byte, error) {
	q := url.Values{"upstream": {host}, "repo": {repo}, "digest": {d.String()}}
	what := fmt.Sprintf("peer %s: manifest %s", p.URL, d)
	if err := d.Validate(); err != nil {
		return "", nil, fmt.Errorf("%s: %v: %w", what, err, errdefs.ErrInvalidArgument)
	}
	payload, h, err := s.peerGet(ctx, p, ManifestPath, q, what, maxBytes)
	if err != nil {
		s.countLookup("manifest", err)
		return "", nil, err
	}
	if got := d.Algorithm().FromBytes(payload); got != d {
		err := fmt.Errorf("%s: the payload hashes to %s: %w", what, got, errdefs.ErrUnavailable)
		s.eject(p, err)
		s.countLookup("manifest", err)
		return "", nil, err
	}
	s.countLookup("manifest", nil)
	return h.Get("Content-Type"), payload, nil
}

// peerGet GETs path?q from p and returns the body of a 200, at most limit bytes.
func (s *Set) peerGet(ctx context.Context, p Peer, path string, q url.Values, what string, limit int64) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set(HeaderPeer, s.self.URL)
	resp, err := s.client.Do(req)
	if err != nil {
		err = fmt.Errorf("%s: %w: %w", what, err, errdefs.ErrUnavailable)
		if ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var class error = errdefs.ErrUnavailable
		switch resp.StatusCode {
		case http.StatusNotFound:
			class = errdefs.ErrNotFound
		case http.StatusUnauthorized, http.StatusForbidden:
			class = errdefs.ErrPermissionDenied
		}
		err := fmt.Errorf("%s: status %d: %w", what, resp.StatusCode, class)
		if ejects(resp.StatusCode) && ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, nil, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	switch {
	case err != nil:
		err = fmt.Errorf("%s: reading the answer: %w: %w", what, err, errdefs.ErrUnavailable)
	case int64(len(b)) > limit:
		err = fmt.Errorf("%s: the answer exceeds %d bytes: %w", what, limit, errdefs.ErrUnavailable)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.eject(p, err)
		}
		return nil, nil, err
	}
	return b, resp.Header, nil
}

func (s *Set) countLookup(kind string, err error) {
	if s.metrics == nil {
		return
	}
	result := lookupOK
	switch {
	case errdefs.IsNotFound(err):
		result = lookupUnknown
	case err != nil:
		result = lookupError
	}
	s.metrics.PeerLookups.WithLabelValues(kind, result).Inc()
}
