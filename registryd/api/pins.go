package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/store"
)

const (
	// maxForwardDigests bounds the manifests of one batch of leases sent to a peer,
	// to keep its body well under maxBodyBytes.
	maxForwardDigests = 8000
	// forwardTimeout bounds one batch sent to a peer.
	forwardTimeout = 10 * time.Second
	// forwardBackoff and forwardMaxBackoff pace the retries to a peer that failed.
	forwardBackoff    = 500 * time.Millisecond
	forwardMaxBackoff = 30 * time.Second
	// peerClockSlack is how far past pin_ttl a peer's lease may reach, for clocks
	// that differ a little between masters.
	peerClockSlack = time.Minute
)

// Pins is the body of PUT /hopless/v1/pins: the images in use on one node. Each call
// renews the node's lease for api.pin_ttl and replaces the pins of its last one.
// Source is the node's name, and must be the node that the bearer token names.
type Pins struct {
	Source string `json:"source"`
	Images []struct {
		Image  string `json:"image"`
		Digest string `json:"digest"`
	} `json:"images"`
}

// PinsAnswer is the answer to PUT /hopless/v1/pins: the node should report again
// well before Expires (a third of TTLSeconds is a good period).
type PinsAnswer struct {
	Source     string    `json:"source"`
	Pinned     int       `json:"pinned"`
	Expires    time.Time `json:"expires"`
	TTLSeconds int       `json:"ttl_seconds"`
}

// PeerPins is the body of PUT /hopless/v1/peer/pins: leases that nodes reported to
// another master.
type PeerPins struct {
	Leases []store.Lease `json:"leases"`
}

// nodeAuthorized returns the node that the request's bearer token was derived for;
// on failure it has answered the request.
func (a *API) nodeAuthorized(w http.ResponseWriter, r *http.Request) (string, bool) {
	if len(a.nodeKey) == 0 {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("pins are disabled: api.node_key_file is not set"))
		return "", false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	node, valid := nodetoken.Verify(a.nodeKey, tok)
	if !ok || !valid {
		w.Header().Set("WWW-Authenticate", `Bearer realm="hopless"`)
		writeError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage("a valid node token is required (registryd node-token)"))
		return "", false
	}
	return node, true
}

func (a *API) putPins(w http.ResponseWriter, r *http.Request) {
	node, ok := a.nodeAuthorized(w, r)
	if !ok {
		return
	}
	var p Pins
	if err := decodeBody(r, &p); err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage("bad pins body: "+err.Error()))
		return
	}
	if p.Source != node {
		writeError(w, http.StatusForbidden, errcode.ErrorCodeDenied.WithMessage(fmt.Sprintf("the token of node %q cannot report pins of %q", node, p.Source)))
		return
	}
	if len(p.Images) > maxImages {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage(fmt.Sprintf("too many pinned images: %d > %d", len(p.Images), maxImages)))
		return
	}
	ds := make([]digest.Digest, 0, len(p.Images))
	for i, im := range p.Images {
		d, err := digest.Parse(im.Digest)
		if err != nil {
			writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage(fmt.Sprintf("images[%d].digest %q: %v", i, im.Digest, err)))
			return
		}
		ds = append(ds, d)
	}
	now := a.now()
	l := store.Lease{Source: node, Manifests: ds, Reported: now, Expires: now.Add(a.pinTTL)}
	if _, err := a.store.SetLease(r.Context(), l); err != nil {
		if errdefs.IsResourceExhausted(err) {
			a.log.Warn("pins refused", "source", node, "error", err)
			writeError(w, http.StatusTooManyRequests, errcode.ErrorCodeTooManyRequests.WithMessage(
				fmt.Sprintf("pins of %s refused: as many nodes hold pins as api.max_pin_sources allows", node)))
			return
		}
		// The error names storage paths: the log gets it, the client its kind.
		a.log.Warn("storing pins failed", "source", node, "error", err)
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown.WithMessage("storing the pins of "+node+" failed; see registryd's log"))
		return
	}
	if a.forward != nil {
		a.forward.add(l)
	}
	a.log.Debug("pins renewed", "source", node, "images", len(ds), "expires", l.Expires)
	writeJSON(w, http.StatusOK, PinsAnswer{Source: node, Pinned: len(ds), Expires: l.Expires, TTLSeconds: int(a.pinTTL / time.Second)})
}

// putPeerPins takes the leases that nodes reported to another master. They are not
// sent on: the master they were reported to sends them to every peer.
func (a *API) putPeerPins(w http.ResponseWriter, r *http.Request) {
	if a.peers == nil || !a.peers.Authenticate(r) {
		writeError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage("a valid peer token is required"))
		return
	}
	if len(a.nodeKey) == 0 {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("pins are disabled: api.node_key_file is not set"))
		return
	}
	var p PeerPins
	if err := decodeBody(r, &p); err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage("bad peer pins body: "+err.Error()))
		return
	}
	latest := a.now().Add(a.pinTTL + peerClockSlack)
	applied := 0
	for i, l := range p.Leases {
		if !nodetoken.ValidName(l.Source) || len(l.Manifests) > maxImages {
			writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage(fmt.Sprintf("leases[%d]: bad source %q or more than %d manifests", i, l.Source, maxImages)))
			return
		}
		if l.Expires.After(latest) {
			l.Expires = latest
		}
		ok, err := a.store.SetLease(r.Context(), l)
		switch {
		case errdefs.IsInvalidArgument(err):
			writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage(fmt.Sprintf("leases[%d]: %v", i, err)))
			return
		case err != nil:
			a.log.Warn("storing a peer's pins failed", "source", l.Source, "error", err)
		case ok:
			applied++
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{"applied": applied})
}

// forwarder sends the leases that nodes report here to every peer, so that a pin
// reported to one master protects the image on all. Each peer has a queue that
// keeps the latest lease per source, so it holds at most api.max_pin_sources
// leases however long the peer is away, and one goroutine that sends the queue in
// batches and retries with backoff.
type forwarder struct {
	ctx     context.Context
	set     *peers.Set
	log     *slog.Logger
	metrics *metrics.Metrics
	now     func() time.Time

	mu     sync.Mutex
	queues map[string]*leaseQueue // by peer URL
	wg     sync.WaitGroup
}

type leaseQueue struct {
	peer    peers.Peer
	pending map[string]store.Lease // by source, under forwarder.mu
	wake    chan struct{}
}

func newForwarder(ctx context.Context, set *peers.Set, log *slog.Logger, m *metrics.Metrics, now func() time.Time) *forwarder {
	return &forwarder{ctx: ctx, set: set, log: log, metrics: m, now: now, queues: map[string]*leaseQueue{}}
}

// add queues l for every peer known now.
func (f *forwarder) add(l store.Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return
	}
	for _, p := range f.set.All() {
		q := f.queues[p.URL]
		if q == nil {
			q = &leaseQueue{peer: p, pending: map[string]store.Lease{}, wake: make(chan struct{}, 1)}
			f.queues[p.URL] = q
			f.wg.Go(func() { f.run(q) })
		}
		if old, ok := q.pending[l.Source]; !ok || !old.Reported.After(l.Reported) {
			q.pending[l.Source] = l
		}
		signal(q.wake)
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// wait waits for the forwarder's context to end.
func (f *forwarder) wait() { f.wg.Wait() }

func (f *forwarder) run(q *leaseQueue) {
	backoff := forwardBackoff
	for {
		select {
		case <-f.ctx.Done():
			return
		case <-q.wake:
		}
		batch := f.take(q)
		if len(batch) == 0 {
			continue
		}
		err := f.send(q.peer, batch)
		if f.ctx.Err() != nil {
			return
		}
		if err == nil {
			f.count("ok")
			backoff = forwardBackoff
			f.mu.Lock()
			if len(q.pending) > 0 {
				signal(q.wake)
			}
			f.mu.Unlock()
			continue
		}
		f.count("error")
		f.log.Warn("sending pins to a peer failed; will retry", "peer", q.peer.URL, "leases", len(batch), "retry_in", backoff, "error", err)
		f.putBack(q, batch)
		select {
		case <-f.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, forwardMaxBackoff)
		signal(q.wake)
	}
}

// take removes a batch of leases from q.
func (f *forwarder) take(q *leaseQueue) []store.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	var batch []store.Lease
	n := 0
	for src, l := range q.pending {
		if n > 0 && n+len(l.Manifests) > maxForwardDigests {
			break
		}
		batch = append(batch, l)
		n += len(l.Manifests)
		delete(q.pending, src)
	}
	return batch
}

// putBack queues again the leases of a failed batch that no newer report replaced
// and that still hold.
func (f *forwarder) putBack(q *leaseQueue, batch []store.Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	for _, l := range batch {
		if _, newer := q.pending[l.Source]; !newer && now.Before(l.Expires) {
			q.pending[l.Source] = l
		}
	}
}

func (f *forwarder) send(p peers.Peer, batch []store.Lease) error {
	body, err := json.Marshal(PeerPins{Leases: batch})
	if err != nil {
		return fmt.Errorf("encoding pins for %s: %w", p.URL, err)
	}
	ctx, cancel := context.WithTimeout(f.ctx, forwardTimeout)
	defer cancel()
	return f.set.PutPins(ctx, p, body)
}

func (f *forwarder) count(result string) {
	if f.metrics != nil {
		f.metrics.PinForwards.WithLabelValues(result).Inc()
	}
}
