package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Request kinds, the values of the metrics' kind label.
const (
	kindBlob      = "blob"
	kindManifest  = "manifest"
	kindTag       = "tag"
	kindTagList   = "tag-list"
	kindReferrers = "referrers"
	kindPing      = "ping"
	kindToken     = "token"
)

type kindKey struct{}

func withKind(ctx context.Context, kind string) context.Context {
	return context.WithValue(ctx, kindKey{}, kind)
}

func kindOf(ctx context.Context) string {
	if k, ok := ctx.Value(kindKey{}).(string); ok {
		return k
	}
	return "other"
}

// defaultTokenLifetime is the lifetime of a token whose response gives none, per the
// token specification.
const defaultTokenLifetime = 60 * time.Second

// flight is a value that one goroutine computes while others wait for it, each with
// its own context.
type flight[T any] struct {
	done    chan struct{}
	val     T
	err     error
	expires time.Time // zero: never
}

// stale reports whether the flight has finished and its value must not be used again.
// It is called with the Client's mutex held.
func (f *flight[T]) stale(now time.Time) bool {
	return finished(f.done) && (f.err != nil || (!f.expires.IsZero() && now.After(f.expires)))
}

func finished(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (f *flight[T]) wait(ctx context.Context) (T, error) {
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// scope is how requests for one repository are sent.
type scope struct {
	client *http.Client
	// bearer is set when the round tripper exchanges tokens; it then answers a 401
	// challenge itself by refreshing its token and retrying.
	bearer bool
}

// challenge returns the upstream's answer to GET /v2/: an empty scheme when it needs no
// authentication. A successful answer is kept for the Client's lifetime.
func (c *Client) challenge(ctx context.Context) (*transport.Challenge, error) {
	c.mu.Lock()
	f := c.ping
	if f == nil || f.stale(c.now()) {
		f = &flight[*transport.Challenge]{done: make(chan struct{})}
		c.ping = f
		go func() {
			defer close(f.done)
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.authTimeout)
			defer cancel()
			f.val, f.err = c.doPing(ctx)
		}()
	}
	c.mu.Unlock()
	return f.wait(ctx)
}

func (c *Client) doPing(ctx context.Context) (*transport.Challenge, error) {
	const what = "asking GET /v2/ for the authentication challenge"
	u := url.URL{Scheme: c.scheme, Host: c.host, Path: "/v2/"}
	req, err := http.NewRequestWithContext(withKind(ctx, kindPing), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	hc := &http.Client{Transport: c.rt, CheckRedirect: c.checkRedirect}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, what, err)
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
		return &transport.Challenge{Insecure: c.insecure}, nil
	case http.StatusUnauthorized:
		ch, err := c.parseChallenge(ctx, resp)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		c.log.Debug("upstream authentication", "scheme", ch.Scheme)
		return ch, nil
	case http.StatusForbidden:
		return nil, c.statusErrorAs(what, resp, errdefs.ErrPermissionDenied)
	default:
		// Whatever else it says (a 404 included), an upstream that cannot answer /v2/
		// cannot be used.
		return nil, c.statusErrorAs(what, resp, errdefs.ErrUnavailable)
	}
}

// parseChallenge reads the WWW-Authenticate challenge of a 401 with
// go-containerregistry's own parser: its transport.Ping "pings" a round tripper that
// replays the response.
func (c *Client) parseChallenge(ctx context.Context, resp *http.Response) (*transport.Challenge, error) {
	header := resp.Header.Clone()
	replay := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		return &http.Response{
			Status: resp.Status, StatusCode: resp.StatusCode, Header: header.Clone(),
			Body: http.NoBody, Request: req, ProtoMajor: 1, ProtoMinor: 1,
		}, nil
	})
	ch, err := transport.Ping(ctx, c.reg, replay)
	if err != nil {
		return nil, c.badAnswer(resp.StatusCode, fmt.Errorf("parsing the WWW-Authenticate challenge: %v: %w", err, errdefs.ErrUnavailable))
	}
	ch.Insecure = c.insecure
	return ch, nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// scope returns the round tripper for repo, building it on first use and after its
// token expires.
func (c *Client) scope(ctx context.Context, repo string) (*scope, error) {
	c.mu.Lock()
	f := c.scopes[repo]
	if f == nil || f.stale(c.now()) {
		f = c.startScope(ctx, repo, nil)
	}
	c.mu.Unlock()
	return f.wait(ctx)
}

// rescope replaces repo's round tripper with one built from ch, a challenge that a
// request for repo answered.
func (c *Client) rescope(ctx context.Context, repo string, ch *transport.Challenge) (*scope, error) {
	c.mu.Lock()
	f := c.startScope(ctx, repo, ch)
	c.mu.Unlock()
	return f.wait(ctx)
}

// startScope starts building repo's round tripper, detached from ctx so that callers
// waiting for the same repository are not failed by the one that started it. It is
// called with c.mu held.
func (c *Client) startScope(ctx context.Context, repo string, ch *transport.Challenge) *flight[*scope] {
	if _, ok := c.scopes[repo]; !ok && len(c.scopes) >= maxScopes {
		c.evictScopes()
	}
	f := &flight[*scope]{done: make(chan struct{})}
	c.scopes[repo] = f
	go func() {
		defer close(f.done)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.authTimeout)
		defer cancel()
		f.val, f.expires, f.err = c.buildScope(ctx, repo, ch)
	}()
	return f
}

// evictScopes makes room in c.scopes: first the stale entries, then, if none, one
// finished entry. Entries being built are kept. It is called with c.mu held.
func (c *Client) evictScopes() {
	now := c.now()
	for repo, f := range c.scopes {
		if f.stale(now) {
			delete(c.scopes, repo)
		}
	}
	if len(c.scopes) < maxScopes {
		return
	}
	for repo, f := range c.scopes {
		if finished(f.done) {
			delete(c.scopes, repo)
			return
		}
	}
}

func (c *Client) buildScope(ctx context.Context, repo string, ch *transport.Challenge) (*scope, time.Time, error) {
	if ch == nil {
		var err error
		if ch, err = c.challenge(ctx); err != nil {
			return nil, time.Time{}, err
		}
	}
	pr := *ch
	pr.Insecure = c.insecure
	newClient := func(rt http.RoundTripper) *http.Client {
		return &http.Client{Transport: rt, CheckRedirect: c.checkRedirect}
	}
	if !strings.EqualFold(pr.Scheme, "bearer") {
		// Anonymous or Basic: the credentials, if any, go with every request to the
		// upstream's host.
		rt, err := transport.FromToken(c.reg, c.auth, c.rt, &pr, &transport.Token{})
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("setting up %q authentication: %w", pr.Scheme, err)
		}
		return &scope{client: newClient(rt)}, time.Time{}, nil
	}

	realm := pr.Parameters["realm"]
	if u, err := url.Parse(realm); err == nil {
		r := u.Host + u.Path
		c.realm.Store(&r)
	}
	what := fmt.Sprintf("getting a pull token for %s from %s", repo, realm)
	tok, err := transport.Exchange(withKind(ctx, kindToken), c.reg, c.auth, c.rt, []string{"repository:" + repo + ":pull"}, &pr)
	if err != nil {
		// The challenge may be out of date: ask /v2/ again next time.
		c.mu.Lock()
		if c.ping != nil && finished(c.ping.done) {
			c.ping = nil
		}
		c.mu.Unlock()
		return nil, time.Time{}, c.authError(ctx, what, err)
	}
	if tok.Token == "" {
		tok.Token = tok.AccessToken
	}
	rt, err := transport.FromToken(c.reg, c.auth, c.rt, &pr, tok)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%s: %w", what, err)
	}
	life := time.Duration(tok.ExpiresIn) * time.Second
	if life <= 0 {
		life = defaultTokenLifetime
	}
	c.log.Debug("upstream token", "repo", repo, "lifetime", life)
	return &scope{client: newClient(rt), bearer: true}, c.now().Add(life - life/10), nil
}

// authError classifies a failed token exchange, or a request whose token refresh
// failed: the token service refusing the credentials is a permission error.
func (c *Client) authError(ctx context.Context, what string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("%s: %w (%w)", what, err, errdefs.ErrPermissionDenied)
	}
	return c.transportError(ctx, what, err)
}
