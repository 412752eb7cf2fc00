package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"runtime/debug"
	"sync"
	"time"
)

// AccessEntry is one request served by a lab registry (the upstream or the
// stock proxy), as written to its access log, one JSON object per line.
type AccessEntry struct {
	// Time is when the request arrived.
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Query  string    `json:"query"`
	Status int       `json:"status"`
	// Bytes is the number of response body bytes written.
	Bytes int64 `json:"bytes"`
	// Range is the request's Range header, empty if it had none.
	Range  string `json:"range"`
	Remote string `json:"remote"`
	// Aborted is set when the server dropped the connection instead of
	// completing the response: a CutAfter fault, or a handler that panicked.
	Aborted bool `json:"aborted,omitempty"`
}

var (
	blobPathRE     = regexp.MustCompile(`^/v2/.+/blobs/(sha256:[a-f0-9]{64})$`)
	manifestPathRE = regexp.MustCompile(`^/v2/.+/manifests/(sha256:[a-f0-9]{64})$`)
	uploadPathRE   = regexp.MustCompile(`^/v2/.+/blobs/uploads/[^/]+$`)
	digestRE       = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// Digest returns the digest named by the request: the one in a blobs or
// manifests path, or, for the PUT that completes a blob upload, the one in its
// digest query parameter. It returns "" for anything else, such as a manifest
// fetched by tag.
func (e AccessEntry) Digest() string {
	if m := blobPathRE.FindStringSubmatch(e.Path); m != nil {
		return m[1]
	}
	if m := manifestPathRE.FindStringSubmatch(e.Path); m != nil {
		return m[1]
	}
	if e.Method == http.MethodPut && uploadPathRE.MatchString(e.Path) {
		if q, err := url.ParseQuery(e.Query); err == nil && digestRE.MatchString(q.Get("digest")) {
			return q.Get("digest")
		}
	}
	return ""
}

// BlobGETs returns the GET requests for a blob by digest, in log order.
func BlobGETs(entries []AccessEntry) []AccessEntry {
	var out []AccessEntry
	for _, e := range entries {
		if e.Method == http.MethodGet && blobPathRE.MatchString(e.Path) {
			out = append(out, e)
		}
	}
	return out
}

// ReadAccessLog reads an access log written by ServeUpstream or ServeProxy.
// A missing file is an empty log.
func ReadAccessLog(path string) ([]AccessEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read access log: %w", err)
	}
	defer f.Close()

	var entries []AccessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e AccessEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("read access log %s: line %d: %w", path, line, err)
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read access log %s: %w", path, err)
	}
	return entries, nil
}

// accessLog appends AccessEntry lines to a file. Each line goes out in a
// single write to a file opened with O_APPEND, so concurrent requests, and
// other processes appending to the same file, never interleave lines.
type accessLog struct {
	f *os.File

	mu  sync.Mutex
	err error // first write error, reported when the log is closed
}

func openAccessLog(path string) (*accessLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open access log: %w", err)
	}
	return &accessLog{f: f}, nil
}

func (l *accessLog) write(e AccessEntry) {
	b, err := json.Marshal(e)
	if err == nil {
		_, err = l.f.Write(append(b, '\n'))
	}
	if err != nil {
		l.mu.Lock()
		if l.err == nil {
			l.err = fmt.Errorf("write access log %s: %w", l.f.Name(), err)
		}
		l.mu.Unlock()
	}
}

func (l *accessLog) close() error {
	cerr := l.f.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if cerr != nil {
		return fmt.Errorf("close access log: %w", cerr)
	}
	return nil
}

// handler wraps next so that every request is logged once it completes.
func (l *accessLog) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &countingWriter{ResponseWriter: w}
		// Deferred so that a panicking handler is still logged. net/http
		// answers a panic by dropping the connection, so the response was
		// aborted; the panic goes on to net/http.
		defer func() {
			p := recover()
			status := cw.status
			if status == 0 {
				status = http.StatusOK
			}
			l.write(AccessEntry{
				Time:    start.UTC(),
				Method:  r.Method,
				Path:    r.URL.Path,
				Query:   r.URL.RawQuery,
				Status:  status,
				Bytes:   cw.bytes,
				Range:   r.Header.Get("Range"),
				Remote:  r.RemoteAddr,
				Aborted: p != nil,
			})
			if p != nil {
				if p != http.ErrAbortHandler {
					// The stack still holds the panic's origin here; the
					// re-panic would otherwise hide it.
					p = fmt.Sprintf("%v\n%s", p, debug.Stack())
				}
				panic(p)
			}
		}()
		next.ServeHTTP(cw, r)
	})
}

// countingWriter records the status and the number of body bytes written.
type countingWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
