package pins

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/store"
)

const (
	nodeKey = "node-key-for-tests-0123456789"
	node    = "node-1"
	// noMaster refuses connections: nothing listens on port 1.
	noMaster = "https://127.0.0.1:1"
)

// fakeClock is a Clock that moves only when the test advances it. Every wait is
// also sent on waits, so that the test knows what Run or the resolver wait for.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	waits  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_800_000_000, 0), waits: make(chan time.Duration, 1000)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), c: ch})
	c.waits <- d
	return ch
}

// advance moves the clock by d and fires the timers due.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t fakeTimer) bool {
		if c.now.Before(t.at) {
			return false
		}
		t.c <- c.now
		return true
	})
}

// wait returns the next wait that began, once it has.
func (c *fakeClock) wait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.waits:
		return d
	case <-t.Context().Done():
		t.Fatal("the test ended waiting for a wait")
		return 0
	}
}

// waitFor takes the next wait, checks it lies in [lo, hi] and lets it pass.
func (c *fakeClock) waitFor(t *testing.T, what string, lo, hi time.Duration) time.Duration {
	t.Helper()
	d := c.wait(t)
	if d < lo || d > hi {
		t.Fatalf("%s: waits %s, want %s to %s", what, d, lo, hi)
	}
	c.advance(d)
	return d
}

// master is a registryd's API on a real store, served over TLS. It records every
// request once answered.
type master struct {
	url    string
	store  *store.Store
	served chan served
}

type served struct {
	pins   api.Pins
	status int
}

type masterOptions struct {
	maxSources int
	ttl        time.Duration
}

func newMaster(t *testing.T, o masterOptions) *master {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var opts []store.Option
	if o.maxSources > 0 {
		opts = append(opts, store.WithMaxPinSources(o.maxSources))
	}
	st, err := store.New(ctx, conf.Storage{Root: t.TempDir()}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	a := api.New(ctx, api.Config{Store: st, NodeKey: []byte(nodeKey), PinTTL: o.ttl})
	m := &master{store: st, served: make(chan served, 100)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Error(err)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		rec := &statusRecorder{ResponseWriter: w}
		a.ServeHTTP(rec, r)
		var p api.Pins
		if err := json.Unmarshal(b, &p); err != nil {
			t.Errorf("a report that is not JSON: %v: %s", err, b)
		}
		m.served <- served{pins: p, status: rec.status}
	}))
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0)
	srv.StartTLS()
	m.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		cancel()
		a.Close()
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// next returns the next request the master answered; the reporter has it too once
// its next wait began.
func (m *master) next(t *testing.T, want int) api.Pins {
	t.Helper()
	select {
	case s := <-m.served:
		if s.status != want {
			t.Fatalf("%s answered %d, want %d", m.url, s.status, want)
		}
		return s.pins
	case <-t.Context().Done():
		t.Fatal("the test ended waiting for a report")
		return api.Pins{}
	}
}

// idle checks that the master has answered nothing more.
func (m *master) idle(t *testing.T) {
	t.Helper()
	if n := len(m.served); n != 0 {
		t.Errorf("%s answered %d more reports, want none", m.url, n)
	}
}

// lease is what the master pins for node, sorted.
func (m *master) lease(t *testing.T) []digest.Digest {
	t.Helper()
	for _, l := range m.store.Leases() {
		if l.Source == node {
			return l.Manifests
		}
	}
	return nil
}

func digestsOfPins(p api.Pins) []digest.Digest {
	var ds []digest.Digest
	for _, im := range p.Images {
		ds = append(ds, digest.Digest(im.Digest))
	}
	return ds
}

// logStore records what the reporter logs.
type logStore struct {
	mu   sync.Mutex
	recs []logRecord
}

type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

type logHandler struct {
	s     *logStore
	attrs []slog.Attr
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h logHandler) WithGroup(string) slog.Handler            { return h }
func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return logHandler{s: h.s, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.s.mu.Lock()
	h.s.recs = append(h.s.recs, rec)
	h.s.mu.Unlock()
	return nil
}

// at returns the records at level whose message contains msg.
func (s *logStore) at(level slog.Level, msg string) []logRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logRecord
	for _, r := range s.recs {
		if r.level == level && strings.Contains(r.msg, msg) {
			out = append(out, r)
		}
	}
	return out
}

func (s *logStore) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.recs {
		fmt.Fprintf(&b, "%s %s %v\n", r.level, r.msg, r.attrs)
	}
	return b.String()
}

// fakeResolver is a Resolve that the test answers.
type fakeResolver struct {
	calls   chan string
	answers chan resolution
}

type resolution struct {
	d   digest.Digest
	err error
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{calls: make(chan string), answers: make(chan resolution)}
}

func (f *fakeResolver) resolve(ctx context.Context, image string) (digest.Digest, error) {
	select {
	case f.calls <- image:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	select {
	case a := <-f.answers:
		return a.d, a.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// answer takes the next call, checks its image and answers it.
func (f *fakeResolver) answer(t *testing.T, image string, d digest.Digest, err error) {
	t.Helper()
	select {
	case got := <-f.calls:
		if got != image {
			t.Fatalf("Resolve(%q), want %q", got, image)
		}
	case <-t.Context().Done():
		t.Fatalf("the test ended waiting for Resolve(%q)", image)
	}
	f.answers <- resolution{d, err}
}

// fixture is a reporter of node-1 with a fake clock.
type fixture struct {
	r        *Reporter
	clock    *fakeClock
	resolver *fakeResolver
	logs     *logStore
	metrics  *Metrics
	run      func()
}

type fixtureOptions struct {
	masters       []string
	token         string // default: node-1's
	maxContainers int
}

func newFixture(t *testing.T, o fixtureOptions) *fixture {
	t.Helper()
	dir := t.TempDir()
	if o.token == "" {
		o.token = tokenOf(t, node)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(o.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testCert(t).Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &fixture{clock: newFakeClock(), resolver: newFakeResolver(), logs: &logStore{}, metrics: NewMetrics(prometheus.NewRegistry())}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reporter log:\n%s", f.logs)
		}
	})
	var err error
	f.r, err = New(Config{
		Node: node, Masters: o.masters, TokenFile: tokenFile, TLS: conf.TLS{CA: ca},
		Resolve: f.resolver.resolve, MaxContainers: o.maxContainers,
		Log: slog.New(logHandler{s: f.logs}), Metrics: f.metrics, Clock: f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.run = func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.r.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	return f
}

func tokenOf(t *testing.T, node string) string {
	t.Helper()
	tok, err := nodetoken.Derive([]byte(nodeKey), node)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *fixture) set(t *testing.T, id, image string, d digest.Digest) {
	t.Helper()
	if err := f.r.Set(id, image, d); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) reports(result string) float64 {
	return testutil.ToFloat64(f.metrics.reports.WithLabelValues(result))
}

// renewal is the renewal period under registryd's default pin_ttl.
const renewal = 200 * time.Second

// TestReport: a Set is reported once after the debounce, and renewed every third of
// the lease the master answered; a Remove of the last container reports an empty set.
func TestReport(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{ttl: 30 * time.Second})
	f := newFixture(t, fixtureOptions{masters: []string{m.url}})
	f.set(t, "c1", "registry.example/a:v1", dA)
	f.run()

	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	p := m.next(t, http.StatusOK)
	if p.Source != node || len(p.Images) != 1 || p.Images[0].Image != "registry.example/a:v1" || p.Images[0].Digest != string(dA) {
		t.Errorf("report %+v, want node-1's a:v1 at %s", p, dA)
	}
	if got := m.lease(t); !slices.Equal(got, []digest.Digest{dA}) {
		t.Errorf("the master pins %v, want %s", got, dA)
	}
	// A third of the 30s lease. The metrics are read while the reporter waits for
	// it: once the clock moves on, the renewal may be counted at any moment.
	if d := f.clock.wait(t); d != 10*time.Second {
		t.Fatalf("renewal: waits %s, want 10s", d)
	}
	if f.reports(ResultOK) != 1 || testutil.ToFloat64(f.metrics.pinned) != 1 ||
		testutil.ToFloat64(f.metrics.lastSuccess) != float64(time.Unix(1_800_000_000, int64(DefaultDebounce)).UnixNano())/1e9 {
		t.Errorf("metrics: %v ok, %v pinned, last success %v", f.reports(ResultOK), testutil.ToFloat64(f.metrics.pinned), testutil.ToFloat64(f.metrics.lastSuccess))
	}
	f.clock.advance(10 * time.Second)
	if p := m.next(t, http.StatusOK); !slices.Equal(digestsOfPins(p), []digest.Digest{dA}) {
		t.Errorf("renewal %+v, want %s", p, dA)
	}
	if d := f.clock.wait(t); d != 10*time.Second {
		t.Errorf("the next renewal in %s, want 10s", d)
	}

	f.r.Remove("c1")
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	if p := m.next(t, http.StatusOK); p.Source != node || len(p.Images) != 0 {
		t.Errorf("report %+v, want an empty one", p)
	}
	if got := m.lease(t); got != nil {
		t.Errorf("the master pins %v after the empty report, want nothing", got)
	}
	m.idle(t)
}

// TestReplaceSameSendsNothing: a Replace that lists the containers tracked already,
// one without its digest as after a reconnect, sends no report.
func TestReplaceSameSendsNothing(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{})
	f := newFixture(t, fixtureOptions{masters: []string{m.url}})
	f.set(t, "c1", "a:1", dA)
	f.set(t, "c2", "b:1", dB)
	f.run()
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	if p := m.next(t, http.StatusOK); len(p.Images) != 2 {
		t.Fatalf("report %+v, want 2 images", p)
	}
	f.clock.wait(t) // renewal

	if err := f.r.Replace(map[string]ImageRef{"c1": {"a:1", dA}, "c2": {"b:1", ""}}); err != nil {
		t.Fatal(err)
	}
	// The first Replace wakes Run, which finds nothing to send and waits for the
	// renewal again.
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	f.clock.waitFor(t, "renewal", renewal-DefaultDebounce, renewal-DefaultDebounce)
	if p := m.next(t, http.StatusOK); !slices.Equal(digestsOfPins(p), sortedDigests(dA, dB)) {
		t.Errorf("renewal %+v, want %s and %s", p, dA, dB)
	}
	f.clock.wait(t) // the next renewal: Run has taken the answer
	m.idle(t)
	if f.reports(ResultOK) != 2 {
		t.Errorf("%v reports ok, want 2: the first and the renewal", f.reports(ResultOK))
	}
}

func sortedDigests(ds ...digest.Digest) []digest.Digest {
	slices.Sort(ds)
	return ds
}

// TestEmptyReports: a fresh node that had a container and lost it within the
// debounce reports nothing; after a Replace at start, even an empty set is
// reported, removing what a previous run left.
func TestEmptyReports(t *testing.T) {
	t.Parallel()
	t.Run("fresh", func(t *testing.T) {
		t.Parallel()
		m := newMaster(t, masterOptions{})
		f := newFixture(t, fixtureOptions{masters: []string{m.url}})
		f.set(t, "c1", "a:1", dA)
		f.r.Remove("c1")
		f.run()
		f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
		// Run may take c2 with the debounce that ended (and report it at once) or
		// after its own: either way, nothing was sent before it.
		f.set(t, "c2", "b:1", dB)
		select {
		case d := <-f.clock.waits:
			// Else Run reported c2 at once and waits for the renewal.
			if d == DefaultDebounce {
				f.clock.advance(d)
			}
		case s := <-m.served:
			m.served <- s
		}
		if p := m.next(t, http.StatusOK); !slices.Equal(digestsOfPins(p), []digest.Digest{dB}) {
			t.Errorf("first report %+v, want %s only", p, dB)
		}
	})
	t.Run("after Replace", func(t *testing.T) {
		t.Parallel()
		m := newMaster(t, masterOptions{})
		previous, err := api.NewClient(m.url, tokenOf(t, node), caConfig(t)).PutPins(t.Context(), pinsOf(dA))
		if err != nil || previous.Pinned != 1 {
			t.Fatalf("a previous run's report: %+v, %v", previous, err)
		}
		m.next(t, http.StatusOK)
		f := newFixture(t, fixtureOptions{masters: []string{m.url}})
		if err := f.r.Replace(nil); err != nil {
			t.Fatal(err)
		}
		f.run()
		f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
		if p := m.next(t, http.StatusOK); len(p.Images) != 0 {
			t.Errorf("report %+v, want an empty one", p)
		}
		if got := m.lease(t); got != nil {
			t.Errorf("the master pins %v, want nothing", got)
		}
	})
}

// testCert is the certificate that every httptest TLS server presents.
func testCert(t *testing.T) *x509.Certificate {
	t.Helper()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	return srv.Certificate()
}

// caConfig trusts the httptest servers.
func caConfig(t *testing.T) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(testCert(t))
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func pinsOf(ds ...digest.Digest) api.Pins {
	p := api.Pins{Source: node}
	for i, d := range ds {
		p.Images = append(p.Images, struct {
			Image  string `json:"image"`
			Digest string `json:"digest"`
		}{Image: fmt.Sprintf("image-%d", i), Digest: string(d)})
	}
	return p
}

// TestFailover: the first master refuses connections, the second takes the report,
// and the renewal goes to it first.
func TestFailover(t *testing.T) {
	t.Parallel()
	m2, m3 := newMaster(t, masterOptions{}), newMaster(t, masterOptions{})
	f := newFixture(t, fixtureOptions{masters: []string{noMaster, m2.url, m3.url}})
	f.set(t, "c1", "a:1", dA)
	f.run()
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	m2.next(t, http.StatusOK)
	f.clock.waitFor(t, "renewal", renewal, renewal)
	m2.next(t, http.StatusOK)
	f.clock.wait(t)
	m3.idle(t)
	m2.idle(t)
	if got := m2.lease(t); !slices.Equal(got, []digest.Digest{dA}) {
		t.Errorf("m2 pins %v, want %s", got, dA)
	}
	if f.reports(ResultError) != 1 || f.reports(ResultOK) != 2 {
		t.Errorf("reports: %v error, %v ok; want 1 and 2", f.reports(ResultError), f.reports(ResultOK))
	}
}

// TestThrottled: while the masters hold as many nodes as they may, the report is
// retried with growing backoff, and taken once another node's lease is gone.
func TestThrottled(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{maxSources: 1})
	other := store.Lease{Source: "node-2", Manifests: []digest.Digest{dB}, Reported: time.Now(), Expires: time.Now().Add(time.Hour)}
	if _, err := m.store.SetLease(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOptions{masters: []string{m.url}})
	f.set(t, "c1", "a:1", dA)
	f.run()
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	m.next(t, http.StatusTooManyRequests)
	f.clock.waitFor(t, "first backoff", minBackoff/2, minBackoff)
	m.next(t, http.StatusTooManyRequests)
	f.clock.waitFor(t, "second backoff", minBackoff, 2*minBackoff)
	m.next(t, http.StatusTooManyRequests)
	d := f.clock.wait(t)
	if d < 2*minBackoff || d > 4*minBackoff {
		t.Fatalf("third backoff %s, want 2s to 4s", d)
	}

	other.Manifests, other.Reported = nil, time.Now()
	if _, err := m.store.SetLease(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(d)
	m.next(t, http.StatusOK)
	f.clock.waitFor(t, "renewal", renewal, renewal)
	m.next(t, http.StatusOK)
	f.clock.wait(t)
	if got := m.lease(t); !slices.Equal(got, []digest.Digest{dA}) {
		t.Errorf("the master pins %v, want %s", got, dA)
	}
	if f.reports(ResultThrottled) != 3 || f.reports(ResultOK) != 2 {
		t.Errorf("reports: %v throttled, %v ok; want 3 and 2", f.reports(ResultThrottled), f.reports(ResultOK))
	}
	if logs := f.logs.at(slog.LevelError, ""); len(logs) != 0 {
		t.Errorf("429 logged as errors: %v", logs)
	}
}

// TestRejected: a master that refuses the node's token is logged at error level,
// naming the master, the status and the master's message, once per change of the
// pins, and retried slowly.
func TestRejected(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{})
	f := newFixture(t, fixtureOptions{masters: []string{m.url}, token: tokenOf(t, "node-2")})
	f.set(t, "c1", "a:1", dA)
	f.run()
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	m.next(t, http.StatusForbidden)
	f.clock.waitFor(t, "slow retry", maxBackoff/2, maxBackoff)
	m.next(t, http.StatusForbidden)
	f.clock.waitFor(t, "slow retry", maxBackoff/2, maxBackoff)
	m.next(t, http.StatusForbidden)

	logs := f.logs.at(slog.LevelError, "rejected")
	if len(logs) != 1 {
		t.Fatalf("%d errors logged after 3 rejections of one set, want 1", len(logs))
	}
	l := logs[0]
	if l.attrs["master"] != m.url || l.attrs["status"] != "403 Forbidden" ||
		!strings.Contains(l.attrs["message"], `DENIED: the token of node "node-2" cannot report pins of "node-1"`) ||
		!strings.Contains(l.msg, "another node's") {
		t.Errorf("logged %q %v, want the master, 403 and its message", l.msg, l.attrs)
	}

	// A change: the next rejection is logged again. It waits for the retry.
	d := f.clock.wait(t)
	f.set(t, "c2", "b:1", dB)
	if d2 := f.clock.wait(t); d2 != d {
		t.Fatalf("after a change, waits %s, want the retry's %s", d2, d)
	}
	f.clock.advance(d)
	if p := m.next(t, http.StatusForbidden); len(p.Images) != 2 {
		t.Errorf("report %+v, want 2 images", p)
	}
	f.clock.wait(t)
	if n := len(f.logs.at(slog.LevelError, "rejected")); n != 2 {
		t.Errorf("%d errors logged, want 2: one per set", n)
	}
	if f.reports(ResultRejected) != 4 {
		t.Errorf("%v reports rejected, want 4", f.reports(ResultRejected))
	}
}

// TestResolve: a container without a digest, or with an invalid one, is resolved in
// the background, retried after a failure, and pinned once resolved.
func TestResolve(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{})
	f := newFixture(t, fixtureOptions{masters: []string{m.url}})
	f.set(t, "c1", "a:1", "sha256:bad")
	f.run()
	f.resolver.answer(t, "a:1", "", errors.New("image a:1 not found"))
	f.clock.waitFor(t, "resolution backoff", minBackoff/2, minBackoff)
	f.resolver.answer(t, "a:1", "sha256:still-bad", nil)
	f.clock.waitFor(t, "resolution backoff", minBackoff, 2*minBackoff)
	f.resolver.answer(t, "a:1", dA, nil)
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	if p := m.next(t, http.StatusOK); len(p.Images) != 1 || p.Images[0].Image != "a:1" || p.Images[0].Digest != string(dA) {
		t.Errorf("report %+v, want a:1 at %s", p, dA)
	}
	f.clock.wait(t)
	if got := m.lease(t); !slices.Equal(got, []digest.Digest{dA}) {
		t.Errorf("the master pins %v, want %s", got, dA)
	}
	if n := len(f.logs.at(slog.LevelWarn, "resolving an image's digest failed")); n != 1 {
		t.Errorf("%d warnings of failed resolutions, want 1", n)
	}
}

// TestBounds: the 10001st container evicts the first, and of 10000 digests the
// report carries the 1000 of the most recently added containers.
func TestBounds(t *testing.T) {
	t.Parallel()
	m := newMaster(t, masterOptions{})
	f := newFixture(t, fixtureOptions{masters: []string{m.url}})
	digestOf := func(i int) digest.Digest { return digest.FromString(fmt.Sprint(i)) }
	for i := range DefaultMaxContainers + 1 {
		f.set(t, fmt.Sprintf("c%d", i), fmt.Sprintf("image-%d", i), digestOf(i))
	}
	f.run()
	f.clock.waitFor(t, "debounce", DefaultDebounce, DefaultDebounce)
	p := m.next(t, http.StatusOK)
	var want []digest.Digest
	for i := DefaultMaxContainers + 1 - MaxImages; i <= DefaultMaxContainers; i++ {
		want = append(want, digestOf(i))
	}
	slices.Sort(want)
	if got := digestsOfPins(p); !slices.Equal(got, want) {
		t.Errorf("report of %d images, want the %d most recent", len(got), len(want))
	}
	if got := m.lease(t); !slices.Equal(got, want) {
		t.Errorf("the master pins %d images, want the %d most recent", len(got), len(want))
	}
	f.clock.wait(t)
	f.r.mu.Lock()
	_, first := f.r.set.containers["c0"]
	n := len(f.r.set.containers)
	f.r.mu.Unlock()
	if first || n != DefaultMaxContainers {
		t.Errorf("%d containers tracked, the first among them: %v; want %d without it", n, first, DefaultMaxContainers)
	}
	if n := len(f.logs.at(slog.LevelWarn, "too many containers")); n != 1 {
		t.Errorf("%d warnings of too many containers, want 1", n)
	}
	if n := len(f.logs.at(slog.LevelWarn, "too many images")); n != 1 {
		t.Errorf("%d warnings of too many images, want 1", n)
	}
}

func TestSetRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOptions{masters: []string{noMaster}})
	tests := []struct {
		name, id, image string
		d               digest.Digest
		want            string
	}{
		{"no container ID", "", "a:1", dA, "empty container ID"},
		{"neither image nor digest", "c1", "", "", "neither image nor digest"},
		{"no image, an invalid digest", "c1", "", "sha256:bad", `digest "sha256:bad"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.r.Set(tt.id, tt.image, tt.d)
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Set = %v, want an invalid argument containing %q", err, tt.want)
			}
		})
	}
	err := f.r.Replace(map[string]ImageRef{"c1": {"", ""}, "c2": {"a:1", dA}})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "container c1") {
		t.Errorf("Replace = %v, want c1 refused", err)
	}
	f.r.mu.Lock()
	defer f.r.mu.Unlock()
	if len(f.r.set.containers) != 1 || f.r.set.containers["c2"] == nil {
		t.Errorf("tracked %v, want c2 only", f.r.set.containers)
	}
	if n := len(f.r.set.digests); n != 1 {
		t.Errorf("%d digests, want 1", n)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(tokenOf(t, node)), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open-token")
	if err := os.WriteFile(open, []byte(tokenOf(t, node)), 0o644); err != nil {
		t.Fatal(err)
	}
	resolve := func(context.Context, string) (digest.Digest, error) { return "", errors.New("no") }
	good := Config{Node: node, Masters: []string{"https://127.0.1.1:5001"}, TokenFile: token, Resolve: resolve}
	tests := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"good", func(*Config) {}, ""},
		{"http with tls.insecure", func(c *Config) { c.Masters = []string{"http://127.0.1.1:5001"}; c.TLS.Insecure = true }, ""},
		{"bad node", func(c *Config) { c.Node = "../x" }, "node name"},
		{"no master", func(c *Config) { c.Masters = nil }, "no master"},
		{"no Resolve", func(c *Config) { c.Resolve = nil }, "Resolve is required"},
		{"http", func(c *Config) { c.Masters = []string{"http://127.0.1.1:5001"} }, "want https://"},
		{"a path", func(c *Config) { c.Masters = []string{"https://127.0.1.1:5001/v2/"} }, "want https://"},
		{"no host", func(c *Config) { c.Masters = []string{"127.0.1.1:5001"} }, "master"},
		{"no token file", func(c *Config) { c.TokenFile = filepath.Join(dir, "none") }, "reading the node token"},
		{"an open token file", func(c *Config) { c.TokenFile = open }, "too open"},
		{"no CA file", func(c *Config) { c.TLS.CA = filepath.Join(dir, "none") }, "tls.ca"},
		{"a CA file without PEM", func(c *Config) { c.TLS.CA = token }, "no PEM certificate"},
		{"a client certificate without its key", func(c *Config) { c.TLS.Cert = token }, "tls.cert, tls.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := good
			tt.change(&c)
			_, err := New(c)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOptions{masters: []string{noMaster}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.r.Run(ctx); err != nil {
		t.Errorf("Run = %v after its context ended, want nil", err)
	}
	if err := f.r.Run(t.Context()); err == nil {
		t.Error("a second Run returned nil, want an error")
	}
}

func TestDue(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_800_000_000, 0)
	held := &runState{held: []digest.Digest{dA}, heldKnown: true, lastOK: t0, period: time.Minute}
	emptyHeld := &runState{held: []digest.Digest{}, heldKnown: true, lastOK: t0, period: time.Minute}
	tests := []struct {
		name                string
		s                   *runState
		want                []digest.Digest
		replaced            bool
		at                  time.Duration
		wantChange, wantRen bool
	}{
		{"fresh, nothing", &runState{}, nil, false, 0, false, false},
		{"fresh, after Replace", &runState{}, nil, true, 0, true, false},
		{"fresh, pins", &runState{}, []digest.Digest{dA}, false, 0, true, false},
		{"held, same", held, []digest.Digest{dA}, true, 0, false, false},
		{"held, other", held, []digest.Digest{dB}, false, 0, true, false},
		{"held, empty", held, nil, false, 0, true, false},
		{"held, renewal due", held, []digest.Digest{dA}, false, time.Minute, false, true},
		{"held empty, nothing to renew", emptyHeld, nil, false, time.Hour, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed, renew := tt.s.due(tt.want, tt.replaced, t0.Add(tt.at))
			if changed != tt.wantChange || renew != tt.wantRen {
				t.Errorf("due = %v, %v; want %v, %v", changed, renew, tt.wantChange, tt.wantRen)
			}
		})
	}
}
