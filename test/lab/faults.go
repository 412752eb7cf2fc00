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
	"strings"
	"sync"
	"time"
)

// Faults makes the lab upstream slow or failing. ServeUpstream reads them from
// UpstreamOptions.FaultsFile, again whenever the file changes, so a test can
// change them with WriteFaults while the upstream runs. The zero value is a
// healthy upstream. All but Status apply only to the bodies of successful blob
// GETs (GET /v2/<name>/blobs/<digest>), Range requests included; body byte
// counts are of one response.
type Faults struct {
	// ThrottleBPS limits each blob GET response body to this many bytes per
	// second; 0 is unlimited.
	ThrottleBPS int64 `json:"throttle_bps,omitempty"`
	// CutAfter, if positive, drops the connection after this many body bytes
	// of a blob GET, so that the client sees a stream cut mid-blob. A body
	// no longer than CutAfter is sent whole.
	CutAfter int64 `json:"cut_after,omitempty"`
	// CutTimes limits the cuts to the first CutTimes responses of each
	// digest; the count starts again whenever the file changes. 0 cuts
	// every response.
	CutTimes int `json:"cut_times,omitempty"`
	// Status, if set, answers every /v2/ request except the API base /v2/
	// itself with this status (400-599), e.g. 503: an upstream that is up
	// but failing.
	Status int `json:"status,omitempty"`
	// StallAfter and StallFor pause a blob GET body for StallFor after
	// StallAfter bytes, keeping the connection open. StallAfter 0 stalls
	// right after the headers.
	StallAfter int64    `json:"stall_after,omitempty"`
	StallFor   Duration `json:"stall_for,omitempty"`
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
	case f.ThrottleBPS < 0:
		return fmt.Errorf("throttle_bps %d is negative", f.ThrottleBPS)
	case f.CutAfter < 0:
		return fmt.Errorf("cut_after %d is negative", f.CutAfter)
	case f.CutTimes < 0:
		return fmt.Errorf("cut_times %d is negative", f.CutTimes)
	case f.CutTimes > 0 && f.CutAfter == 0:
		return errors.New("cut_times is set but cut_after is not")
	case f.Status != 0 && (f.Status < 400 || f.Status > 599):
		return fmt.Errorf("status %d is not an error status (400-599)", f.Status)
	case f.StallAfter < 0:
		return fmt.Errorf("stall_after %d is negative", f.StallAfter)
	case f.StallFor < 0:
		return fmt.Errorf("stall_for %s is negative", time.Duration(f.StallFor))
	case f.StallAfter > 0 && f.StallFor == 0:
		return errors.New("stall_after is set but stall_for is not")
	}
	return nil
}

// bodyFaults reports whether f changes blob GET bodies.
func (f Faults) bodyFaults() bool {
	return f.ThrottleBPS > 0 || f.CutAfter > 0 || f.StallFor > 0
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
	cuts   map[string]int // by digest, since the file last changed
}

func newFaultInjector(path string, done <-chan struct{}) *faultInjector {
	return &faultInjector{path: path, done: done}
}

// current returns the faults in force, reading the file again if it changed
// since it was last read. A file that cannot be read or parsed is an error
// until it changes.
func (fi *faultInjector) current() (Faults, error) {
	info, err := os.Stat(fi.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Faults{}, fmt.Errorf("faults file: %w", err)
	}
	fi.mu.Lock()
	defer fi.mu.Unlock()
	if fi.loaded && sameVersion(fi.info, info) {
		return fi.faults, fi.err
	}
	fi.info, fi.faults, fi.err = fi.read()
	fi.loaded = true
	fi.cuts = map[string]int{}
	return fi.faults, fi.err
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

func (fi *faultInjector) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		base := r.URL.Path == "/v2" || r.URL.Path == "/v2/"
		if !base && !strings.HasPrefix(r.URL.Path, "/v2/") {
			next.ServeHTTP(w, r)
			return
		}
		f, err := fi.current()
		if err != nil {
			http.Error(w, "lab upstream: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if f.Status != 0 && !base {
			w.Header().Set("Content-Type", "application/json")
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
	start        time.Time // of the throttle's budget: the first body write
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
	if w.start.IsZero() {
		w.start = time.Now()
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
		if bps := w.f.ThrottleBPS; bps > 0 {
			// Chunks of about 50 ms keep the rate smooth.
			n = min(n, max(bps/20, 1), 64<<10)
			due := w.start.Add(time.Duration(float64(w.sent+n) / float64(bps) * float64(time.Second)))
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
		if w.f.ThrottleBPS > 0 {
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
	w.start = w.start.Add(time.Since(began))
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
