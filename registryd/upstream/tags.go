package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// defaultTagPage is the number of tags asked for per page of a tag list, and
// maxTagPage the most bytes read of one page: a page of 1000 tags of the longest
// kind is 130 KB.
const (
	defaultTagPage = 1000
	maxTagPage     = 4 << 20
)

var tagGrammar = regexp.MustCompile(`^[\w][\w.-]{0,127}$`)

// Tags lists repo's tags, following the upstream's pagination (each page's Link
// header) to the end. Only the next page's `last` and `n` are taken from a Link: the
// request goes to this upstream's own path for repo whatever host or path the Link
// names. A list longer than limit, a tag outside the distribution grammar, or
// pagination that does not move forward is an ErrInvalidArgument, naming the
// upstream. The tags are in the upstream's order.
func (c *Client) Tags(ctx context.Context, repo string, limit int) ([]string, error) {
	what := "listing the tags of " + repo
	if err := checkRepo(repo); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("%s: limit %d: %w", what, limit, errdefs.ErrInvalidArgument)
	}
	var all []string
	q := url.Values{"n": {strconv.Itoa(c.tagPage)}}
	for {
		page, next, err := c.listPage(ctx, repo, q, what)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(all) > limit {
			return nil, fmt.Errorf("%s: upstream %s lists more than %d tags, the most registryd keeps: %w", what, c.host, limit, errdefs.ErrInvalidArgument)
		}
		if next == nil {
			return all, nil
		}
		last := next.Get("last")
		if last == "" || last == q.Get("last") || len(page) == 0 {
			return nil, fmt.Errorf("%s: upstream %s sent a next page that does not move past %q: %w", what, c.host, q.Get("last"), errdefs.ErrInvalidArgument)
		}
		q = url.Values{"n": {strconv.Itoa(c.tagPage)}, "last": {last}}
	}
}

// listPage fetches one page of repo's tag list with query q. It returns the page's
// tags and the query of the next page, nil when this one is the last.
func (c *Client) listPage(ctx context.Context, repo string, q url.Values, what string) ([]string, url.Values, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := c.do(rctx, call{method: http.MethodGet, kind: kindTagList, repo: repo, path: "tags/list", query: q,
		header: http.Header{"Accept": {"application/json"}}, what: what})
	if err != nil {
		return nil, nil, err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return nil, nil, c.statusError(what, resp)
	}
	body, err := io.ReadAll(io.LimitReader(c.newBody(ctx, cancel, resp.Body, what), maxTagPage+1))
	if err != nil {
		return nil, nil, err
	}
	if len(body) > maxTagPage {
		return nil, nil, fmt.Errorf("%s: upstream %s sent a page of more than %d bytes: %w", what, c.host, maxTagPage, errdefs.ErrInvalidArgument)
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, nil, fmt.Errorf("%s: upstream %s sent a tag list that is not JSON: %v: %w", what, c.host, err, errdefs.ErrInvalidArgument)
	}
	for _, t := range list.Tags {
		if !tagGrammar.MatchString(t) {
			return nil, nil, fmt.Errorf("%s: upstream %s lists an invalid tag %q: %w", what, c.host, t, errdefs.ErrInvalidArgument)
		}
	}
	next, err := nextPage(resp.Header.Get("Link"))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: upstream %s: %w", what, c.host, err)
	}
	return list.Tags, next, nil
}

// nextPage returns the query of a Link header's rel="next" target, or nil when the
// header has none.
func nextPage(link string) (url.Values, error) {
	for part := range strings.SplitSeq(link, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
		if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			continue
		}
		isNext := false
		for p := range strings.SplitSeq(params, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(k, "rel") && strings.Trim(v, `"`) == "next" {
				isNext = true
			}
		}
		if !isNext {
			continue
		}
		u, err := url.Parse(strings.TrimSuffix(strings.TrimPrefix(target, "<"), ">"))
		if err != nil {
			return nil, fmt.Errorf("bad Link header %q: %v: %w", link, err, errdefs.ErrInvalidArgument)
		}
		return u.Query(), nil
	}
	return nil, nil
}
