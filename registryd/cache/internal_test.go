package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/registryd/fill"
	"github.com/hopless/hopless/registryd/route"
	"github.com/hopless/hopless/registryd/store"
	"github.com/hopless/hopless/registryd/upstream"
	"github.com/hopless/hopless/test/registrytest"
)

func TestParseRange(t *testing.T) {
	t.Parallel()
	const size = 1000
	tests := []struct {
		header               string
		start, end           int64
		partial, satisfiable bool
	}{
		{"", 0, size, false, true},
		{"bytes=0-99", 0, 100, true, true},
		{"bytes=100-", 100, size, true, true},
		{"bytes=990-5000", 990, size, true, true},
		{"bytes=-10", 990, size, true, true},
		{"bytes=-5000", 0, size, true, true},
		{"bytes=999-999", 999, size, true, true},
		{"bytes=1000-", 0, 0, false, false},
		{"bytes=5-4", 0, 0, false, false},
		{"bytes=-0", 0, 0, false, false},
		{"bytes=x-1", 0, 0, false, false},
		{"bytes=-1-2", 0, 0, false, false},
		// Served whole, as RFC 9110 allows.
		{"bytes=0-1,5-6", 0, size, false, true},
		{"items=0-1", 0, size, false, true},
		{"bytes=5", 0, size, false, true},
		// The last position at the int64 limit is the end of the blob, not a wrap.
		{"bytes=0-9223372036854775807", 0, size, true, true},
		{"bytes=10-9223372036854775807", 10, size, true, true},
		{"bytes=0-9223372036854775808", 0, 0, false, false},
		{"bytes=-9223372036854775807", 0, size, true, true},
	}
	for _, tt := range tests {
		start, end, partial, ok := parseRange(tt.header, size)
		if ok != tt.satisfiable || (ok && (start != tt.start || end != tt.end || partial != tt.partial)) {
			t.Errorf("parseRange(%q) = %d, %d, %v, %v; want %d, %d, %v, %v",
				tt.header, start, end, partial, ok, tt.start, tt.end, tt.partial, tt.satisfiable)
		}
	}
	// An empty blob is served whole: no range of it, "bytes 0--1/0", is sent.
	for _, h := range []string{"bytes=-10", "bytes=0-", "bytes=0-0"} {
		if start, end, partial, ok := parseRange(h, 0); !ok || partial || start != 0 || end != 0 {
			t.Errorf("parseRange(%q, 0) = %d, %d, %v, %v; want 0, 0, whole", h, start, end, partial, ok)
		}
	}
}

func TestFlight(t *testing.T) {
	t.Parallel()
	var f flight[int]
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func() (int, error) {
		calls.Add(1)
		<-release
		return 42, nil
	}

	// A caller that gives up gets its context's error; the others still get the value.
	gone, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := f.do(gone, "k", fn); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller: %v, want context.Canceled", err)
	}
	// Joining is synchronous (start), so every caller below is in the flight
	// before fn is released; waiting is what runs concurrently.
	var wg sync.WaitGroup
	first, err := f.start("k", fn)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		c, err := f.start("k", fn)
		if err != nil || c != first {
			t.Fatalf("caller %d: start = %p, %v; want the running call %p", i, c, err, first)
		}
		wg.Go(func() {
			if v, err := c.wait(t.Context()); v != 42 || err != nil {
				t.Errorf("wait = %d, %v; want 42", v, err)
			}
		})
	}
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("fn ran %d times for concurrent callers, want 1", n)
	}
	if v, _ := f.do(t.Context(), "k", fn); v != 42 || calls.Load() != 2 {
		t.Errorf("a call after the first finished did not run fn again")
	}
	f.close()
	if _, err := f.do(t.Context(), "k", fn); !errdefs.IsUnavailable(err) || calls.Load() != 2 {
		t.Errorf("do after close = %v, want unavailable without running fn", err)
	}
}

// TestFillAfterCommit starts a second fill of a blob just after the first one
// committed, as a request that missed the store a moment earlier does: it must copy
// the stored blob, not fetch it from the upstream again.
func TestFillAfterCommit(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 256<<10, 1)
	up.Push(t, registrytest.UpstreamPath+"/install", "v1", img)
	d := digest.Digest(registrytest.Blobs(t, img)[1].String())
	env := registrytest.NewEnv(t, "", up)

	st, err := store.New(t.Context(), env.Config.Storage)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	filler := fill.New(st)
	t.Cleanup(filler.Close)
	u, err := upstream.New(env.Config.Upstream[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	c := New(ctx, Config{Store: st, Filler: filler, Upstreams: []*upstream.Client{u}, Router: route.New(env.Config.Upstream),
		TagTTL: time.Minute, MaxManifest: 4 << 20})
	req := Request{Route: route.Route{Upstream: 0, Repo: registrytest.UpstreamPath + "/install"}}

	for i := range 2 {
		fl, _ := c.joinFill(req, d)
		select {
		case <-fl.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("fill %d did not finish", i+1)
		}
		if err := fl.Err(); err != nil {
			t.Fatalf("fill %d: %v", i+1, err)
		}
	}
	if n := up.Count(registrytest.BlobGET(registrytest.Blobs(t, img)[1])); n != 1 {
		t.Errorf("two fills in a row made %d upstream GETs, want 1", n)
	}
}
