package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/hopless/hopless/registryd/cache"
	"github.com/hopless/hopless/test/registrytest"
)

func tagLists(r registrytest.Request) bool { return strings.HasSuffix(r.Path, "/tags/list") }

// listTags GETs target and returns the answer's tags and Link header.
func listTags(t *testing.T, s *Server, target string) ([]string, *httptest.ResponseRecorder) {
	t.Helper()
	w := serve(s, http.MethodGet, target)
	if w.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", target, w.Code, w.Body)
	}
	var body struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("GET %s: %v: %s", target, err, w.Body)
	}
	if body.Name != "system/deckhouse/app" {
		t.Errorf("GET %s: name %q, want the name as asked", target, body.Name)
	}
	return body.Tags, w
}

// The upstream's tags, sorted, paginated as the spec says, from one upstream list
// within the tag TTL.
func TestTagList(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 512, 1)
	for _, tag := range []string{"v3", "v1", "latest", "v2", "a"} {
		up.Push(t, registrytest.UpstreamPath+"/app", tag, img)
	}
	env := registrytest.NewEnv(t, "", up)
	env.Config.Cache.TagTTL.Duration = time.Hour
	s, _ := newServer(t, env.Config)
	base := "/v2/system/deckhouse/app/tags/list"

	tags, _ := listTags(t, s, base)
	if want := []string{"a", "latest", "v1", "v2", "v3"}; !slices.Equal(tags, want) {
		t.Errorf("tags %v, want %v", tags, want)
	}
	var pages [][]string
	target := base + "?n=2"
	for target != "" && len(pages) < 5 {
		tags, w := listTags(t, s, target)
		pages = append(pages, tags)
		target = ""
		if link := w.Header().Get("Link"); link != "" {
			u, rel, _ := strings.Cut(link, ">; ")
			if rel != `rel="next"` || !strings.HasPrefix(u, "<"+base+"?") {
				t.Fatalf("Link %q", link)
			}
			target = strings.TrimPrefix(u, "<")
		}
	}
	if want := [][]string{{"a", "latest"}, {"v1", "v2"}, {"v3"}}; !slices.EqualFunc(pages, want, slices.Equal[[]string]) {
		t.Errorf("pages of 2: %v, want %v", pages, want)
	}
	if tags, _ := listTags(t, s, base+"?last=v1"); !slices.Equal(tags, []string{"v2", "v3"}) {
		t.Errorf("after v1: %v", tags)
	}
	if tags, w := listTags(t, s, base+"?n=0"); len(tags) != 0 || w.Header().Get("Link") != "" {
		t.Errorf("n=0: %v, Link %q; want none", tags, w.Header().Get("Link"))
	}
	get := serve(s, http.MethodGet, base)
	head := serve(s, http.MethodHead, base)
	if head.Code != http.StatusOK || head.Body.Len() != 0 || head.Header().Get("Content-Length") != strconv.Itoa(get.Body.Len()) {
		t.Errorf("HEAD: %d, %d bytes, Content-Length %q; want 200, none, %d", head.Code, head.Body.Len(), head.Header().Get("Content-Length"), get.Body.Len())
	}
	if n := up.Count(tagLists); n != 1 {
		t.Errorf("%d upstream tag lists for requests within the tag TTL, want 1", n)
	}

	for _, tc := range []struct {
		target string
		status int
		code   string
	}{
		{base + "?n=x", http.StatusBadRequest, "PAGINATION_NUMBER_INVALID"},
		{base + "?n=-1", http.StatusBadRequest, "PAGINATION_NUMBER_INVALID"},
		{"/v2/system/deckhouse/none/tags/list", http.StatusNotFound, "NAME_UNKNOWN"},
		{"/v2/elsewhere/app/tags/list", http.StatusNotFound, "NAME_UNKNOWN"},
	} {
		w := serve(s, http.MethodGet, tc.target)
		if w.Code != tc.status || registrytest.Errors(t, w.Body.Bytes())[0].Code != tc.code {
			t.Errorf("GET %s: %d %s; want %d %s", tc.target, w.Code, w.Body, tc.status, tc.code)
		}
	}
}

// Past the tag TTL an upstream that fails gets the last known list served, marked
// stale; a repository never listed gets the upstream's failure.
func TestTagListStaleIfError(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	up.Push(t, registrytest.UpstreamPath+"/app", "v1", registrytest.Image(t, 512, 1))
	env := registrytest.NewEnv(t, "", up)
	env.Config.Cache.TagTTL.Duration = time.Nanosecond
	s, _ := newServer(t, env.Config)
	base := "/v2/system/deckhouse/app/tags/list"
	if tags, w := listTags(t, s, base); !slices.Equal(tags, []string{"v1"}) || w.Header().Get(cache.CacheHeader) != "" {
		t.Fatalf("first list: %v, %s %q", tags, cache.CacheHeader, w.Header().Get(cache.CacheHeader))
	}
	up.Fail(http.StatusServiceUnavailable)
	tags, w := listTags(t, s, base)
	if !slices.Equal(tags, []string{"v1"}) || w.Header().Get(cache.CacheHeader) != "stale" {
		t.Errorf("with the upstream failing: %v, %s %q; want the last list, stale", tags, cache.CacheHeader, w.Header().Get(cache.CacheHeader))
	}
	if n := up.Count(tagLists); n != 2 {
		t.Errorf("%d upstream tag lists, want 2 (the first, and the failed revalidation)", n)
	}
	w = serve(s, http.MethodGet, "/v2/system/deckhouse/other/tags/list")
	if w.Code != http.StatusBadGateway || w.Header().Get("Hopless-Upstream-Error") == "" {
		t.Errorf("a list never made, with the upstream failing: %d %q %s; want 502 naming the upstream's failure", w.Code, w.Header().Get("Hopless-Upstream-Error"), w.Body)
	}
}

// With client auth, the tag list and referrers (served beside distribution) ask for
// credentials as distribution's routes do, and answer with them.
func TestTagListAndReferrersNeedAuth(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	img := registrytest.Image(t, 512, 1)
	up.Push(t, registrytest.UpstreamPath+"/app", "v1", img)
	env := registrytest.NewEnv(t, "", up)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	env.Config.Auth.Htpasswd = filepath.Join(env.Dir, "htpasswd")
	if err := os.WriteFile(env.Config.Auth.Htpasswd, []byte("reader:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := newServer(t, env.Config)
	for _, target := range []string{
		"/v2/system/deckhouse/app/tags/list",
		"/v2/system/deckhouse/app/referrers/" + registrytest.Digest(t, img).String(),
		"/v2/system/deckhouse/app/manifests/v1",
	} {
		w := serve(s, http.MethodGet, target)
		if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" || registrytest.Errors(t, w.Body.Bytes())[0].Code != "UNAUTHORIZED" {
			t.Errorf("GET %s without credentials: %d %q %s; want 401 UNAUTHORIZED with a challenge", target, w.Code, w.Header().Get("WWW-Authenticate"), w.Body)
		}
		for _, pass := range []string{"wrong", "s3cret"} {
			r := httptest.NewRequest(http.MethodGet, target, nil)
			r.SetBasicAuth("reader", pass)
			w = httptest.NewRecorder()
			s.handler.ServeHTTP(w, r)
			if want := map[string]int{"wrong": http.StatusUnauthorized, "s3cret": http.StatusOK}[pass]; w.Code != want {
				t.Errorf("GET %s with password %q: %d %s; want %d", target, pass, w.Code, w.Body, want)
			}
		}
	}
	if n := up.Count(tagLists); n != 1 {
		t.Errorf("%d upstream tag lists, want 1 (for the authorized request only)", n)
	}
}
