package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/hopless/hopless/internal/nodetoken"
	"github.com/hopless/hopless/registryd/api"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/test/registrytest"
)

func TestPinsAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	body := fmt.Sprintf(`{"source":"node-1","images":[{"image":"x","digest":%q}]}`, manifestDigest(t, f.img))
	node1 := nodeTokenOf(t, "node-1")
	otherKey, err := nodetoken.Derive([]byte("another-key-0123456789"), "node-1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, auth string
		want       int
		code       string
	}{
		{"no token", "", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"wrong token", "Bearer wrong", http.StatusUnauthorized, "UNAUTHORIZED"},
		{"token prefix", "Bearer " + node1[:len(node1)-3], http.StatusUnauthorized, "UNAUTHORIZED"},
		{"basic auth", "Basic " + node1, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"API token", "Bearer " + apiToken, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"peer token", "Bearer " + peerToken, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"node-1 under another key", "Bearer " + otherKey, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"another node's token", "Bearer " + nodeTokenOf(t, "node-2"), http.StatusForbidden, "DENIED"},
		{"node-1's token", "Bearer " + node1, http.StatusOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := f.do(t, http.MethodPut, "/hopless/v1/pins", tt.auth, body)
			if resp.StatusCode != tt.want {
				t.Fatalf("%d %s, want %d", resp.StatusCode, b, tt.want)
			}
			if tt.code != "" && registrytest.Errors(t, b)[0].Code != tt.code {
				t.Errorf("error %s, want %s", b, tt.code)
			}
			if tt.want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without a challenge: %v", resp.Header)
			}
			if bytes.Contains(b, []byte(node1)) || bytes.Contains(b, []byte(apiToken)) {
				t.Errorf("the answer quotes a token: %s", b)
			}
		})
	}
	if got := f.store.Leases(); len(got) != 1 || got[0].Source != "node-1" {
		t.Errorf("leases %+v, want node-1's only", got)
	}
}

func TestPinsValidation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	good := string(manifestDigest(t, f.img))
	auth := "Bearer " + nodeTokenOf(t, "node-1")
	tests := []struct {
		name, body string
		status     int
		want       string
	}{
		{"bad digest", `{"source":"node-1","images":[{"image":"a","digest":"` + good + `"},{"image":"b","digest":"sha256:bad"}]}`, http.StatusBadRequest, `images[1].digest \"sha256:bad\"`},
		{"unknown field", `{"source":"node-1","images":[],"extra":1}`, http.StatusBadRequest, `unknown field \"extra\"`},
		{"unknown image field", `{"source":"node-1","images":[{"image":"a","digest":"` + good + `","size":1}]}`, http.StatusBadRequest, `unknown field \"size\"`},
		{"not JSON", `source=node-1`, http.StatusBadRequest, `bad pins body`},
		{"trailing data", `{"source":"node-1","images":[]}{}`, http.StatusBadRequest, `trailing data`},
		{"wrong type", `{"source":"node-1","images":{}}`, http.StatusBadRequest, `bad pins body`},
		{"another source", `{"source":"../etc","images":[]}`, http.StatusForbidden, `the token of node \"node-1\" cannot report pins of \"../etc\"`},
		{"no source", `{"images":[]}`, http.StatusForbidden, `cannot report pins of \"\"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := f.do(t, http.MethodPut, "/hopless/v1/pins", auth, tt.body)
			if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.want) {
				t.Errorf("%d %s, want %d containing %s", resp.StatusCode, b, tt.status, tt.want)
			}
		})
	}
	resp, b := f.do(t, http.MethodPut, "/hopless/v1/pins", auth, `{"source":"node-1","images":[`+strings.Repeat(`{"image":"a","digest":"`+good+`"},`, 20000)+`]}`)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a body over 1 MiB: %d %.200s, want 400", resp.StatusCode, b)
	}
	if got := f.store.Leases(); len(got) != 0 {
		t.Errorf("leases %+v after bad reports, want none", got)
	}
}

func pinsOf(d digest.Digest) api.Pins {
	p := api.Pins{Source: "node-1"}
	p.Images = append(p.Images, struct {
		Image  string `json:"image"`
		Digest string `json:"digest"`
	}{Image: "system/deckhouse/install:v1", Digest: string(d)})
	return p
}

// TestPinsKeepImagesOnEvict caches two images, pins one through the API and evicts
// with a bound far below their size: only the pinned one stays, until its lease
// lapses.
func TestPinsKeepImagesOnEvict(t *testing.T) {
	t.Parallel()
	// The API's clock is an hour ahead: the lease's expiry is the API's, not the
	// store's.
	ahead := time.Now().Add(time.Hour)
	f := newFixtureWith(t, fixtureOptions{token: apiToken, nodeKey: []byte(nodeKey), now: func() time.Time { return ahead }})
	other := registrytest.Image(t, 100<<10, 2)
	f.up.Push(t, repo, "v2", other)
	if job := f.prefetch(t, "system/deckhouse/install:v1", "system/deckhouse/install:v2"); job.Images[0].Error != "" || job.Images[1].Error != "" {
		t.Fatalf("prefetch failed: %+v %+v", job.Images[0], job.Images[1])
	}
	answer, err := f.nodeClient(t, "node-1").PutPins(t.Context(), pinsOf(manifestDigest(t, f.img)))
	if err != nil {
		t.Fatal(err)
	}
	if want := ahead.Add(10 * time.Minute); !answer.Expires.Equal(want) || answer.Pinned != 1 {
		t.Errorf("answer %+v, want 1 pinned until %s", answer, want)
	}

	if _, err := f.store.Evict(t.Context(), 1, 0); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, _, err := f.store.GetManifest(ctx, manifestDigest(t, f.img)); err != nil {
		t.Errorf("the pinned manifest was evicted: %v", err)
	}
	for _, d := range registrytest.Blobs(t, f.img) {
		if _, err := f.store.StatBlob(ctx, digest.Digest(d.String())); err != nil {
			t.Errorf("blob %s of the pinned image was evicted: %v", d, err)
		}
	}
	if _, _, err := f.store.GetManifest(ctx, manifestDigest(t, other)); !errdefs.IsNotFound(err) {
		t.Errorf("the unpinned manifest: %v, want it evicted", err)
	}
	for _, d := range registrytest.Blobs(t, other) {
		if _, err := f.store.StatBlob(ctx, digest.Digest(d.String())); !errdefs.IsNotFound(err) {
			t.Errorf("blob %s of the unpinned image: %v, want it evicted", d, err)
		}
	}
	if got := f.store.Leases(); len(got) != 1 || !got[0].Expires.Equal(answer.Expires) {
		t.Errorf("leases %+v, want node-1's until %s", got, answer.Expires)
	}
}

// TestPeerPins sends leases to the peer endpoint as another master would.
func TestPeerPins(t *testing.T) {
	t.Parallel()
	f := newFixture(t, apiToken)
	d := manifestDigest(t, f.img)
	now := time.Now()
	lease := func(src string, reported, expires time.Time) store.Lease {
		return store.Lease{Source: src, Manifests: []digest.Digest{d}, Reported: reported, Expires: expires}
	}
	body := func(ls ...store.Lease) string {
		b, err := json.Marshal(api.PeerPins{Leases: ls})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	peer := "Bearer " + peerToken
	for _, tc := range []struct {
		name, auth, body string
		status           int
		want             string
	}{
		{"API token", "Bearer " + apiToken, body(lease("node-1", now, now.Add(time.Minute))), http.StatusUnauthorized, "peer token"},
		{"node token", "Bearer " + nodeTokenOf(t, "node-1"), body(lease("node-1", now, now.Add(time.Minute))), http.StatusUnauthorized, "peer token"},
		{"bad source", peer, body(lease("../x", now, now.Add(time.Minute))), http.StatusBadRequest, `bad source \"../x\"`},
		{"bad digest", peer, `{"leases":[{"source":"node-1","manifests":["sha256:bad"],"reported":"2030-01-01T00:00:00Z","expires":"2030-01-01T00:01:00Z"}]}`, http.StatusBadRequest, "leases[0]"},
		{"applied", peer, body(lease("node-1", now, now.Add(time.Minute)), lease("node-2", now, now.Add(100*time.Hour))), http.StatusOK, `"applied":2`},
		{"older report", peer, body(lease("node-1", now.Add(-time.Second), now.Add(time.Hour))), http.StatusOK, `"applied":0`},
	} {
		resp, b := f.do(t, http.MethodPut, "/hopless/v1/peer/pins", tc.auth, tc.body)
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %d %s, want %d containing %s", tc.name, resp.StatusCode, b, tc.status, tc.want)
		}
	}
	got := f.store.Leases()
	if len(got) != 2 || !got[0].Expires.Equal(now.Add(time.Minute)) {
		t.Fatalf("leases %+v, want node-1's until %s and node-2's", got, now.Add(time.Minute))
	}
	// A peer's lease reaches no further than pin_ttl and a minute of clock slack.
	if latest := time.Now().Add(11 * time.Minute); got[1].Expires.After(latest) {
		t.Errorf("node-2's lease expires %s, after %s", got[1].Expires, latest)
	}
}

// TestPinsForwarded reports pins to one master: its peer gets the lease, and does
// not send it on.
func TestPinsForwarded(t *testing.T) {
	t.Parallel()
	b := newFixture(t, apiToken)
	a := newFixtureWith(t, fixtureOptions{token: apiToken, nodeKey: []byte(nodeKey), peerURL: b.srv.URL, peerClient: b.srv.Client()})
	answer, err := a.nodeClient(t, "node-1").PutPins(t.Context(), pinsOf(manifestDigest(t, a.img)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	// The sender counts the batch once the peer has answered.
	for testutil.ToFloat64(a.metrics.PinForwards.WithLabelValues("ok")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the peer did not take the lease within 30s; it holds %+v", b.store.Leases())
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := b.store.Leases()
	if len(got) != 1 || got[0].Source != "node-1" || !got[0].Expires.Equal(answer.Expires) || got[0].Manifests[0] != manifestDigest(t, a.img) {
		t.Errorf("the peer's leases %+v, want node-1's as reported to the first master (until %s)", got, answer.Expires)
	}
	if n := testutil.ToFloat64(a.metrics.PinForwards.WithLabelValues("ok")); n != 1 {
		t.Errorf("pin forwards ok = %g, want 1", n)
	}
	if n := testutil.ToFloat64(b.metrics.PinForwards.WithLabelValues("ok")); n != 0 {
		t.Errorf("the peer sent pins on %g times, want 0", n)
	}
}
