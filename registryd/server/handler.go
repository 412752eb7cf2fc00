package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/registryd/space"
)

// Request kinds, the values of the kind label and log field.
const (
	kindManifest  = "manifest"
	kindBlob      = "blob"
	kindTags      = "tags"
	kindReferrers = "referrers"
	kindUpload    = "upload"
	kindBase      = "base"
	kindHealth    = "health"
	kindPeer      = "peer"
	kindAPI       = "api"
	kindOther     = "other"
)

// routes is the client-facing handler: health endpoints, registryd's own API, the
// read-only guard, and input validation and routing in front of distribution, all
// wrapped in one access log and metrics record.
func (s *Server) routes(registry http.Handler) http.Handler {
	return s.observe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/healthz":
			writeText(w, http.StatusOK, "ok")
		case r.URL.Path == "/readyz":
			if what, err := s.ready(); err != nil {
				// The reason, which names local paths, goes to the log only.
				s.log.Warn("not ready", "error", err)
				writeText(w, http.StatusServiceUnavailable, "not ready: "+what)
				return
			}
			writeText(w, http.StatusOK, s.readyBody())
		case strings.HasPrefix(r.URL.Path, api.Prefix):
			boundBody(w, r)
			s.api.ServeHTTP(w, r)
		case isV2(r.URL.Path):
			s.serveV2(w, r, registry)
		default:
			writeRegistryError(w, http.StatusNotFound, "UNSUPPORTED", "no such endpoint: "+r.URL.Path)
		}
	}))
}

const readOnlyMessage = "registryd is a read-only pull-through cache"

// serveV2 refuses writes, validates a /v2/ request and hands it to distribution with
// its route in the context, and with the cache's note of upstream failures, so that
// a request that fails because of the upstream says so (502, 504 or 429 with the
// Hopless-Upstream-Error header) while registryd's own failures stay 500 or 503.
func (s *Server) serveV2(w http.ResponseWriter, r *http.Request, registry http.Handler) {
	name, kind, ref := splitV2(r.URL.Path)
	switch {
	case kind == kindUpload:
		// No method is allowed on an upload.
		w.Header().Set("Allow", "")
		writeRegistryError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", readOnlyMessage)
		return
	case isWrite(r.Method):
		w.Header().Set("Allow", "GET, HEAD")
		writeRegistryError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", readOnlyMessage)
		return
	case badPath(r.URL.Path):
		writeRegistryError(w, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid path %q: empty or dot segments", r.URL.Path))
		return
	case r.URL.Path == "/v2/_catalog":
		writeRegistryError(w, http.StatusNotFound, "UNSUPPORTED", "registryd does not list repositories: a master knows only what it has cached; ask the upstream for its catalog")
		return
	}
	req, status, code, msg := s.route(r, name, kind, ref)
	if status != 0 {
		writeRegistryError(w, status, code, msg)
		return
	}
	ctx, w := cache.UpstreamFailures(r.Context(), w)
	if req != nil {
		ctx = cache.WithRequest(ctx, *req)
	}
	switch kind {
	case kindTags, kindReferrers:
		// Served here, not by distribution, and so authorized here as distribution
		// authorizes its routes.
		if !s.authorize(w, r.WithContext(ctx), name) {
			return
		}
		if kind == kindTags {
			s.serveTags(ctx, w, r, *req)
		} else {
			s.serveReferrers(ctx, w, r, *req, digest.Digest(ref))
		}
		return
	}
	registry.ServeHTTP(w, r.WithContext(ctx))
}

// route validates a /v2/ request's repository name and reference and picks its
// upstream. It returns a nil Request for routes without a repository (/v2/), or an
// HTTP status, registry error code and message for bad input.
func (s *Server) route(r *http.Request, name, kind, ref string) (*cache.Request, int, string, string) {
	if name == "" {
		return nil, 0, "", ""
	}
	if !cache.ValidName(name) {
		return nil, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("invalid repository name %q", name)
	}
	switch kind {
	case kindBlob, kindReferrers:
		if _, err := digest.Parse(ref); err != nil {
			return nil, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("invalid digest %q: %v", ref, err)
		}
	case kindManifest:
		if strings.Contains(ref, ":") {
			if _, err := digest.Parse(ref); err != nil {
				return nil, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("invalid digest %q: %v", ref, err)
			}
		} else if !tagRE.MatchString(ref) {
			return nil, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("invalid tag %q", ref)
		}
	}
	rt, err := s.cache.Router().Route(name, r.URL.Query().Get("ns"))
	if err != nil {
		if errdefs.IsPermissionDenied(err) {
			return nil, http.StatusForbidden, "DENIED", err.Error()
		}
		return nil, http.StatusNotFound, "NAME_UNKNOWN", err.Error()
	}
	return &cache.Request{Route: rt, Name: name}, 0, "", ""
}

// badPath reports a /v2/ path with an empty, "." or ".." segment. distribution's
// router would clean it and redirect to another name.
func badPath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok || rest == "" {
		return false
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

var tagRE = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// splitV2 splits /v2/<name>/(manifests|blobs)/<ref>, /v2/<name>/tags/list and
// /v2/<name>/blobs/uploads[/<id>]. Other paths have no name.
func splitV2(p string) (name, kind, ref string) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", ""
	}
	parts := strings.Split(rest, "/")
	n := len(parts)
	if n < 3 {
		return "", "", ""
	}
	switch {
	case parts[n-2] == "manifests":
		return strings.Join(parts[:n-2], "/"), kindManifest, parts[n-1]
	case parts[n-2] == "blobs" && parts[n-1] != "uploads":
		return strings.Join(parts[:n-2], "/"), kindBlob, parts[n-1]
	case parts[n-2] == "tags" && parts[n-1] == "list":
		return strings.Join(parts[:n-2], "/"), kindTags, ""
	case parts[n-2] == "referrers":
		return strings.Join(parts[:n-2], "/"), kindReferrers, parts[n-1]
	case parts[n-2] == "blobs" && parts[n-1] == "uploads":
		return strings.Join(parts[:n-2], "/"), kindUpload, ""
	case n >= 4 && parts[n-3] == "blobs" && parts[n-2] == "uploads":
		return strings.Join(parts[:n-3], "/"), kindUpload, parts[n-1]
	}
	return "", "", ""
}

func writeRegistryError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(status)
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	_, _ = w.Write(append(body, '\n'))
}

// ready reports why the server cannot serve pulls, or nil: what is not ready, for
// clients, and the error, for the log. A storage directory that has no room for the
// probe file still serves what it holds: readyBody reports that.
func (s *Server) ready() (string, error) {
	if s.app == nil {
		return "distribution is not built", fmt.Errorf("distribution app is not built")
	}
	if why, err := checkDir(s.cfg.Storage.Spool); err != nil && !space.Is(err) {
		return "storage.spool " + why, fmt.Errorf("storage.spool: %w", err)
	}
	if s.cfg.Storage.Driver == "filesystem" {
		if why, err := checkDir(s.cfg.Storage.Root); err != nil && !space.Is(err) {
			return "storage.root " + why, fmt.Errorf("storage.root: %w", err)
		}
	}
	return "", nil
}

// readyBody is /readyz's answer when ready: "ok", then a line for each condition that
// degrades the service without stopping it: the store's index being rebuilt in the
// background (eviction waits), and the store unable to take new content for lack of
// space (it says why). The status stays 200: a master that serves its cached content
// and streams misses through still serves pulls, and taking it out of a Service would
// only move its load to the others. The storage directories are named by their
// settings, not their paths.
func (s *Server) readyBody() string {
	lines := []string{"ok"}
	if s.store.Rebuilding() {
		lines = append(lines, rebuildingReason)
	}
	if why := s.cannotWrite(); why != "" {
		lines = append(lines, why)
	}
	return strings.Join(lines, "\n")
}

const rebuildingReason = "the store's index is being rebuilt from storage: content is served and stored; eviction waits until it is done"

// cannotWrite says why the store cannot take new content, or "".
func (s *Server) cannotWrite() string {
	if err := s.store.Writable(); err != nil {
		return s.unpathed(err.Error())
	}
	for _, dir := range []string{s.cfg.Storage.Spool, s.cfg.Storage.Root} {
		if _, err := checkDir(dir); space.Is(err) {
			return "storage cannot take new content: " + s.unpathed(err.Error())
		}
	}
	return ""
}

// unpathed replaces the storage directories in msg by the settings that name them.
func (s *Server) unpathed(msg string) string {
	for _, d := range []struct{ path, name string }{{s.cfg.Storage.Spool, "storage.spool"}, {s.cfg.Storage.Root, "storage.root"}} {
		if d.path != "" {
			msg = strings.ReplaceAll(msg, d.path, d.name)
		}
	}
	return msg
}

// checkDir verifies that dir is a directory in which a file can be created. It says
// what is wrong without naming dir, and returns the error.
func checkDir(dir string) (string, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "does not exist", err
	}
	if err != nil {
		return "cannot be examined", err
	}
	if !fi.IsDir() {
		return "is not a directory", fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".readyz-*")
	if err != nil {
		return "is not writable", fmt.Errorf("%s is not writable: %w", dir, err)
	}
	name := f.Name()
	cerr := f.Close()
	rerr := os.Remove(name)
	if cerr != nil || rerr != nil {
		return "is not writable", fmt.Errorf("%s: probe file: %w", dir, firstErr(cerr, rerr))
	}
	return "", nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func writeText(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}

func isV2(p string) bool {
	return p == "/v2" || strings.HasPrefix(p, "/v2/")
}

func isWrite(method string) bool {
	switch method {
	case http.MethodPut, http.MethodPost, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// observe records every request exactly once, after it completes: one access log
// line and the request and byte counters.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		path := r.URL.Path
		kind := requestKind(path)
		defer func() {
			status := rec.statusCode()
			s.metrics.HTTPRequests.WithLabelValues(methodLabel(r.Method), kind, strconv.Itoa(status)).Inc()
			s.metrics.HTTPResponseBytes.WithLabelValues(kind).Add(float64(rec.bytes))

			attrs := []slog.Attr{
				slog.String("method", r.Method),
				slog.String("path", path),
				slog.String("kind", kind),
				slog.Int("status", status),
				slog.Int64("bytes", rec.bytes),
				slog.Duration("duration", time.Since(start)),
				slog.String("remote", r.RemoteAddr),
			}
			if rg := r.Header.Get("Range"); rg != "" {
				attrs = append(attrs, slog.String("range", rg))
			}
			// Probes arrive every few seconds (and every node's balancer checks GET /v2/
			// every second); keep successful ones out of the info log.
			level := slog.LevelInfo
			if kind == kindHealth || (kind == kindBase && status < 500) {
				level = slog.LevelDebug
			}
			s.log.LogAttrs(r.Context(), level, "request", attrs...)
		}()
		next.ServeHTTP(rec, r)
	})
}

// requestKind classifies a client path by the registry API route it names.
func requestKind(p string) string {
	switch p {
	case "/healthz", "/readyz":
		return kindHealth
	case "/v2", "/v2/":
		return kindBase
	}
	if strings.HasPrefix(p, api.Prefix) {
		if strings.HasPrefix(p, api.Prefix+"peer/") {
			return kindPeer
		}
		return kindAPI
	}
	if _, kind, _ := splitV2(p); kind != "" {
		return kind
	}
	return kindOther
}

// methodLabel bounds the method label to the methods a registry sees.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// recorder captures the status code and body size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	// 1xx responses are informational; the final status comes later.
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recorder) statusCode() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}
