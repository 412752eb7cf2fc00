package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Faults makes the lab upstream slow or failing. ServeUpstream reads them from
// UpstreamOptions.FaultsFile, again whenever the file changes, so a test can
// change them with WriteFaults while the upstream runs. The zero value is a
// healthy upstream.
//
// Faults apply to the registry API requests under /v2/ other than the API base
// /v2/ itself (which stays healthy, so that the upstream still looks up), and,
// with Repo set, only to those of one repository. ThrottleBPS, CutAfter and
// StallFor apply only to the bodies of successful blob GETs
// (GET /v2/<name>/blobs/<digest>), Range requests included; body byte counts
// are of one response.
type Faults struct {
	// Repo, if set, limits every fault to the requests whose path is under
	// /v2/<Repo>/, e.g. "deckhouse/ce/app" (the upstream's name, not the
	// masters' alias): one failing image among healthy ones. Empty applies
	// the faults to every repository.
	Repo string `json:"repo,omitempty"`
	// ThrottleBPS limits each blob GET response body to this many bytes per
	// second; 0 is unlimited.
	ThrottleBPS int64 `json:"throttle_bps,omitempty"`
	// ThrottleAfter sends this many body bytes at full speed before ThrottleBPS
	// applies: a body that starts fast and then trickles (a master's fill shows
	// its client nothing, not even headers, before its first 64 KiB). 0
	// throttles from the first byte. It needs ThrottleBPS.
	ThrottleAfter int64 `json:"throttle_after,omitempty"`
	// CutAfter, if positive, drops the connection after this many body bytes
	// of a blob GET, so that the client sees a stream cut mid-blob. A body
	// no longer than CutAfter is sent whole.
	CutAfter int64 `json:"cut_after,omitempty"`
	// CutTimes limits the cuts to the first CutTimes responses of each
	// digest; the count starts again whenever the file changes. 0 cuts
	// every response.
	CutTimes int `json:"cut_times,omitempty"`
	// Status, if set, answers every matching request with this status
	// (400-599), e.g. 503: an upstream that is up but failing.
	Status int `json:"status,omitempty"`
	// Headers are added to the answers that Status produces, e.g.
	// {"Retry-After": "7"}; they override the upstream's own Content-Type.
	// They need Status.
	Headers map[string]string `json:"headers,omitempty"`
	// Hang makes every matching request go unanswered: no status, no
	// headers, the connection kept open. A hung request waits until the
	// faults file changes (it is then served by the new faults), the client
	// goes away or the upstream shuts down (then its connection is dropped).
	// It excludes Status and HeaderDelay.
	Hang bool `json:"hang,omitempty"`
	// HeaderDelay makes every matching request wait this long before it is
	// served as the other faults say: an upstream slow to the first byte.
	HeaderDelay Duration `json:"header_delay,omitempty"`
	// StallAfter and StallFor pause a blob GET body for StallFor after
	// StallAfter bytes, keeping the connection open. StallAfter 0 stalls
	// right after the headers.
	StallAfter int64    `json:"stall_after,omitempty"`
	StallFor   Duration `json:"stall_for,omitempty"`
	// Corrupt answers a blob GET with a different blob of the same length (every
	// byte inverted): an upstream that serves the wrong bytes for a digest.
	Corrupt bool `json:"corrupt,omitempty"`
}

// Duration is a time.Duration that JSON holds as a string such as "10s".
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration %s is not a string such as \"10s\": %w", b, err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	*d = Duration(v)
	return nil
}

func (f Faults) validate() error {
	switch {
	case f.Repo != "" && !repoNameRE.MatchString(f.Repo):
		return fmt.Errorf("repo %q is not a repository name such as deckhouse/ce/app", f.Repo)
	case f.ThrottleBPS < 0:
		return fmt.Errorf("throttle_bps %d is negative", f.ThrottleBPS)
	case f.ThrottleAfter < 0:
		return fmt.Errorf("throttle_after %d is negative", f.ThrottleAfter)
	case f.ThrottleAfter > 0 && f.ThrottleBPS == 0:
		return errors.New("throttle_after is set but throttle_bps is not")
	case f.CutAfter < 0:
		return fmt.Errorf("cut_after %d is negative", f.CutAfter)
	case f.CutTimes < 0:
		return fmt.Errorf("cut_times %d is negative", f.CutTimes)
	case f.CutTimes > 0 && f.CutAfter == 0:
		return errors.New("cut_times is set but cut_after is not")
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return fmt.Errorf("status %d is not an error status (400-599)", f.Status)
	case len(f.Headers) > 0 && f.Status == 0:
		return errors.New("headers are set but status is not")
	case f.Hang && f.Status != 0:
		return errors.New("hang and status are both set: a hung request gets no status")
	case f.Hang && f.HeaderDelay != 0:
		return errors.New("hang and header_delay are both set: a hung request gets no headers")
	case f.HeaderDelay < 0:
		return fmt.Errorf("header_delay %s is negative", time.Duration(f.HeaderDelay))
	case f.StallAfter < 0:
		return fmt.Errorf("stall_after %d is negative", f.StallAfter)
	case f.StallFor < 0:
		return fmt.Errorf("stall_for %s is negative", time.Duration(f.StallFor))
	case f.StallAfter > 0 && f.StallFor == 0:
		return errors.New("stall_after is set but stall_for is not")
	}
	for k, v := range f.Headers {
		if !headerNameRE.MatchString(k) {
			return fmt.Errorf("headers: %q is not a header name", k)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return fmt.Errorf("headers: the value of %s holds a control character", k)
		}
	}
	return nil
}

var (
	// repoNameRE is a repository name of the reference grammar: components of
	// lower-case letters and digits, joined by '.', '_', '__' or dashes.
	repoNameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	// headerNameRE is an HTTP field name: one or more tchars (RFC 9110).
	headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// applies reports whether f applies to a request for path: under /v2/, not the
// API base, and under /v2/<Repo>/ if Repo is set.
func (f Faults) applies(path string) bool {
	if path == "/v2" || path == "/v2/" || !strings.HasPrefix(path, "/v2/") {
		return false
	}
	return f.Repo == "" || strings.HasPrefix(path, "/v2/"+f.Repo+"/")
}

// bodyFaults reports whether f changes blob GET bodies.
func (f Faults) bodyFaults() bool {
	return f.ThrottleBPS > 0 || f.CutAfter > 0 || f.StallFor > 0 || f.Corrupt
}

// WriteFaults validates f and writes it to path atomically, so that a running
// upstream never reads half a file.
func WriteFaults(path string, f Faults) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("write faults %s: %w", path, err)
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("write faults %s: %w", path, err)
	}
	return writeFile(path, append(b, '\n'), 0o644)
}

// ParseFaults reads one JSON Faults object as the upstream does: strictly, and
// validated. Empty input is no faults.
func ParseFaults(r io.Reader) (Faults, error) { return decodeFaults(r) }

// decodeFaults reads one Faults object. Unknown fields are errors, so that a
// misspelt fault is not silently ignored; an empty file is no faults.
func decodeFaults(r io.Reader) (Faults, error) {
	var f Faults
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return Faults{}, err
	}
	if err := f.validate(); err != nil {
		return Faults{}, err
	}
	return f, nil
}

// faultInjector applies the faults of a file to the requests of a registry.
type faultInjector struct {
	path string
	// done is closed when the server shuts down: stalls and throttling then
	// end, so that they do not hold up a graceful shutdown.
	done <-chan struct{}

	mu     sync.Mutex
	loaded bool
	info   os.FileInfo // of the file as last read; nil if there was none
	faults Faults
	err    error
	gen    int            // counts the reads of the file, so that a hung request sees a change
	cuts   map[string]int // by digest, since the file last changed
}

func newFaultInjector(path string, done <-chan struct{}) *faultInjector {
	return &faultInjector{path: path, done: done}
}

// currentGen returns the faults in force, reading the file again if it changed
// since it was last read, and their generation, which changes whenever the file
// does. A file that cannot be read or parsed is an error until it changes.
func (fi *faultInjector) currentGen() (Faults, int, error) {
	info, err := os.Stat(fi.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Faults{}, 0, fmt.Errorf("faults file: %w", err)
	}
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if fi.loaded && sameVersion(fi.info, info) {
		return fi.faults, fi.gen, fi.err
	}
	fi.info, fi.faults, fi.err = fi.read()
	fi.loaded = true
	fi.gen++
	fi.cuts = map[string]int{}
	return fi.faults, fi.gen, fi.err
}

// sameVersion reports whether a and b, either nil for a missing file, are
// the same version of a file. WriteFaults renames a new file into place, so a
// change usually shows as another inode too, even within the mtime's
// granularity.
func sameVersion(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

func (fi *faultInjector) read() (os.FileInfo, Faults, error) {
	f, err := os.Open(fi.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Faults{}, nil
	}
	if err != nil {
		return nil, Faults{}, fmt.Errorf("faults file: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, Faults{}, fmt.Errorf("faults file: %w", err)
	}
	faults, err := decodeFaults(f)
	if err != nil {
		return info, Faults{}, fmt.Errorf("faults file %s: %w", fi.path, err)
	}
	return info, faults, nil
}

// takeCut reports whether a response for digest that reached CutAfter is to
// be cut, counting it if so.
func (fi *faultInjector) takeCut(digest string, times int) bool {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if times > 0 && fi.cuts[digest] >= times {
		return false
	}
	fi.cuts[digest]++
	return true
}

// hangPoll is how often a hung request looks for a change of the faults file.
const hangPoll = 50 * time.Millisecond

func (fi *faultInjector) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		base := r.URL.Path == "/v2" || r.URL.Path == "/v2/"
		if !base && !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
			return
		}
		f, gen, err := fi.currentGen()
		if err != nil {
			http.Error(w, "lab upstream: "+err.Error(), http.StatusInternalServerError)
			return
		}
		for f.Hang && f.applies(r.URL.Path) {
			// No answer until the faults change; then the request is served by
			// the new ones.
			if f, gen, err = fi.hang(r.Context(), gen); err != nil {
				http.Error(w, "lab upstream: "+err.Error(), http.StatusInternalServerError)
				return
			}
		}
		if !f.applies(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if f.HeaderDelay > 0 {
			t := time.NewTimer(time.Duration(f.HeaderDelay))
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				panic(http.ErrAbortHandler)
			case <-fi.done:
				t.Stop()
				panic(http.ErrAbortHandler)
			}
		}
		if f.Status != 0 {
			w.Header().Set("Content-Type", "application/json")
			for k, v := range f.Headers {
				w.Header().Set(k, v)
			}
			w.WriteHeader(f.Status)
			fmt.Fprintf(w, `{"errors":[{"code":"UNKNOWN","message":"lab upstream fault: status %d"}]}`+"\n", f.Status)
			return
		}
		m := blobPathRE.FindStringSubmatch(r.URL.Path)
		if r.Method != http.MethodGet || m == nil || !f.bodyFaults() {
			next.ServeHTTP(w, r)
			return
		}
		fw := &faultWriter{
			ResponseWriter: w, ctx: r.Context(), done: fi.done, inj: fi, digest: m[1], f: f,
			stallPending: f.StallFor > 0, cutArmed: f.CutAfter > 0,
		}
		next.ServeHTTP(fw, r)
		if fw.abort {
			// Only a panic makes net/http drop the connection (HTTP/1) or
			// reset the stream (HTTP/2) instead of ending the body.
			panic(http.ErrAbortHandler)
		}
	})
}

// hang waits until the faults file changes from generation gen and returns the
// new faults. If the client goes away or the upstream shuts down first, it drops
// the connection, which the access log records as aborted.
func (fi *faultInjector) hang(ctx context.Context, gen int) (Faults, int, error) {
	t := time.NewTicker(hangPoll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			panic(http.ErrAbortHandler)
		case <-fi.done:
			panic(http.ErrAbortHandler)
		}
		f, g, err := fi.currentGen()
		if err != nil || g != gen {
			return f, g, err
		}
	}
}

// faultWriter applies the body faults of f to one blob GET response.
type faultWriter struct {
	http.ResponseWriter
	ctx    context.Context // the request's
	done   <-chan struct{}
	inj    *faultInjector
	digest string
	f      Faults

	decided      bool // the status is known
	active       bool // it is a success, so the faults apply
	sent         int64
	start        time.Time // of the throttle's budget: the first throttled body write
	stallPending bool
	cutArmed     bool
	abort        bool // drop the connection once the handler returns
}

func (w *faultWriter) WriteHeader(code int) {
	if !w.decided && code >= 200 {
		w.decided, w.active = true, code < 300
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *faultWriter) Write(p []byte) (int, error) {
	if w.abort {
		return 0, errors.New("lab fault: response aborted")
	}
	if !w.decided {
		w.decided, w.active = true, true
	}
	if !w.active {
		return w.ResponseWriter.Write(p)
	}
	if w.f.Corrupt {
		q := make([]byte, len(p))
		for i, b := range p {
			q[i] = ^b
		}
		p = q
	}
	written := 0
	for len(p) > 0 {
		if w.stallPending && w.sent >= w.f.StallAfter {
			w.stallPending = false
			if err := w.stall(); err != nil {
				return written, err
			}
			continue
		}
		if w.cutArmed && w.sent >= w.f.CutAfter {
			w.cutArmed = false
			if w.inj.takeCut(w.digest, w.f.CutTimes) {
				// Flushed first, so that the client gets CutAfter bytes.
				w.flush()
				w.abort = true
				return written, fmt.Errorf("lab fault: cut after %d bytes", w.sent)
			}
			continue
		}
		n := int64(len(p))
		if w.stallPending {
			n = min(n, w.f.StallAfter-w.sent)
		}
		if w.cutArmed {
			n = min(n, w.f.CutAfter-w.sent)
		}
		throttled := false
		if bps := w.f.ThrottleBPS; bps > 0 && w.sent < w.f.ThrottleAfter {
			n = min(n, w.f.ThrottleAfter-w.sent)
		} else if bps > 0 {
			throttled = true
			if w.start.IsZero() {
				w.start = time.Now()
			}
			// Chunks of about 50 ms keep the rate smooth.
			n = min(n, max(bps/20, 1), 64<<10)
			due := w.start.Add(time.Duration(float64(w.sent-w.f.ThrottleAfter+n) / float64(bps) * float64(time.Second)))
			if err := w.sleep(time.Until(due)); err != nil {
				return written, err
			}
		}
		m, err := w.ResponseWriter.Write(p[:n])
		w.sent += int64(m)
		written += m
		p = p[m:]
		if err != nil {
			return written, err
		}
		if throttled || w.sent == w.f.ThrottleAfter && w.f.ThrottleBPS > 0 {
			w.flush()
		}
	}
	return written, nil
}

func (w *faultWriter) stall() error {
	w.flush()
	began := time.Now()
	err := w.sleep(time.Duration(w.f.StallFor))
	// The throttle does not make up for the stall with a burst.
	if !w.start.IsZero() {
		w.start = w.start.Add(time.Since(began))
	}
	return err
}

// sleep waits for d, or less if the client goes away or the server shuts
// down; a shutdown aborts the response.
func (w *faultWriter) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-w.ctx.Done():
		return fmt.Errorf("lab fault: client went away: %w", context.Cause(w.ctx))
	case <-w.done:
		w.abort = true
		return errors.New("lab fault: upstream shutting down")
	}
}

func (w *faultWriter) flush() {
	// An error means the client is gone, which the next write reports.
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *faultWriter) Flush() { w.flush() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *faultWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
