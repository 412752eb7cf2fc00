package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

const slotClusterTokenAuth = 56

// TestClusterTokenAuth puts master-1 behind bearer tokens from a real token server
// (lab.TokenIssuer, ES256 JWTs that registryd checks against the issuer's
// certificate): a token from the realm pulls, an in-process node pulls with the
// user's credentials through the whole challenge, and every token that is expired,
// not yet valid, for another audience or repository, or signed by a key registryd
// does not trust is refused without reaching the upstream. No secret reaches a log.
func TestClusterTokenAuth(t *testing.T) {
	t.Parallel()
	user, pass := "puller", clRandom(t, "token-pw-")
	creds := filepath.Join(t.TempDir(), "registry.creds")
	if err := lab.WriteCredentials(creds, user, pass); err != nil {
		t.Fatal(err)
	}
	l := upLab(t, slotClusterTokenAuth, 1, 1, inprocess(), func(o *lab.Options) { o.NodeCredentials = creds })
	repo := lab.UpstreamPath + "/token"
	img := seed(t, l, repo, "v1", 2, 256<<10)
	ti, err := l.StartTokenIssuer("token-issuer", user, pass, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := l.StartTokenIssuer("rogue-issuer", user, pass, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The rogue signs in the trusted issuer's name, with a key of its own.
	rogue.Issuer = ti.Issuer
	t.Cleanup(func() {
		for _, c := range []*lab.TokenIssuer{ti, rogue} {
			if err := c.Close(); err != nil {
				t.Errorf("closing a token issuer: %v", err)
			}
		}
	})
	err = l.ReconfigureMaster(ctxFor(t, time.Minute), "master-1", func(cfg string) (string, error) {
		return cfg + fmt.Sprintf("\n[auth.token]\nrealm = %q\nservice = %q\nissuer = %q\nrootcertbundle = %q\n",
			ti.Realm, ti.Service, ti.Issuer, ti.Bundle), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c := clHTTP(t, l)
	base := clMasterURL(l, 1) + "/v2/"
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

	r := clMust(t, c, http.MethodGet, base, nil, nil)
	challenge := r.Header.Get("WWW-Authenticate")
	if r.Status != http.StatusUnauthorized || !strings.HasPrefix(challenge, `Bearer realm="`+ti.Realm+`"`) || !strings.Contains(challenge, `service="`+ti.Service+`"`) {
		t.Fatalf("anonymous GET /v2/: want 401 with a Bearer challenge naming %s, got %d, WWW-Authenticate %q", ti.Realm, r.Status, challenge)
	}

	local := clLocalName(repo)
	q := url.Values{"service": {ti.Service}, "scope": {"repository:" + local + ":pull"}}
	tr := clMust(t, c, http.MethodGet, ti.Realm+"?"+q.Encode(),
		map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}, nil)
	var answer struct {
		Token string `json:"token"`
	}
	if tr.Status != http.StatusOK || json.Unmarshal(tr.Body, &answer) != nil || answer.Token == "" {
		t.Fatalf("token request: status %d: %s", tr.Status, tr.Body)
	}
	clPullHTTP(t, c, l, 1, repo, "v1", img, bearer(answer.Token))

	now := time.Now()
	valid := lab.TokenClaims{Subject: user, Audience: ti.Service, Repos: []string{local}, NotBefore: now.Add(-time.Minute), Expires: now.Add(5 * time.Minute)}
	sign := func(by *lab.TokenIssuer, change func(*lab.TokenClaims)) string {
		cl := valid
		change(&cl)
		tok, err := by.Sign(cl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	var secrets []string
	manifest := clMasterURL(l, 1) + "/v2/" + local + "/manifests/v1"
	before := clUpstreamCount(t, l)
	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		// registryd allows 60 s of clock skew either way.
		{"expired", bearer(sign(ti, func(c *lab.TokenClaims) { c.NotBefore, c.Expires = now.Add(-10*time.Minute), now.Add(-2*time.Minute) }))},
		{"not yet valid", bearer(sign(ti, func(c *lab.TokenClaims) { c.NotBefore = now.Add(5 * time.Minute) }))},
		{"another audience", bearer(sign(ti, func(c *lab.TokenClaims) { c.Audience = "another-registry" }))},
		{"another repository", bearer(sign(ti, func(c *lab.TokenClaims) { c.Repos = []string{lab.LocalPrefix + "/other"} }))},
		{"no access", bearer(sign(ti, func(c *lab.TokenClaims) { c.Repos = nil }))},
		{"an untrusted key", bearer(sign(rogue, func(*lab.TokenClaims) {}))},
		{"not a JWT", bearer("not.a.jwt")},
		{"Basic credentials", map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}},
	} {
		if v, ok := tc.hdr["Authorization"]; ok {
			secrets = append(secrets, strings.Fields(v)[1])
		}
		for _, u := range []string{manifest, clBlobURL(l, 1, repo, img.Layers[0])} {
			if r := clMust(t, c, http.MethodGet, u, tc.hdr, nil); r.Status != http.StatusUnauthorized {
				t.Errorf("GET %s with %s: want 401, got %d: %.200s", u, tc.name, r.Status, r.Body)
			}
		}
	}
	if n := clUpstreamCount(t, l); n != before {
		t.Errorf("refused requests reached the upstream (%d -> %d requests)", before, n)
	}

	// containerd meets the challenge, and the node's credentials file answers it at
	// the realm; a fresh image each time, so that the node has none of it.
	img2 := seed(t, l, repo, "v2", 2, 256<<10)
	issued := ti.Issued.Load()
	if err := olPull(l, 1, l.PullRef(repo, "v2")); err != nil {
		t.Fatalf("pull with the node's credentials: %v", err)
	}
	plHasImage(t, l, 1, img2.Digest)
	if ti.Issued.Load() == issued {
		t.Error("the node pulled without asking the realm for a token")
	}
	// A wrong password, read again without a restart: the realm refuses the node,
	// and so does the master.
	reloads := olMetrics(t, l, 1).sum("hopless_plugin_config_reloads_total", map[string]string{"result": "ok"})
	if err := lab.WriteCredentials(creds, user, pass+"-wrong"); err != nil {
		t.Fatal(err)
	}
	if why := clPoll(plWait, func() string {
		if n := olMetrics(t, l, 1).sum("hopless_plugin_config_reloads_total", map[string]string{"result": "ok"}); n <= reloads {
			return fmt.Sprintf("%v reloads, %v before", n, reloads)
		}
		return ""
	}); why != "" {
		t.Fatalf("the node did not read its credentials file again: %s", why)
	}
	img3 := seed(t, l, repo, "v3", 1, 64<<10)
	refused := ti.Refused.Load()
	if err := olPull(l, 1, l.PullRef(repo, "v3")); err == nil {
		t.Errorf("a pull with a wrong password succeeded (image %s)", img3.Digest)
	}
	if ti.Refused.Load() == refused {
		t.Error("the realm refused nobody, though the node sent a wrong password")
	}

	all := map[string]string{"password": pass, "realm's token": answer.Token,
		"Basic credentials": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
	for i, s := range secrets {
		all[fmt.Sprintf("refused credential %d", i)] = s
	}
	noSecrets(t, l, all)
	t.Logf("realm: %d tokens issued, %d requests refused", ti.Issued.Load(), ti.Refused.Load())
}
