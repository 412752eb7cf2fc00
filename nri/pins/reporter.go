package pins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/api"
)

const (
	// MaxImages is the most digests one report carries: registryd's bound.
	MaxImages = 1000
	// DefaultMaxContainers bounds the containers tracked.
	DefaultMaxContainers = 10000
	// DefaultDebounce is how long changes are gathered before they are reported.
	DefaultDebounce = 500 * time.Millisecond

	// minBackoff and maxBackoff pace the retries of a failed report and of a
	// failed resolution; a report that a master rejected waits maxBackoff.
	minBackoff = time.Second
	maxBackoff = time.Minute
	// requestTimeout bounds one report to one master, resolveTimeout one
	// resolution.
	requestTimeout = 30 * time.Second
	resolveTimeout = 10 * time.Second
)

// Config configures a Reporter.
type Config struct {
	// Node is the node's name: the source of its pins, which its token must name.
	Node string
	// Masters are the base URLs of the registryds to report to, e.g. node.toml's
	// endpoint URLs ("https://127.0.1.1:5001"). Each report goes to one of them.
	Masters []string
	// TokenFile holds the node's token (registryd node-token), mode 0600 or
	// stricter. It is read once, by New.
	TokenFile string
	// TLS verifies the masters: with a CA, only the CA. Plain http:// masters need
	// TLS.Insecure.
	TLS conf.TLS
	// Resolve returns the manifest digest of an image that a container was
	// reported without one for (the plugin asks CRI's ImageStatus). It is called in
	// the background, one image at a time, never by Set, Remove or Replace, and
	// must return when its ctx ends. Required.
	Resolve func(ctx context.Context, image string) (digest.Digest, error)
	// MaxContainers bounds the containers tracked; <= 0 is DefaultMaxContainers.
	MaxContainers int
	// Debounce is how long changes are gathered before a report; <= 0 is
	// DefaultDebounce.
	Debounce time.Duration
	// Log is where the reporter logs; nil discards.
	Log *slog.Logger
	// Metrics records the reports; nil records nothing.
	Metrics *Metrics
	// Clock is what Run and the resolver wait on; nil is the real clock.
	Clock Clock
}

// Reporter keeps the images that the node's containers use and reports them to the
// masters. Set, Remove and Replace are safe for concurrent use and never block on
// the network; Run does the reporting.
type Reporter struct {
	node     string
	masters  []string
	clients  []*api.Client
	resolve  func(ctx context.Context, image string) (digest.Digest, error)
	debounce time.Duration
	log      *slog.Logger
	metrics  *Metrics
	clock    Clock

	// changed tells Run that the pins may have changed; resolveWake tells the
	// resolver that images are pending. Both hold one signal and never block.
	changed     chan struct{}
	resolveWake chan struct{}
	running     atomic.Bool

	mu  sync.Mutex
	set *pinSet
	// gen counts the changes of the pins, so that a rejection is logged once per
	// change.
	gen uint64
	// replaced is set by the first Replace: a previous run may have left pins on
	// the masters, so even an empty set is reported.
	replaced bool
	// full is set while the container bound holds containers out; it was logged.
	full bool
}

// New returns a Reporter for c; it reads the token file and the TLS files.
func New(c Config) (*Reporter, error) {
	if !nodetoken.ValidName(c.Node) {
		return nil, fmt.Errorf("pins: node name %q: want letters, digits, '.', '_' or '-': %w", c.Node, errdefs.ErrInvalidArgument)
	}
	if len(c.Masters) == 0 {
		return nil, fmt.Errorf("pins: no master to report to: %w", errdefs.ErrInvalidArgument)
	}
	if c.Resolve == nil {
		return nil, fmt.Errorf("pins: Resolve is required: %w", errdefs.ErrInvalidArgument)
	}
	for i, m := range c.Masters {
		u, err := url.Parse(m)
		if err != nil {
			return nil, fmt.Errorf("pins: master %d: %w", i, err)
		}
		if (u.Scheme != "https" && (u.Scheme != "http" || !c.TLS.Insecure)) || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("pins: master %q: want https://host[:port] (http:// with tls.insecure): %w", m, errdefs.ErrInvalidArgument)
		}
	}
	token, err := conf.ReadToken(c.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("pins: reading the node token: %w", err)
	}
	tc, err := c.TLS.ClientConfig(false)
	if err != nil {
		return nil, fmt.Errorf("pins: building the masters' TLS configuration: %w", err)
	}
	if c.MaxContainers <= 0 {
		c.MaxContainers = DefaultMaxContainers
	}
	if c.Debounce <= 0 {
		c.Debounce = DefaultDebounce
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	r := &Reporter{
		node: c.Node, masters: slices.Clone(c.Masters), resolve: c.Resolve, debounce: c.Debounce,
		log: c.Log.With("node", c.Node), metrics: c.Metrics, clock: c.Clock,
		changed: make(chan struct{}, 1), resolveWake: make(chan struct{}, 1),
		set: newPinSet(c.MaxContainers, MaxImages),
	}
	for _, m := range c.Masters {
		r.clients = append(r.clients, api.NewClient(m, token, tc.Clone()))
	}
	return r, nil
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// checkRef returns ref with a digest that is valid or empty: an invalid digest is
// logged and dropped, so that the image is resolved by name instead.
func (r *Reporter) checkRef(id string, ref ImageRef) (ImageRef, error) {
	if ref.Digest != "" {
		if err := ref.Digest.Validate(); err != nil {
			if ref.Image == "" {
				return ref, fmt.Errorf("pins: container %s: digest %q: %w", id, ref.Digest, errors.Join(err, errdefs.ErrInvalidArgument))
			}
			r.log.Warn("a container's image digest is invalid; resolving its image by name instead", "container", id, "image", ref.Image, "digest", ref.Digest, "error", err)
			ref.Digest = ""
		}
	}
	if ref.Image == "" {
		if ref.Digest == "" {
			return ref, fmt.Errorf("pins: container %s: neither image nor digest: %w", id, errdefs.ErrInvalidArgument)
		}
		ref.Image = ref.Digest.String()
	}
	if id == "" {
		return ref, fmt.Errorf("pins: image %s: empty container ID: %w", ref.Image, errdefs.ErrInvalidArgument)
	}
	return ref, nil
}

// Set tracks containerID as using image, whose manifest digest is d. With d empty
// or invalid, the container is pending until image is resolved. It fails, tracking
// nothing, only when containerID is empty or neither image nor a valid d is given.
func (r *Reporter) Set(containerID, image string, d digest.Digest) error {
	ref, err := r.checkRef(containerID, ImageRef{Image: image, Digest: d})
	if err != nil {
		return err
	}
	r.mu.Lock()
	changed, evicted := r.set.set(containerID, ref)
	full := r.afterChange(changed, evicted != "", ref.Digest == "")
	r.mu.Unlock()
	if full {
		r.logFull()
	}
	if evicted != "" {
		r.log.Debug("a container gave way to a new one: too many containers", "evicted", evicted, "container", containerID)
	}
	return nil
}

// Remove forgets containerID.
func (r *Reporter) Remove(containerID string) {
	r.mu.Lock()
	changed := r.set.remove(containerID)
	r.afterChange(changed, false, false)
	r.mu.Unlock()
}

// Replace tracks exactly the containers of refs (by container ID), e.g. those that
// NRI's Synchronize lists after a reconnect. Containers tracked already with the same
// image keep their pins, so a reconnect that lists the same containers sends
// nothing new. After the first Replace even an empty set is reported, since a
// previous run may have left pins on the masters. Entries that Set would refuse are
// left out, and returned as one error.
func (r *Reporter) Replace(refs map[string]ImageRef) error {
	var errs []error
	valid := make(map[string]ImageRef, len(refs))
	pending := false
	for id, ref := range refs {
		ref, err := r.checkRef(id, ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		valid[id] = ref
		pending = pending || ref.Digest == ""
	}
	r.mu.Lock()
	changed, evicted := r.set.replace(valid)
	if !r.replaced {
		r.replaced = true
		changed = true
	}
	full := r.afterChange(changed, evicted > 0, pending)
	r.mu.Unlock()
	if full {
		r.logFull()
	}
	if evicted > 0 {
		r.log.Debug("containers left out: too many containers", "containers", len(valid), "left_out", evicted)
	}
	return errors.Join(errs...)
}

// afterChange signals Run and the resolver, and reports whether the container bound
// began to hold containers out, to be logged; r.mu must be held.
func (r *Reporter) afterChange(changed, evicted, pending bool) (full bool) {
	if changed {
		r.gen++
		signal(r.changed)
	}
	if pending {
		signal(r.resolveWake)
	}
	switch {
	case evicted && !r.full:
		r.full = true
		return true
	case !evicted && r.full && len(r.set.containers) < r.set.maxContainers:
		r.full = false
	}
	return false
}

func (r *Reporter) logFull() {
	r.log.Warn("too many containers: the least recently added ones are no longer tracked, and their images may lose their pins",
		"max_containers", r.set.maxContainers)
}

// snapshot is the pins to report now.
type snapshot struct {
	pins     []pin
	total    int
	gen      uint64
	replaced bool
}

func (r *Reporter) snapshot() snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	pins, total := r.set.snapshot()
	return snapshot{pins: pins, total: total, gen: r.gen, replaced: r.replaced}
}

func digestsOf(pins []pin) []digest.Digest {
	ds := make([]digest.Digest, len(pins))
	for i, p := range pins {
		ds[i] = p.Digest
	}
	return ds
}

// runState is Run's: what the masters hold and when to report next.
type runState struct {
	// held is what the last successful report pinned, sorted; heldKnown is unset
	// before the first.
	held      []digest.Digest
	heldKnown bool
	lastOK    time.Time
	// period is a third of the lease the masters last answered.
	period time.Duration
	// dirtySince is when a change not yet reported arrived; retryAt when a failed
	// report is tried again, after backoff.
	dirtySince time.Time
	retryAt    time.Time
	backoff    time.Duration
	// next is the master to try first: the last that answered.
	next int
	// logged is the rejection last logged at error level per master, and gen the
	// change it was logged for.
	logged    map[string]string
	loggedGen uint64
	// capped is set while the pins exceed MaxImages; it was logged.
	capped bool
}

// wake is when Run has something to do next; false: only after a change.
func (s *runState) wake(debounce time.Duration) (time.Time, bool) {
	switch {
	case !s.retryAt.IsZero():
		return s.retryAt, true
	case !s.dirtySince.IsZero():
		return s.dirtySince.Add(debounce), true
	case s.heldKnown && len(s.held) > 0:
		return s.lastOK.Add(s.period), true
	}
	return time.Time{}, false
}

// due says whether want differs from what the masters hold, and whether the lease
// is due for renewal at now. replaced is whether Replace was called.
func (s *runState) due(want []digest.Digest, replaced bool, now time.Time) (changed, renew bool) {
	if !s.heldKnown {
		// A fresh node reports nothing until it has pins, unless a Replace said
		// that a previous run may have left some.
		return len(want) > 0 || replaced, false
	}
	return !slices.Equal(want, s.held), len(s.held) > 0 && !now.Before(s.lastOK.Add(s.period))
}

// Run reports the pins until ctx ends: a debounce after each change, every third
// of the lease that the masters answered while pins are held, and after failures
// with backoff. It also runs the resolver of pending images. Run may be called
// once; it returns nil when ctx ends.
func (r *Reporter) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("pins: Run was called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.resolveLoop(ctx) })
	defer wg.Wait()

	s := &runState{period: conf.DefaultPinTTL / 3, backoff: minBackoff, logged: map[string]string{}}
	for {
		var timer <-chan time.Time
		if at, ok := s.wake(r.debounce); ok {
			timer = r.clock.After(max(at.Sub(r.clock.Now()), 0))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.changed:
			if s.dirtySince.IsZero() {
				s.dirtySince = r.clock.Now()
			}
			continue
		case <-timer:
		}
		now := r.clock.Now()
		if at, ok := s.wake(r.debounce); ok && !now.Before(at) {
			r.report(ctx, s, now)
		}
	}
}

// report sends the pins if they changed since the masters last took them, or the
// lease is due for renewal.
func (r *Reporter) report(ctx context.Context, s *runState, now time.Time) {
	// The snapshot covers every change signalled so far.
	select {
	case <-r.changed:
	default:
	}
	snap := r.snapshot()
	want := digestsOf(snap.pins)
	changed, renew := s.due(want, snap.replaced, now)
	s.dirtySince = time.Time{}
	if !changed && !renew {
		s.retryAt = time.Time{}
		return
	}
	switch {
	case snap.total > len(snap.pins) && !s.capped:
		s.capped = true
		r.log.Warn("too many images in use: only those of the most recently added containers are pinned", "images", snap.total, "pinned", len(snap.pins))
	case snap.total <= len(snap.pins):
		s.capped = false
	}

	a, rejected, err := r.send(ctx, s, snap)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		wait := s.backoff
		if rejected {
			wait = maxBackoff
		} else {
			s.backoff = min(2*s.backoff, maxBackoff)
		}
		// From the end of the attempt, which timeouts may have made long.
		end := r.clock.Now()
		s.retryAt = end.Add(jitter(wait))
		if !rejected {
			r.log.Warn("reporting pins failed; will retry", "images", len(want), "retry_in", s.retryAt.Sub(end), "error", err)
		}
		return
	}
	recovered := !s.retryAt.IsZero()
	s.held, s.heldKnown, s.lastOK = want, true, now
	s.retryAt, s.backoff = time.Time{}, minBackoff
	clear(s.logged)
	ttl := time.Duration(a.TTLSeconds) * time.Second
	if ttl <= 0 {
		ttl = conf.DefaultPinTTL
	}
	s.period = ttl / 3
	r.metrics.succeeded(a.Pinned, float64(now.UnixNano())/1e9)
	lvl := slog.LevelDebug
	if changed || recovered {
		lvl = slog.LevelInfo
	}
	r.log.Log(ctx, lvl, "pins reported", "master", r.masters[s.next], "images", a.Pinned, "expires", a.Expires, "renew_in", s.period)
}

// send reports snap to one master, trying each in turn from s.next. rejected is set
// when a master answered with a 4xx other than 429.
func (r *Reporter) send(ctx context.Context, s *runState, snap snapshot) (api.PinsAnswer, bool, error) {
	body := api.Pins{Source: r.node}
	for _, p := range snap.pins {
		body.Images = append(body.Images, struct {
			Image  string `json:"image"`
			Digest string `json:"digest"`
		}{Image: p.Image, Digest: string(p.Digest)})
	}
	if snap.gen != s.loggedGen {
		clear(s.logged)
		s.loggedGen = snap.gen
	}
	var errs []error
	rejected := false
	for i := range r.clients {
		idx := (s.next + i) % len(r.clients)
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		a, err := r.clients[idx].PutPins(rctx, body)
		cancel()
		if err == nil {
			r.metrics.report(ResultOK)
			s.next = idx
			return a, false, nil
		}
		if ctx.Err() != nil {
			return api.PinsAnswer{}, false, fmt.Errorf("reporting pins: %w", ctx.Err())
		}
		errs = append(errs, err)
		se, ok := errors.AsType[*api.StatusError](err)
		switch {
		case ok && se.StatusCode == 429:
			r.metrics.report(ResultThrottled)
		case ok && se.StatusCode >= 400 && se.StatusCode < 500:
			r.metrics.report(ResultRejected)
			rejected = true
			r.logRejection(s, r.masters[idx], se)
		default:
			r.metrics.report(ResultError)
		}
	}
	// The next attempt starts with another master.
	s.next = (s.next + 1) % len(r.clients)
	return api.PinsAnswer{}, rejected, errors.Join(errs...)
}

// logRejection logs a master's rejection at error level once per master, message
// and change of the pins; repeats are logged at debug level.
func (r *Reporter) logRejection(s *runState, master string, se *api.StatusError) {
	msg := errorMessage(se.Body)
	key := se.Status + " " + msg
	lvl := slog.LevelDebug
	if s.logged[master] != key {
		s.logged[master] = key
		lvl = slog.LevelError
	}
	hint := "the master refused the report"
	switch se.StatusCode {
	case 401:
		hint = "the master does not accept the node's token: is it derived under that master's api.node_key_file (registryd node-token)?"
	case 403:
		hint = "the node's token is another node's: the token file must hold the token of this node"
	case 404:
		hint = "the master does not take pins: api.node_key_file is not set there, or the URL is not a registryd"
	}
	r.log.Log(context.Background(), lvl, "a master rejected the node's pins; retrying about every "+maxBackoff.String()+": "+hint,
		"master", master, "status", se.Status, "message", msg)
}

// errorMessage is the message of registryd's errcode JSON, or the body itself.
func errorMessage(body string) string {
	var e struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal([]byte(body), &e) == nil && len(e.Errors) > 0 {
		return e.Errors[0].Code + ": " + e.Errors[0].Message
	}
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	return body
}

// jitter is d less up to half of it, at random, so that nodes that failed together
// retry apart.
func jitter(d time.Duration) time.Duration {
	return d - rand.N(d/2+1)
}
