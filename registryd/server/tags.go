package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/hopless/hopless/registryd/cache"
)

// serveTags answers GET and HEAD /v2/<name>/tags/list with the upstream's list for
// the repository (cache.Tags), paginated as the distribution spec says: at most n
// tags (all without n), those after last in lexical order, and a Link header to the
// next page when more are left. The Link keeps the request's ns parameter.
func (s *Server) serveTags(ctx context.Context, w http.ResponseWriter, r *http.Request, req cache.Request) {
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			writeRegistryError(w, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", fmt.Sprintf("invalid number of results requested: %q", v))
			return
		}
	}
	tags, err := s.cache.Tags(ctx, req)
	if err != nil {
		_ = errcode.ServeJSON(w, s.cache.TagsError(ctx, req, err))
		return
	}
	if last := q.Get("last"); last != "" {
		tags = tags[sort.SearchStrings(tags, last):]
		if len(tags) > 0 && tags[0] == last {
			tags = tags[1:]
		}
	}
	if n >= 0 && len(tags) > n {
		tags = tags[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
			if ns := q.Get("ns"); ns != "" {
				next.Set("ns", ns)
			}
			w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, req.Name, next.Encode()))
		}
	}
	if tags == nil {
		tags = []string{}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{req.Name, tags})
	if err != nil {
		writeRegistryError(w, http.StatusInternalServerError, "UNKNOWN", "encoding the tag list failed")
		return
	}
	writeJSON(w, r, "application/json", append(body, '\n'))
}

// writeJSON answers r with 200 and body of contentType, the body left out for HEAD.
func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
