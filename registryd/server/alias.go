package server

import (
	"net/url"
	"strings"
)

// rewriteURL maps a client request for /v2/<localPrefix>/<rest> to
// /v2/<upstreamPath>/<rest> (or /v2/<rest> when upstreamPath is empty) and drops the
// ns query parameter that containerd adds for mirrors. Other paths keep their path.
// u is not modified.
func rewriteURL(u *url.URL, localPrefix, upstreamPath string) *url.URL {
	out := *u
	from := "/v2/" + localPrefix + "/"
	to := "/v2/"
	if upstreamPath != "" {
		to += upstreamPath + "/"
	}
	if rest, ok := strings.CutPrefix(u.Path, from); ok && rest != "" {
		out.Path = to + rest
		out.RawPath = ""
		if u.RawPath != "" {
			// Repository paths never need escaping, so the prefix reads the same in
			// RawPath unless the client escaped it needlessly; then RawPath is dropped
			// and EscapedPath derives the encoding from Path.
			if rawRest, ok := strings.CutPrefix(u.RawPath, from); ok {
				out.RawPath = to + rawRest
			}
		}
	}
	if q := u.Query(); q.Has("ns") {
		q.Del("ns")
		out.RawQuery = q.Encode()
	}
	return &out
}
