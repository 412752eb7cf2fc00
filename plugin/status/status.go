// Package status is what an operator reads about hopless inside containerd: the JSON
// that containerd's debug server answers at GET /debug/hopless, and the
// "containerd hopless-status" command that fetches it and prints a table.
package status

import (
	"encoding/json"
	"net/http"
	"time"
)

// Path is where the debug server answers with the Report.
const Path = "/debug/hopless"

// Report is the JSON at Path.
type Report struct {
	// Configured is false when the section lists no registry: pulls are stock.
	Configured bool `json:"configured"`
	// Error is why the hopless plugin failed to load (a config error); hopless then
	// serves no pull, and neither does CRI.
	Error string `json:"error,omitempty"`
	// Hosts are the image hosts hopless serves, sorted by host.
	Hosts []Host `json:"hosts"`
	// Reload is the last reload after a watched file changed.
	Reload Reload `json:"reload"`
	// CRILocalPull is the check of CRI's images config.
	CRILocalPull CRICheck `json:"cri_local_pull"`
}

// Host is one image host.
type Host struct {
	Host      string     `json:"host"`
	Fallback  bool       `json:"fallback"`
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is the balancer's view of one endpoint.
type Endpoint struct {
	URL    string `json:"url"`
	Weight int    `json:"weight"`
	// EffectiveWeight is Weight, or less while the endpoint's slow start lasts.
	EffectiveWeight float64 `json:"effective_weight"`
	Local           bool    `json:"local"`
	// State is "up", "ejected" (consecutive failures) or "unhealthy" (failed
	// active check).
	State   string `json:"state"`
	Healthy bool   `json:"healthy"`
	// Reason is why it is out; empty while up.
	Reason string `json:"reason,omitempty"`
	// Since is when State last changed.
	Since time.Time `json:"since,omitzero"`
	// RetryAt is when an ejected endpoint may be tried again.
	RetryAt time.Time `json:"retry_at,omitzero"`
	// LastError is its most recent failure, kept after it recovered.
	LastError   string `json:"last_error,omitempty"`
	Outstanding int    `json:"outstanding"`
	// Share is the fraction of recent picks that went to it.
	Share float64 `json:"share"`
	// HeadersP95Ms is the 95th percentile of the time to response headers, in
	// milliseconds, by request class ("manifest", "blob", "token").
	HeadersP95Ms map[string]float64 `json:"headers_p95_ms,omitempty"`
	// ThroughputBps is the recent average rate of the bodies it served, bytes/s.
	ThroughputBps float64 `json:"throughput_bps"`
}

// Reload is the outcome of the last reload.
type Reload struct {
	// Time is zero, and Result empty, before the first reload.
	Time   time.Time `json:"time,omitzero"`
	Result string    `json:"result,omitempty"` // "ok" or "error"
	Error  string    `json:"error,omitempty"`
	// Files are the watched files that had changed.
	Files []string `json:"files,omitempty"`
}

// CRICheck is the check of CRI's images config for settings that make CRI pull
// through its local path, past hopless.
type CRICheck struct {
	// Checked is false until CRI's images plugin has loaded (or when it is absent).
	Checked bool `json:"checked"`
	// Mode is cri_local_pull: "refuse" or "warn".
	Mode string `json:"mode,omitempty"`
	// Settings are the offending settings' keys; empty when none.
	Settings []string `json:"settings"`
	// Refused is set when CRI's images plugin was failed because of them.
	Refused bool `json:"refused"`
}

// Mux answers GET Path with report() as JSON and hands every other request to next.
func Mux(next http.Handler, report func() Report) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != Path {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		b, err := json.MarshalIndent(report(), "", "  ")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(append(b, '\n'))
	})
}
