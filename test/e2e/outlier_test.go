package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The tests in this file check the node's failure policy, what the balancer in
// bin/containerd does when a master or the upstream behind it misbehaves:
//   - a 4xx never counts against a master, nor does a 5xx that the master marks
//     with Hopless-Upstream-Error (the upstream failed); that one reaches containerd
//     as an error naming the upstream and its status;
//   - local-origin failures count: connect or TLS errors, no headers in time, a
//     stalled, cut or too slow body, a failed active check. A master is ejected
//     after consecutive failures, or at once by a failed active check; when every
//     master is out the balancer still routes (panic routing);
//   - hedges are bounded by a budget; a body slower than a floor is resumed on
//     another master; resumes are counted in attempts, so the same master may serve
//     a resume after it comes back;
//   - the node hashes blob bodies, and a digest mismatch makes containerd retry the
//     blob with Cache-Control: no-cache, which makes the master verify its copy.
//
// They judge by causes and counts: which master served what (the masters' access
// logs), Range offsets, the node's hopless metrics, the pull's error text and the
// digest of the image the node ends up with. Nothing asserts how long anything
// took; every wait is bounded by olWait, and reaching it fails the test.

const olWait = 2 * time.Minute

// olLab starts an inprocess lab in slot; tune adjusts the options after.
func olLab(t *testing.T, slot, masters, nodes int, tune ...func(*lab.Options)) *lab.Lab {
	t.Helper()
	return upLab(t, slot, masters, nodes, append([]func(*lab.Options){inprocess()}, tune...)...)
}

// olPull pulls ref on node, bounded by olWait, and returns crictl's error.
func olPull(l *lab.Lab, node int, ref string) error {
	ctx, cancel := context.WithTimeout(context.Background(), olWait)
	defer cancel()
	_, err := l.Crictl(ctx, node, "pull", ref)
	return err
}

// olMustPull pulls ref on node and checks that the node has the image digest.
func olMustPull(t *testing.T, l *lab.Lab, node int, ref, digest string) {
	t.Helper()
	if err := olPull(l, node, ref); err != nil {
		t.Fatalf("pull %s on node-%d: %v\nnode metrics:\n%s", ref, node, err, plHopless(plNodeMetrics(t, l, node)))
	}
	plHasImage(t, l, node, digest)
}

// olScrape is one read of a node's metrics.
type olScrape struct {
	t    *testing.T
	text string
}

func olMetrics(t *testing.T, l *lab.Lab, node int) olScrape {
	t.Helper()
	return olScrape{t: t, text: plNodeMetrics(t, l, node)}
}

// sum adds the samples of name whose labels include want.
func (s olScrape) sum(name string, want map[string]string) float64 {
	s.t.Helper()
	return sampleSum(s.t, s.text, name, want)
}

// ep is the endpoint label of a master, with more labels.
func olEP(m lab.Master, kv ...string) map[string]string {
	out := map[string]string{"endpoint": plEndpoint(m)}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// samples returns the samples of name.
func (s olScrape) samples(name string) []lab.Sample {
	s.t.Helper()
	return metricSamples(s.t, s.text, name)
}

// olLocalKinds are the error kinds of local-origin failures of a request (the
// active checks' "health" aside).
var olLocalKinds = []string{"transport", "timeout", "stall", "slow", "body"}

// olAttempts splits the attempts sent to m between before and after into those
// that m answered (any status) and those it did not ("error", "canceled").
func olAttempts(before, after olScrape, m lab.Master) (answered, unanswered float64) {
	count := func(s olScrape) (a, u float64) {
		for _, x := range s.samples("hopless_plugin_requests_total") {
			if x.Labels["endpoint"] != plEndpoint(m) {
				continue
			}
			if _, err := strconv.Atoi(x.Labels["code"]); err == nil {
				a += x.Value
			} else {
				u += x.Value
			}
		}
		return a, u
	}
	a0, u0 := count(before)
	a1, u1 := count(after)
	return a1 - a0, u1 - u0
}

// olExplained is what accounts for unanswered attempts to m between before and
// after: the hedges sent past them and m's local-origin failures.
func olExplained(before, after olScrape, m lab.Master) float64 {
	d := after.sum("hopless_plugin_hedges_total", nil) - before.sum("hopless_plugin_hedges_total", nil)
	for _, k := range olLocalKinds {
		d += after.sum("hopless_plugin_errors_total", olEP(m, "kind", k)) - before.sum("hopless_plugin_errors_total", olEP(m, "kind", k))
	}
	return d
}

// olCheckFrozenAccounting checks the attempts that the node sent to a frozen
// master between before and after: it answered none, and each one is accounted
// for by a hedge past it or by a local-origin failure of the master.
func olCheckFrozenAccounting(t *testing.T, before, after olScrape, m lab.Master) {
	t.Helper()
	answered, unanswered := olAttempts(before, after, m)
	explained := olExplained(before, after, m)
	t.Logf("%s frozen: %v attempts unanswered, %v answered; hedges + its local failures: %v", m.Name, unanswered, answered, explained)
	if answered != 0 {
		t.Errorf("the node counted %v answers from the frozen %s", answered, m.Name)
	}
	if unanswered > explained {
		t.Errorf("%v attempts to the frozen %s went unanswered, but hedges and its local failures account for only %v:\n%s",
			unanswered, m.Name, explained, plHopless(after.text))
	}
}

// olWaitEjected waits until the node has m out of rotation and returns that scrape:
// endpoint_healthy 0 and at least one ejection counted.
func olWaitEjected(t *testing.T, l *lab.Lab, node int, m lab.Master) olScrape {
	t.Helper()
	var s olScrape
	why := clPoll(olWait, func() string {
		s = olMetrics(t, l, node)
		h := s.sum("hopless_plugin_endpoint_healthy", olEP(m))
		e := s.sum("hopless_plugin_ejections_total", olEP(m))
		if h != 0 || e < 1 {
			return fmt.Sprintf("node-%d has %s healthy %v after %v ejections", node, m.Name, h, e)
		}
		return ""
	})
	if why != "" {
		t.Fatalf("%s:\n%s", why, plHopless(s.text))
	}
	return s
}

// olSettled scrapes node's metrics until its attempt counts stay the same over a
// few scrapes, so that attempts just given up are counted, and returns that scrape.
func olSettled(t *testing.T, l *lab.Lab, node int) olScrape {
	t.Helper()
	var s olScrape
	last, same := "", 0
	why := clPoll(olWait, func() string {
		s = olMetrics(t, l, node)
		var b strings.Builder
		for _, x := range s.samples("hopless_plugin_requests_total") {
			fmt.Fprintf(&b, "%v=%v;", x.Labels, x.Value)
		}
		if b.String() == last {
			same++
		} else {
			last, same = b.String(), 0
		}
		if same < 3 {
			return "the node's attempt counts still change"
		}
		return ""
	})
	if why != "" {
		t.Fatal(why)
	}
	return s
}

// olFreeze sends SIGSTOP to the named masters and SIGCONT at the end of the test.
func olFreeze(t *testing.T, l *lab.Lab, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := l.Signal(n, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.Signal(n, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT %s: %v", n, err)
			}
		})
	}
}

// olRangeFrom parses "bytes=N-" (or "bytes=N-M") and returns N.
func olRangeFrom(rng string) (int64, bool) {
	rest, ok := strings.CutPrefix(rng, "bytes=")
	if !ok {
		return 0, false
	}
	from, _, ok := strings.Cut(rest, "-")
	n, err := strconv.ParseInt(from, 10, 64)
	return n, ok && err == nil
}

// olLayerGETs returns the GETs of blob d in master's access log beyond the first
// marks[master] requests it logged (see olLogMarks).
func olLayerGETs(t *testing.T, l *lab.Lab, marks map[string]int, master, d string) []lab.Request {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	var out []lab.Request
	seen := 0
	for _, r := range reqs {
		if r.Master != master {
			continue
		}
		if seen++; seen > marks[master] && r.IsBlobGET() && strings.HasSuffix(r.Path, "/blobs/"+d) {
			out = append(out, r)
		}
	}
	return out
}

// olRegistryRequests counts the manifest and blob requests in master's access log.
func olRegistryRequests(t *testing.T, l *lab.Lab, master string) int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range reqs {
		if r.Master == master && plRegistryRE.MatchString(r.Path) {
			n++
		}
	}
	return n
}

// olSettledRequests waits until master's access log stops growing and returns
// its count of manifest and blob requests: a request is logged just after its
// response ends, so a count taken at once may miss the last ones.
func olSettledRequests(t *testing.T, l *lab.Lab, master string) int {
	t.Helper()
	last, same := -1, 0
	why := clPoll(olWait, func() string {
		n := olRegistryRequests(t, l, master)
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
		if same < 5 {
			return fmt.Sprintf("%s's access log still grows (%d requests)", master, n)
		}
		return ""
	})
	if why != "" {
		t.Fatal(why)
	}
	return last
}

// olThawAndCount sends SIGCONT to a frozen master and returns how many manifest and
// blob requests it logged beyond logged0 (an olSettledRequests count from before it
// froze) once its log has settled: the requests that reached it while it was
// frozen, which it handles only now.
func olThawAndCount(t *testing.T, l *lab.Lab, m lab.Master, logged0 int) int {
	t.Helper()
	if err := l.Signal(m.Name, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	return olSettledRequests(t, l, m.Name) - logged0
}

// olLogMarks counts the requests in each master's access log, to tell later
// requests from earlier ones.
func olLogMarks(t *testing.T, l *lab.Lab) map[string]int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range reqs {
		n[r.Master]++
	}
	return n
}

// TestOutlierUpstreamErrors makes the upstream fail for one cold image: 503, 429
// with Retry-After, and a hang. The masters pass the failure on, marked as the
// upstream's: the pull fails with an error that names the upstream and what it
// did, no master is ejected, and a pull of an image that every master has cached
// succeeds right after on the same node.
func TestOutlierUpstreamErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		slot   int
		faults lab.Faults
		// status is the upstream's status as the node's error and metrics give
		// it; "" for the hang, where only a timeout of the upstream is known.
		status string
	}{
		{"503", slotOutlierUpstream503, lab.Faults{Status: http.StatusServiceUnavailable}, "503"},
		{"429", slotOutlierUpstream429, lab.Faults{Status: http.StatusTooManyRequests, Headers: map[string]string{"Retry-After": "7"}}, "429"},
		{"hang", slotOutlierUpstreamHang, lab.Faults{Hang: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := olLab(t, tc.slot, 3, 1)
			cached := lab.UpstreamPath + "/ol-cached"
			cold := lab.UpstreamPath + "/ol-cold"
			warm := seed(t, l, cached, "v1", 2, 256<<10)
			seed(t, l, cold, "v1", 2, 256<<10)
			plWarm(t, l, cached, "v1")
			f := tc.faults
			f.Repo = cold
			plFaults(t, l, f)

			err := olPull(l, 1, l.PullRef(cold, "v1"))
			if err == nil {
				t.Fatal("the pull of an image whose upstream fails succeeded")
			}
			t.Logf("the pull failed: %v", err)
			msg := err.Error()
			up := regexp.QuoteMeta(l.Upstream)
			if tc.status != "" {
				if !regexp.MustCompile(`upstream (https://)?` + up + ` answered ` + tc.status).MatchString(msg) {
					t.Errorf("the error does not say %q: %s", "upstream "+l.Upstream+" answered "+tc.status, msg)
				}
			} else {
				if !regexp.MustCompile(`upstream (https://)?`+up).MatchString(msg) ||
					!regexp.MustCompile(`(?i)timeout|did not answer|answered 504`).MatchString(msg) {
					t.Errorf("the error does not say that upstream %s timed out: %s", l.Upstream, msg)
				}
			}
			if tc.name == "429" && !strings.Contains(msg, "Retry-After 7") {
				t.Errorf("the error does not pass on the upstream's Retry-After 7: %s", msg)
			}
			if strings.Contains(msg, "registry endpoints are down") {
				t.Errorf("the error blames the masters for the upstream's failure: %s", msg)
			}
			// The upstream did fail the masters' requests for the cold image.
			failed := 0
			for _, e := range plUpstreamLog(t, l) {
				if strings.HasPrefix(e.Path, "/v2/"+cold+"/") && (e.Status >= 400 || e.Aborted) {
					failed++
				}
			}
			if tc.status != "" && failed == 0 {
				t.Errorf("the upstream logged no failed request for %s", cold)
			}

			olMustPull(t, l, 1, l.PullRef(cached, "v1"), warm.Digest)
			s := olMetrics(t, l, 1)
			if n := s.sum("hopless_plugin_ejections_total", nil); n != 0 {
				t.Errorf("hopless_plugin_ejections_total is %v after upstream failures, want 0:\n%s", n, plHopless(s.text))
			}
			for _, m := range l.Masters {
				if h := s.sum("hopless_plugin_endpoint_healthy", olEP(m)); h != 1 {
					t.Errorf("%s has endpoint_healthy %v after upstream failures, want 1", m.Name, h)
				}
			}
			want := map[string]string{}
			if tc.status != "" {
				want["status"] = tc.status
			}
			if n := s.sum("hopless_plugin_upstream_errors_total", want); n < 1 {
				t.Errorf("hopless_plugin_upstream_errors_total%v is %v, want >= 1:\n%s", want, n, plHopless(s.text))
			}
		})
	}
}

// olFrozenLab is a lab of 3 masters and one node with two images that every master
// holds, v1 and v2, each of 4 layers of 1 MiB.
func olFrozenLab(t *testing.T, slot int, repo string) (*lab.Lab, lab.SeedResult, lab.SeedResult) {
	t.Helper()
	l := olLab(t, slot, 3, 1)
	v1 := seed(t, l, repo, "v1", 4, 1<<20)
	v2 := seed(t, l, repo, "v2", 4, 1<<20)
	plWarm(t, l, repo, "v1")
	plWarm(t, l, repo, "v2")
	return l, v1, v2
}

// TestOutlierFrozenEarly freezes a master 3 s before a pull. The node is idle then
// and checks its masters only every health_idle_interval, so it learns of the freeze
// when the pull makes it active: the checks it makes at once, in parallel with the
// pull's first request, take the master out, and that request, if it went there, is
// the only one the master gets (a hedge delay without headers probes it).
func TestOutlierFrozenEarly(t *testing.T) {
	t.Parallel()
	repo := lab.UpstreamPath + "/ol-frozen-early"
	l, v1, _ := olFrozenLab(t, slotOutlierFrozenEarly, repo)
	m1 := l.Masters[0]
	logged := olSettledRequests(t, l, m1.Name)
	olFreeze(t, l, m1.Name)
	time.Sleep(3 * time.Second) // the scenario: frozen for 3 s before the pull
	before := olMetrics(t, l, 1)
	olMustPull(t, l, 1, l.PullRef(repo, "v1"), v1.Digest)
	// The pull may end before the wake check's timeout, with an attempt to the
	// frozen master still waiting: count once it is out and the attempts settled.
	olWaitEjected(t, l, 1, m1)
	after := olSettled(t, l, 1)
	a, u := olAttempts(before, after, m1)
	if a+u > 1 {
		t.Errorf("the node sent %v attempts to %s, frozen 3 s before the pull; want at most the first request's", a+u, m1.Name)
	}
	if n := after.sum("hopless_plugin_ejections_total", olEP(m1, "reason", "health")); n < 1 {
		t.Errorf("hopless_plugin_ejections_total{%s, reason=health} is %v: no failed active check took it out:\n%s", m1.Name, n, plHopless(after.text))
	}
	if h := after.sum("hopless_plugin_endpoint_healthy", olEP(m1)); h != 0 {
		t.Errorf("the frozen %s has endpoint_healthy %v", m1.Name, h)
	}
	if n := olThawAndCount(t, l, m1, logged); float64(n) > a+u {
		t.Errorf("%s logged %d manifest and blob requests that reached it while frozen; the node counts only %v attempts sent to it", m1.Name, n, a+u)
	}
}

// TestOutlierFrozenJustBefore freezes a master right before a pull. The attempts
// that land on it are hedged or fail; it ends up out of rotation, and a second pull
// sends it nothing. Once thawed, it has received no more requests than the node
// counted as sent to it and unanswered.
func TestOutlierFrozenJustBefore(t *testing.T) {
	t.Parallel()
	repo := lab.UpstreamPath + "/ol-frozen-now"
	l, v1, v2 := olFrozenLab(t, slotOutlierFrozenJustBefore, repo)
	m1 := l.Masters[0]
	before := olMetrics(t, l, 1)
	logged := olSettledRequests(t, l, m1.Name)
	olFreeze(t, l, m1.Name)
	olMustPull(t, l, 1, l.PullRef(repo, "v1"), v1.Digest)

	// Out of rotation, its attempts still waiting are given up: they are all
	// counted from here on.
	olWaitEjected(t, l, 1, m1)
	ejected := olSettled(t, l, 1)
	olMustPull(t, l, 1, l.PullRef(repo, "v2"), v2.Digest)
	after := olSettled(t, l, 1)
	if a, u := olAttempts(ejected, after, m1); a+u != 0 {
		t.Errorf("the node sent %v attempts to %s after ejecting it", a+u, m1.Name)
	}
	olCheckFrozenAccounting(t, before, after, m1)
	_, unanswered := olAttempts(before, after, m1)
	if n := olThawAndCount(t, l, m1, logged); float64(n) > unanswered {
		t.Errorf("%s logged %d manifest and blob requests that reached it while frozen; the node counts only %v attempts sent to it", m1.Name, n, unanswered)
	}
}

// TestOutlierTwoFrozenCold freezes 2 of 3 masters right before a cold pull, with
// the masters peers of each other: the one left fills from the upstream (its peers
// are frozen too) and serves every layer.
func TestOutlierTwoFrozenCold(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierTwoFrozenCold, 3, 1)
	repo := lab.UpstreamPath + "/ol-two-frozen"
	img := seed(t, l, repo, "v1", 3, 1<<20)
	frozen := l.Masters[:2]
	before := olMetrics(t, l, 1)
	since := olLogMarks(t, l)
	logged := map[string]int{}
	for _, m := range frozen {
		logged[m.Name] = olSettledRequests(t, l, m.Name)
	}
	olFreeze(t, l, frozen[0].Name, frozen[1].Name)
	olMustPull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	// The frozen masters' logs hold nothing new until they run again, so every
	// layer served comes from master-3.
	for _, d := range img.Layers {
		ok := false
		for _, r := range olLayerGETs(t, l, since, "master-3", d) {
			ok = ok || r.Status == http.StatusOK || r.Status == http.StatusPartialContent
		}
		if !ok {
			t.Errorf("master-3 logged no successful GET of layer %s", d)
		}
	}
	if got := upstreamGETs(t, l, img.Layers[0]); len(got) == 0 {
		t.Errorf("the upstream logged no GET of the cold layer %s", img.Layers[0])
	}
	// Both are out of rotation: ejected, or marked unhealthy by the active checks
	// (the ejection cap may keep one of them from counting as ejected).
	for _, m := range frozen {
		var h float64
		why := clPoll(olWait, func() string {
			if h = olMetrics(t, l, 1).sum("hopless_plugin_endpoint_healthy", olEP(m)); h != 0 {
				return fmt.Sprintf("the frozen %s still has endpoint_healthy %v", m.Name, h)
			}
			return ""
		})
		if why != "" {
			t.Error(why)
		}
	}
	after := olSettled(t, l, 1)
	for _, m := range frozen {
		olCheckFrozenAccounting(t, before, after, m)
		_, unanswered := olAttempts(before, after, m)
		if n := olThawAndCount(t, l, m, logged[m.Name]); float64(n) > unanswered {
			t.Errorf("%s logged %d manifest and blob requests that reached it while frozen; the node counts only %v attempts sent to it", m.Name, n, unanswered)
		}
	}
}

// TestOutlierFlapping freezes and thaws one master every 300 ms across 5 pulls:
// every pull succeeds with the right image, and every attempt the flapping master
// left unanswered is accounted for by a hedge or by its failures.
func TestOutlierFlapping(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierFlapping, 3, 1)
	repo := lab.UpstreamPath + "/ol-flapping"
	// 16 MiB per pull: long enough that freezes land in the middle of requests
	// and bodies.
	imgs := make([]lab.SeedResult, 5)
	for i := range imgs {
		tag := fmt.Sprintf("v%d", i)
		imgs[i] = seed(t, l, repo, tag, 4, 4<<20)
		plWarm(t, l, repo, tag)
	}
	m1 := l.Masters[0]
	before := olMetrics(t, l, 1)
	stop := l.Flap(m1.Name, 300*time.Millisecond, 300*time.Millisecond)
	t.Cleanup(func() { _ = stop() })
	for i, img := range imgs {
		olMustPull(t, l, 1, l.PullRef(repo, fmt.Sprintf("v%d", i)), img.Digest)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	after := olMetrics(t, l, 1)
	answered, unanswered := olAttempts(before, after, m1)
	explained := olExplained(before, after, m1)
	t.Logf("flapping %s: %v attempts answered, %v unanswered; hedges + its local failures %v; ejections %v",
		m1.Name, answered, unanswered, explained, after.sum("hopless_plugin_ejections_total", olEP(m1)))
	if unanswered > explained {
		t.Errorf("%v attempts to the flapping %s went unanswered, but hedges and its local failures account for only %v:\n%s",
			unanswered, m1.Name, explained, plHopless(after.text))
	}
}

// TestOutlierTrickle makes master-1 serve a layer far below the throughput floor:
// the node resumes the body on master-2 with a Range request and counts a "slow"
// failure of master-1. The setup is TestPluginFrozenMidBlob's: weights 100:1 send
// the pull to master-1, peers off and the layer cold on master-1 make it stream the
// layer at the throttled upstream's pace, and master-2 holds the layer already.
func TestOutlierTrickle(t *testing.T) {
	t.Parallel()
	l := upLab(t, slotOutlierTrickle, 2, 1, inprocess(100, 1), func(o *lab.Options) { o.Registryd.NoPeers = true })
	repo := lab.UpstreamPath + "/ol-trickle"
	img := seed(t, l, repo, "v1", 1, 8<<20)
	layer := img.Layers[0]
	if r := getBlob(ctxFor(t, olWait), labHTTP(t, l), l, 2, repo, layer, ""); !r.complete() || sha(r.Body) != layer {
		t.Fatalf("warming %s on master-2: %s", layer, r)
	}
	// The first 256 KiB at full speed, then 32 KiB/s, half the default floor of
	// 64 KiB/s: 4 minutes for the rest of the layer. The fast start matters: a
	// master's fill releases bytes in steps of 64 KiB and sends its headers with
	// the first, so a body slow from its first byte would lose to a hedge before it
	// started rather than trickle.
	plFaults(t, l, lab.Faults{Repo: repo, ThrottleAfter: 256 << 10, ThrottleBPS: 32 << 10})
	since := olLogMarks(t, l)
	olMustPull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)

	s := olMetrics(t, l, 1)
	if n := s.sum("hopless_plugin_errors_total", olEP(l.Masters[0], "kind", "slow")); n < 1 {
		t.Errorf("the node counted no slow body of master-1 (errors_total{kind=\"slow\"} is %v):\n%s", n, plHopless(s.text))
	}
	var resumed []lab.Request
	for _, r := range olLayerGETs(t, l, since, "master-2", layer) {
		if r.Range != "" {
			resumed = append(resumed, r)
		}
	}
	if len(resumed) != 1 {
		t.Fatalf("want one Range GET of the layer on master-2, got %+v", resumed)
	}
	r := resumed[0]
	n, ok := olRangeFrom(r.Range)
	if !ok || n < 256<<10 || n >= img.Bytes {
		t.Fatalf("master-2's resume: Range %q, want bytes=N- with 256 KiB (the fast start) <= N < %d", r.Range, img.Bytes)
	}
	if r.Status != http.StatusPartialContent || r.Bytes != img.Bytes-n {
		t.Errorf("master-2's resume from byte %d: status %d, %d bytes; want 206 and %d bytes", n, r.Status, r.Bytes, img.Bytes-n)
	}
	t.Logf("master-1 delivered %d bytes before the node moved the layer to master-2", n)
}

// TestOutlierSingleMasterRestart kills the only master with SIGKILL in the middle
// of a cold layer and starts it again: the pull completes, and the master serves
// the rest of the layer after its restart with a Range request.
func TestOutlierSingleMasterRestart(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierSingleMaster, 1, 1)
	m := l.Masters[0]
	repo := lab.UpstreamPath + "/ol-single"
	img := seed(t, l, repo, "v1", 1, 32<<20)
	layer := img.Layers[0]
	// 8 MiB/s: the master streams the layer for 4 s as the upstream delivers it.
	plFaults(t, l, lab.Faults{Repo: repo, ThrottleBPS: 8 << 20})

	done := make(chan error, 1)
	go func() { done <- olPull(l, 1, l.PullRef(repo, "v1")) }()
	deadline := time.Now().Add(olWait)
	for {
		select {
		case err := <-done:
			t.Fatalf("the pull ended (error %v) before the master had sent 4 MiB of the layer", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the master did not send 4 MiB of the layer within %s", olWait)
		}
		if sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_bytes_total", olEP(m)) >= 4<<20 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Signal(m.Name, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, olWait, m.Name+" is gone after SIGKILL", func() bool {
		for _, s := range l.Status() {
			if s.Name == m.Name {
				return !s.Alive
			}
		}
		return false
	})
	plFaults(t, l, lab.Faults{})
	since := olLogMarks(t, l)
	if err := l.Start(ctxFor(t, olWait), m.Name); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pull with the only master killed mid-layer and restarted: %v\nnode metrics:\n%s", err, plHopless(plNodeMetrics(t, l, 1)))
		}
	case <-time.After(olWait):
		t.Fatalf("the pull did not end within %s of the restart", olWait)
	}
	plHasImage(t, l, 1, img.Digest)
	var resumed []lab.Request
	for _, r := range olLayerGETs(t, l, since, m.Name, layer) {
		if n, ok := olRangeFrom(r.Range); ok && n > 0 {
			resumed = append(resumed, r)
		}
	}
	if len(resumed) == 0 {
		t.Errorf("%s logged no Range GET of the layer after its restart: %+v", m.Name, olLayerGETs(t, l, since, m.Name, layer))
	}
	for _, r := range resumed {
		n, _ := olRangeFrom(r.Range)
		if r.Status != http.StatusPartialContent || r.Bytes != img.Bytes-n {
			t.Errorf("the resume from byte %d: status %d, %d bytes; want 206 and %d bytes", n, r.Status, r.Bytes, img.Bytes-n)
		}
	}
	if n := sampleSum(t, plNodeMetrics(t, l, 1), "hopless_plugin_resumes_total", nil); n < 1 {
		t.Errorf("hopless_plugin_resumes_total is %v after a resume", n)
	}
}

// TestOutlierCorruptEverywhere corrupts one layer's stored copy on every master,
// leaving its metadata as it was, so that each master serves it as verified. The
// node's digest check catches it and containerd asks again with no-cache, which
// makes a master verify its copy and fetch the layer again: the pull succeeds.
func TestOutlierCorruptEverywhere(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierCorruptAll, 3, 1)
	repo := lab.UpstreamPath + "/ol-corrupt"
	img := seed(t, l, repo, "v1", 2, 2<<20)
	plWarm(t, l, repo, "v1")
	layer := img.Layers[0]
	r := getBlob(ctxFor(t, olWait), labHTTP(t, l), l, 1, repo, layer, "")
	if !r.complete() || sha(r.Body) != layer {
		t.Fatalf("GET %s from master-1: %s", layer, r)
	}
	size := int64(len(r.Body))
	for i := range l.Masters {
		path, err := l.StoredBlobPath(i+1, layer)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, olWait, fmt.Sprintf("master-%d stores %s", i+1, layer), func() bool {
			fi, err := os.Stat(path)
			return err == nil && fi.Size() == size
		})
		if err := l.CorruptStoredBlob(i+1, layer); err != nil {
			t.Fatal(err)
		}
	}
	upBefore := len(upstreamGETs(t, l, layer))

	olMustPull(t, l, 1, l.PullRef(repo, "v1"), img.Digest)
	s := olMetrics(t, l, 1)
	mismatches := s.sum("hopless_plugin_digest_mismatches_total", nil)
	var verifyFailures float64
	for i := range l.Masters {
		verifyFailures += metric(t, l, i+1, "hopless_registryd_verify_failures_total", nil)
	}
	refills := len(upstreamGETs(t, l, layer)) - upBefore
	t.Logf("digest mismatches on the node %v, verify failures on the masters %v, upstream refills %d", mismatches, verifyFailures, refills)
	if mismatches < 1 && (verifyFailures < 1 || refills < 1) {
		t.Errorf("nothing shows how the corrupt copies were caught: node digest mismatches %v, master verify failures %v, upstream refills %d:\n%s",
			mismatches, verifyFailures, refills, plHopless(s.text))
	}
}

// olNodeLog reads node i's containerd log.
func olNodeLog(t *testing.T, l *lab.Lab, node int) string {
	t.Helper()
	b, err := os.ReadFile(l.Nodes[node-1].Dir + "/log")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOutlierCRILocalPullRefuse configures CRI to discard unpacked layers, which
// makes CRI pull through its local path past hopless: with cri_local_pull left at
// its default (refuse), the node says why in its log and CRI does not serve.
func TestOutlierCRILocalPullRefuse(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierCRIRefuse, 1, 1, func(o *lab.Options) {
		o.CRIImagesExtra = "discard_unpacked_layers = true"
		o.NoCRIWait = true
	})
	why := clPoll(olWait, func() string {
		if !strings.Contains(olNodeLog(t, l, 1), "discard_unpacked_layers") {
			return "node-1's log does not name discard_unpacked_layers"
		}
		return ""
	})
	if why != "" {
		t.Fatalf("%s; it ends:\n%s", why, olTail(olNodeLog(t, l, 1), 30))
	}
	ctx := ctxFor(t, olWait)
	if out, err := l.Crictl(ctx, 1, "version"); err == nil {
		t.Errorf("CRI serves with discard_unpacked_layers and cri_local_pull refuse: crictl version says %s", out)
	}
	if _, err := l.Crictl(ctx, 1, "images"); err == nil {
		t.Error("CRI lists images with discard_unpacked_layers and cri_local_pull refuse")
	}
}

// TestOutlierCRILocalPullWarn is TestOutlierCRILocalPullRefuse with cri_local_pull
// = 'warn': CRI serves, the log has one error naming the setting, and the node's
// metrics show it.
func TestOutlierCRILocalPullWarn(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierCRIWarn, 1, 1, func(o *lab.Options) {
		o.CRIImagesExtra = "discard_unpacked_layers = true"
		o.HoplessExtra = "cri_local_pull = 'warn'"
	})
	if _, err := l.Crictl(ctxFor(t, olWait), 1, "version"); err != nil {
		t.Fatalf("CRI does not serve with cri_local_pull warn: %v", err)
	}
	var errs []string
	for line := range strings.SplitSeq(olNodeLog(t, l, 1), "\n") {
		if strings.Contains(line, "level=error") && strings.Contains(line, "discard_unpacked_layers") {
			errs = append(errs, line)
		}
	}
	if len(errs) != 1 {
		t.Errorf("node-1's log has %d errors naming discard_unpacked_layers, want 1: %q", len(errs), errs)
	}
	s := olMetrics(t, l, 1)
	if n := s.sum("hopless_plugin_cri_local_pull", map[string]string{"setting": "discard_unpacked_layers"}); n != 1 {
		t.Errorf(`hopless_plugin_cri_local_pull{setting="discard_unpacked_layers"} is %v, want 1:%s`, n, "\n"+plHopless(s.text))
	}
}

func olTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestOutlierRotateCA rotates the lab CA under a running node: the masters restart
// with certificates from a new CA and the CA file the node's tls.ca names becomes
// the new CA and the old one. The node reads the file again, without a restart of
// containerd, and pulls from the masters.
func TestOutlierRotateCA(t *testing.T) {
	t.Parallel()
	l := olLab(t, slotOutlierRotateCA, 3, 1)
	repo := lab.UpstreamPath + "/ol-rotate"
	v1 := seed(t, l, repo, "v1", 2, 256<<10)
	v2 := seed(t, l, repo, "v2", 2, 256<<10)
	olMustPull(t, l, 1, l.PullRef(repo, "v1"), v1.Digest)
	pid := 0
	for _, s := range l.Status() {
		if s.Name == "node-1" {
			pid = s.PID
		}
	}
	reloads := olMetrics(t, l, 1).sum("hopless_plugin_config_reloads_total", map[string]string{"result": "ok"})
	if err := l.RotateCA(ctxFor(t, olWait)); err != nil {
		t.Fatal(err)
	}
	since := olLogMarks(t, l)
	var last error
	why := clPoll(olWait, func() string {
		if last = olPull(l, 1, l.PullRef(repo, "v2")); last != nil {
			return last.Error()
		}
		return ""
	})
	if why != "" {
		t.Fatalf("no pull of v2 succeeded within %s of the CA rotation; the last failed: %v\nnode metrics:\n%s", olWait, last, plHopless(plNodeMetrics(t, l, 1)))
	}
	plHasImage(t, l, 1, v2.Digest)
	for _, s := range l.Status() {
		if s.Name == "node-1" && (s.PID != pid || !s.Alive) {
			t.Errorf("node-1's containerd was restarted (pid %d, was %d)", s.PID, pid)
		}
	}
	// Fallback is off: the masters served v2's layers.
	for _, d := range v2.Layers {
		ok := false
		for _, m := range l.Masters {
			for _, r := range olLayerGETs(t, l, since, m.Name, d) {
				ok = ok || r.Status == http.StatusOK || r.Status == http.StatusPartialContent
			}
		}
		if !ok {
			t.Errorf("no master logged a successful GET of v2's layer %s after the rotation", d)
		}
	}
	if n := olMetrics(t, l, 1).sum("hopless_plugin_config_reloads_total", map[string]string{"result": "ok"}); n <= reloads {
		t.Errorf("hopless_plugin_config_reloads_total{result=\"ok\"} is %v, %v before the rotation: the node did not count reading the CA again", n, reloads)
	}
}
