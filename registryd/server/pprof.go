package server

import (
	"fmt"
	"net/http"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"time"
)

// maxProfileSeconds bounds one CPU profile or trace.
const maxProfileSeconds = 300

// pprofHandler serves debug.pprof_listen: /debug/pprof/profile?seconds=N (CPU),
// /debug/pprof/trace?seconds=N (execution trace) and /debug/pprof/NAME for the
// runtime's named profiles (heap, goroutine, allocs, block, mutex, threadcreate;
// ?debug=1 for text). It is built on runtime/pprof rather than net/http/pprof,
// whose import registers its handlers on http.DefaultServeMux.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/profile", func(w http.ResponseWriter, r *http.Request) {
		d, ok := profileSeconds(w, r)
		if !ok {
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := pprof.StartCPUProfile(w); err != nil {
			http.Error(w, fmt.Sprintf("starting the CPU profile: %v", err), http.StatusConflict)
			return
		}
		sleep(r, d)
		pprof.StopCPUProfile()
	})
	mux.HandleFunc("GET /debug/pprof/trace", func(w http.ResponseWriter, r *http.Request) {
		d, ok := profileSeconds(w, r)
		if !ok {
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := trace.Start(w); err != nil {
			http.Error(w, fmt.Sprintf("starting the trace: %v", err), http.StatusConflict)
			return
		}
		sleep(r, d)
		trace.Stop()
	})
	mux.HandleFunc("GET /debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
		p := pprof.Lookup(r.PathValue("name"))
		if p == nil {
			http.Error(w, "unknown profile", http.StatusNotFound)
			return
		}
		debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
		if debug > 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		_ = p.WriteTo(w, debug)
	})
	return mux
}

// profileSeconds reads ?seconds= (default 30); on a bad value it answers 400.
func profileSeconds(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	n := 30
	if v := r.URL.Query().Get("seconds"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxProfileSeconds {
			http.Error(w, fmt.Sprintf("seconds must be 1..%d", maxProfileSeconds), http.StatusBadRequest)
			return 0, false
		}
	}
	return time.Duration(n) * time.Second, true
}

// sleep waits d, or until the client goes away.
func sleep(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}
