package upstream

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/hopless/hopless/conf"
)

// A real registry's list, over pages of two: every tag once, in its order.
func TestTagsFollowsPages(t *testing.T) {
	srv := newRegistry(t, nil)
	img := pushImage(t, srv, "team/app", "v1", authn.Anonymous)
	want := []string{"v1"}
	for _, tag := range []string{"v2", "v3", "latest", "a-1"} {
		ref, err := name.NewTag(hostOf(srv) + "/team/app:" + tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithTransport(srv.Client().Transport)); err != nil {
			t.Fatal(err)
		}
		want = append(want, tag)
	}
	slices.Sort(want)
	c := newTestClient(t, srv, conf.Upstream{})
	c.tagPage = 2
	got, err := c.Tags(testContext(t), "team/app", 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Tags = %v, want %v", got, want)
	}
	if n := counter(t, c.metrics, "hopless_registryd_upstream_requests_total", map[string]string{"kind": kindTagList, "code": "200"}); n != 3 {
		t.Errorf("%g tag-list requests for 5 tags in pages of 2, want 3", n)
	}
	if _, err := c.Tags(testContext(t), "team/none", 100); !errdefs.IsNotFound(err) {
		t.Errorf("Tags of a repository the upstream does not have = %v, want not found", err)
	}
	if _, err := c.Tags(testContext(t), "team/app", 4); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "more than 4 tags") {
		t.Errorf("Tags over the limit = %v, want an invalid argument naming the limit", err)
	}
}

// Answers no registry should give: each is refused, naming the upstream, and a Link
// to another host is not followed there.
func TestTagsBadAnswers(t *testing.T) {
	cases := []struct {
		name string
		// page answers the request for the page after last ("" for the first).
		page func(w http.ResponseWriter, last string)
		want string // in the error; "" for no error
		tags []string
	}{
		{name: "link to another host", page: func(w http.ResponseWriter, last string) {
			if last == "" {
				w.Header().Set("Link", `<https://elsewhere.invalid/v2/other/tags/list?n=2&last=b>; rel="next"`)
				fmt.Fprint(w, `{"name":"team/app","tags":["a","b"]}`)
				return
			}
			fmt.Fprint(w, `{"name":"team/app","tags":["c"]}`)
		}, tags: []string{"a", "b", "c"}},
		{name: "a next page that stays put", page: func(w http.ResponseWriter, last string) {
			w.Header().Set("Link", `</v2/team/app/tags/list?n=2&last=b>; rel="next"`)
			fmt.Fprint(w, `{"name":"team/app","tags":["a","b"]}`)
		}, want: `does not move past "b"`},
		{name: "an invalid tag", page: func(w http.ResponseWriter, _ string) {
			fmt.Fprint(w, `{"name":"team/app","tags":["ok","bad\r\ntag"]}`)
		}, want: "invalid tag"},
		{name: "not JSON", page: func(w http.ResponseWriter, _ string) {
			fmt.Fprint(w, `<html>`)
		}, want: "not JSON"},
		{name: "a page too large", page: func(w http.ResponseWriter, _ string) {
			fmt.Fprintf(w, `{"tags":["%s"]}`, strings.Repeat("a", maxTagPage))
		}, want: "more than"},
		{name: "no tags", page: func(w http.ResponseWriter, _ string) {
			fmt.Fprint(w, `{"name":"team/app","tags":null}`)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []string
			srv, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				mu.Lock()
				seen = append(seen, r.Host+r.URL.Path)
				mu.Unlock()
				if r.URL.Path != "/v2/team/app/tags/list" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				tc.page(w, r.URL.Query().Get("last"))
			}))
			c := newTestClient(t, srv, conf.Upstream{})
			got, err := c.Tags(testContext(t), "team/app", 100)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Tags: %v", err)
			case tc.want != "" && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), hostOf(srv))):
				t.Fatalf("Tags = %v, want an invalid argument with %q naming the upstream", err, tc.want)
			}
			if tc.want == "" && !slices.Equal(got, tc.tags) {
				t.Errorf("Tags = %v, want %v", got, tc.tags)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, s := range seen {
				if s != hostOf(srv)+"/v2/team/app/tags/list" {
					t.Errorf("a request went to %s", s)
				}
			}
		})
	}
}
