// Package api serves registryd's own endpoints under /hopless/v1/: the peer blob
// endpoint that other masters fill from, the peer tag and manifest endpoints that
// they ask when their upstream fails, the pins that nodes report (pins.go), and
// prefetch jobs. Peer requests authenticate with the peers' shared token, pins with
// the reporting node's own token (internal/nodetoken), prefetch with the API token.
// No token is ever logged.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/registryd/metrics"
	"github.com/hopless/hopless/registryd/peers"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
)

// Prefix is the path prefix of every endpoint here.
const Prefix = "/hopless/v1/"

const (
	maxBodyBytes = 1 << 20
	maxJobs      = 100
	maxImages    = 1000
)

// API handles /hopless/v1/.
type API struct {
	cache *cache.Cache
	store *store.Store
	peers *peers.Set // nil: no peer endpoint
	token string     // empty: prefetch is off
	// nodeKey checks node tokens (api.node_key_file); empty: pins are off. Pins
	// hold for pinTTL after each report, and forward sends them to the peers (nil
	// without peers).
	nodeKey []byte
	pinTTL  time.Duration
	forward *forwarder
	now     func() time.Time
	log     *slog.Logger
	metrics *metrics.Metrics
	// ctx is the server's lifetime; prefetch jobs run on it.
	ctx context.Context

	// tokenSum is token's SHA-256: comparing digests hides the token's length too.
	tokenSum [sha256.Size]byte

	mu     sync.Mutex
	jobs   map[string]*job
	order  []string
	nextID int
	// running counts the prefetch jobs' goroutines, for Close; closed, under mu,
	// refuses new jobs once Close has begun.
	running sync.WaitGroup
	closed  bool

	// workers is the size of the prefetch pool (cache.prefetch_workers); the pool
	// starts with the first job. queue holds the images waiting for a worker, under
	// mu; wake tells an idle worker that it has grown.
	workers int
	started bool
	queue   []task
	wake    chan struct{}
}

// task is one image of a prefetch job.
type task struct {
	j   *job
	i   int
	img string
}

// Config carries what the API needs.
type Config struct {
	Cache   *cache.Cache
	Store   *store.Store
	Peers   *peers.Set
	Token   string
	Log     *slog.Logger
	Metrics *metrics.Metrics
	// PrefetchWorkers is how many images prefetch jobs warm at once; <= 0 is
	// conf.DefaultPrefetchWorkers.
	PrefetchWorkers int
	// NodeKey is the key node tokens are derived from; empty disables pins.
	NodeKey []byte
	// PinTTL is how long a report of pins holds; <= 0 is conf.DefaultPinTTL.
	PinTTL time.Duration
	// Now is the clock of pin leases; nil is time.Now.
	Now func() time.Time
}

// New builds the API; prefetch jobs run until ctx ends.
func New(ctx context.Context, c Config) *API {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
	if c.PrefetchWorkers <= 0 {
		c.PrefetchWorkers = conf.DefaultPrefetchWorkers
	}
	if c.PinTTL <= 0 {
		c.PinTTL = conf.DefaultPinTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	a := &API{cache: c.Cache, store: c.Store, peers: c.Peers, token: c.Token, tokenSum: sha256.Sum256([]byte(c.Token)),
		nodeKey: c.NodeKey, pinTTL: c.PinTTL, now: c.Now,
		log: c.Log, metrics: c.Metrics, ctx: ctx, jobs: map[string]*job{},
		workers: c.PrefetchWorkers, wake: make(chan struct{}, 1)}
	if c.Peers != nil && len(c.NodeKey) > 0 {
		a.forward = newForwarder(ctx, c.Peers, c.Log, c.Metrics, c.Now)
	}
	return a
}

// Close waits for the prefetch jobs, which end once New's ctx is done. Jobs asked
// for afterwards are refused.
func (a *API) Close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.running.Wait()
	if a.forward != nil {
		a.forward.wait()
	}
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/hopless/v1")
	switch {
	case p == "/peer/blob" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		a.peerBlob(w, r)
	case p == "/peer/tag" && r.Method == http.MethodGet:
		a.peerTag(w, r)
	case p == "/peer/manifest" && r.Method == http.MethodGet:
		a.peerManifest(w, r)
	case p == "/pins" && r.Method == http.MethodPut:
		a.putPins(w, r)
	case p == "/peer/pins" && r.Method == http.MethodPut:
		a.putPeerPins(w, r)
	case p == "/prefetch" && r.Method == http.MethodPost:
		a.authorized(a.startPrefetch)(w, r)
	case strings.HasPrefix(p, "/prefetch/") && r.Method == http.MethodGet:
		a.authorized(a.getPrefetch)(w, r)
	default:
		writeError(w, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("no such endpoint: "+r.Method+" "+r.URL.Path))
	}
}

// authorized requires the API bearer token.
func (a *API) authorized(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.token == "" {
			writeError(w, http.StatusNotFound, errcode.ErrorCodeUnsupported.WithMessage("the API is disabled: api.token_file is not set"))
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="hopless"`)
			writeError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage("a valid API bearer token is required"))
			return
		}
		next(w, r)
	}
}

// peerBlob serves a blob to another master. It never asks a peer in turn. A failure
// of the upstream is answered as the /v2/ endpoints answer it, with the
// Hopless-Upstream-Error header, so that the asking master passes it on and does not
// count it against this one.
func (a *API) peerBlob(w http.ResponseWriter, r *http.Request) {
	if a.peers == nil || !a.peers.Authenticate(r) {
		writeError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage("a valid peer token is required"))
		return
	}
	a.metrics.PeerRequests.Inc()
	q := r.URL.Query()
	idx, ok := a.cache.Router().UpstreamByHost(q.Get("upstream"))
	if !ok {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeNameUnknown.WithMessage(fmt.Sprintf("upstream %q is not configured here", q.Get("upstream"))))
		return
	}
	repo := q.Get("repo")
	if !cache.ValidName(repo) {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage(fmt.Sprintf("invalid repository name %q", repo)))
		return
	}
	// The alias is a boundary here too: only repositories that a client name maps to.
	if !a.cache.Router().Reachable(idx, repo) {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeNameUnknown.WithMessage(fmt.Sprintf("repository %q is not configured", repo)))
		return
	}
	d, err := digest.Parse(q.Get("digest"))
	if err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage(fmt.Sprintf("invalid digest %q: %v", q.Get("digest"), err)))
		return
	}
	req := cache.Request{Route: route.Route{Upstream: idx, Repo: repo}, Name: repo, FromPeer: true}
	ctx, w := cache.UpstreamFailures(cache.WithRequest(r.Context(), req), w)
	if err := a.cache.ServeBlob(ctx, w, r, req, d); err != nil {
		// The asking peer reads 404 as a definite answer; anything else as this
		// master being unable to serve, which ejects it.
		if errors.Is(err, distribution.ErrBlobUnknown) {
			writeError(w, http.StatusNotFound, errcode.ErrorCodeBlobUnknown.WithMessage(fmt.Sprintf("blob %s is unknown to upstream %s", d, q.Get("upstream"))))
			return
		}
		writeRegistryError(w, err)
	}
}

// peerLookup authenticates a peer's tag or manifest lookup and parses its upstream
// and repository; on failure it has answered the request.
func (a *API) peerLookup(w http.ResponseWriter, r *http.Request) (int, string, bool) {
	if a.peers == nil || !a.peers.Authenticate(r) {
		writeError(w, http.StatusUnauthorized, errcode.ErrorCodeUnauthorized.WithMessage("a valid peer token is required"))
		return 0, "", false
	}
	q := r.URL.Query()
	idx, ok := a.cache.Router().UpstreamByHost(q.Get("upstream"))
	if !ok {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeNameUnknown.WithMessage(fmt.Sprintf("upstream %q is not configured here", q.Get("upstream"))))
		return 0, "", false
	}
	repo := q.Get("repo")
	if !cache.ValidName(repo) {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeNameInvalid.WithMessage(fmt.Sprintf("invalid repository name %q", repo)))
		return 0, "", false
	}
	return idx, repo, true
}

// peerTag tells another master what a tag last pointed to here, from the store only:
// the asking master's upstream failed and it has no answer of its own. It never asks
// the upstream or a peer, so lookups cannot loop. A tag not known here is 404.
func (a *API) peerTag(w http.ResponseWriter, r *http.Request) {
	idx, repo, ok := a.peerLookup(w, r)
	if !ok {
		return
	}
	tag := r.URL.Query().Get("tag")
	if !cache.ValidTag(tag) {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeTagInvalid.WithMessage(fmt.Sprintf("invalid tag %q", tag)))
		return
	}
	t, err := a.cache.LocalTag(r.Context(), idx, repo, tag)
	if errdefs.IsNotFound(err) {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeManifestUnknown.WithMessage(fmt.Sprintf("tag %q is not known here", tag)))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown.WithMessage("reading the tag failed"))
		a.log.Warn("answering a peer's tag lookup failed", "repo", repo, "tag", tag, "error", err)
		return
	}
	writeJSON(w, http.StatusOK, peers.TagAnswer{Digest: t.Digest, MediaType: t.MediaType, Size: t.Size, Validated: t.Validated})
}

// peerManifest serves a manifest by digest to another master, from the store only.
func (a *API) peerManifest(w http.ResponseWriter, r *http.Request) {
	upstreamIdx, repo, ok := a.peerLookup(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	d, err := digest.Parse(q.Get("digest"))
	if err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeDigestInvalid.WithMessage(fmt.Sprintf("invalid digest %q: %v", q.Get("digest"), err)))
		return
	}
	mt, payload, err := a.cache.LocalManifest(r.Context(), upstreamIdx, repo, d)
	if errdefs.IsNotFound(err) {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeManifestUnknown.WithMessage(fmt.Sprintf("manifest %s of %s is not stored here", d, repo)))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown.WithMessage("reading the manifest failed"))
		a.log.Warn("answering a peer's manifest lookup failed", "digest", d, "error", err)
		return
	}
	w.Header().Set("Content-Type", mt)
	w.Header().Set("Docker-Content-Digest", d.String())
	w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(payload)
}

type job struct {
	ID     string            `json:"id"`
	Images []*cache.Progress `json:"images"`
	// Queued and Running count the images waiting for a prefetch worker and being
	// warmed; each image's State says which.
	Queued  int  `json:"queued"`
	Running int  `json:"running"`
	Done    bool `json:"done"`
}

// Image states of a prefetch job.
const (
	StateQueued  = "queued"
	StateRunning = "running"
	StateDone    = "done"
)

// PrefetchRequest is the body of POST /hopless/v1/prefetch.
type PrefetchRequest struct {
	Images []string `json:"images"`
}

func (a *API) startPrefetch(w http.ResponseWriter, r *http.Request) {
	var req PrefetchRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage("bad prefetch body: "+err.Error()))
		return
	}
	if len(req.Images) == 0 || len(req.Images) > maxImages {
		writeError(w, http.StatusBadRequest, errcode.ErrorCodeUnknown.WithMessage(fmt.Sprintf("want 1..%d images, got %d", maxImages, len(req.Images))))
		return
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage("registryd is shutting down"))
		return
	}
	a.nextID++
	j := &job{ID: strconv.Itoa(a.nextID)}
	for _, im := range req.Images {
		j.Images = append(j.Images, &cache.Progress{Image: im, State: StateQueued})
	}
	j.Queued = len(j.Images)
	a.jobs[j.ID] = j
	a.order = append(a.order, j.ID)
	if len(a.order) > maxJobs {
		delete(a.jobs, a.order[0])
		a.order = a.order[1:]
	}
	snap := a.snapshot(j)
	a.enqueue(j, req.Images)
	a.mu.Unlock()

	a.log.Info("prefetch started", "job", j.ID, "images", len(req.Images))
	writeJSON(w, http.StatusAccepted, snap)
}

// enqueue queues the images of j for the prefetch pool, starting the pool with the
// first job; a.mu must be held.
func (a *API) enqueue(j *job, images []string) {
	for i, im := range images {
		a.queue = append(a.queue, task{j: j, i: i, img: im})
	}
	if !a.started {
		a.started = true
		for range a.workers {
			a.running.Go(a.worker)
		}
	}
	a.signal()
}

// signal wakes an idle worker; it never blocks.
func (a *API) signal() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// worker warms queued images one at a time until the API's ctx ends.
func (a *API) worker() {
	for {
		a.mu.Lock()
		if len(a.queue) == 0 {
			a.mu.Unlock()
			select {
			case <-a.wake:
				continue
			case <-a.ctx.Done():
				return
			}
		}
		t := a.queue[0]
		a.queue[0] = task{}
		a.queue = a.queue[1:]
		if len(a.queue) > 0 {
			a.signal()
		}
		t.j.Queued--
		t.j.Running++
		t.j.Images[t.i].State = StateRunning
		a.mu.Unlock()
		a.runImage(t)
		if a.ctx.Err() != nil {
			return
		}
	}
}

func (a *API) runImage(t task) {
	j := t.j
	err := a.cache.Prefetch(a.ctx, t.img, func(p cache.Progress) {
		p.State = StateRunning
		a.mu.Lock()
		*j.Images[t.i] = p
		a.mu.Unlock()
	})
	if err != nil {
		a.log.Warn("prefetch failed", "job", j.ID, "image", t.img, "error", err)
	}
	a.mu.Lock()
	j.Images[t.i].State = StateDone
	j.Images[t.i].Done = true
	j.Running--
	done := j.Running == 0 && j.Queued == 0
	j.Done = done
	a.mu.Unlock()
	if done {
		a.log.Info("prefetch finished", "job", j.ID)
	}
}

func (a *API) getPrefetch(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.Path, "/hopless/v1/prefetch/")
	a.mu.Lock()
	j, ok := a.jobs[id]
	var snap job
	if ok {
		snap = a.snapshot(j)
	}
	a.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, errcode.ErrorCodeUnknown.WithMessage(fmt.Sprintf("no prefetch job %q", id)))
		return
	}
	writeJSON(w, http.StatusOK, snap)
}

// snapshot copies a job; a.mu must be held.
func (a *API) snapshot(j *job) job {
	s := job{ID: j.ID, Queued: j.Queued, Running: j.Running, Done: j.Done}
	for _, p := range j.Images {
		c := *p
		s.Images = append(s.Images, &c)
	}
	return s
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, e errcode.Error) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errcode.Errors{e})
}

// writeRegistryError writes an error from the cache with the status its code carries.
func writeRegistryError(w http.ResponseWriter, err error) {
	_ = errcode.ServeJSON(w, err)
}
