package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/test/registrytest"
)

// FuzzV2 sends arbitrary /v2/ requests (method, request target, Range and Accept)
// to the server's handler: no panic; no 5xx but the upstream's own failure for the
// one repository it fails, marked Hopless-Upstream-Error; a path with a dot or empty
// segment, a control character or a percent sign left after decoding (double
// encoding), or a blob with a bad digest, is 4xx and never reaches the upstream;
// and nothing reaches the upstream outside the alias's repositories.
func FuzzV2(f *testing.F) {
	up := registrytest.NewUpstream(f)
	img := registrytest.Image(f, 4096, 2)
	up.Push(f, registrytest.UpstreamPath+"/install", "v1", img)
	// The upstream fails every request for the repository down (and those under it):
	// the one input that may be answered with a 5xx, the upstream's.
	up.Intercept(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/v2/"+registrytest.UpstreamPath+"/down/") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	env := registrytest.NewEnv(f, "", up)
	// No background revalidation of a tag while the fuzzer runs.
	env.Config.Cache.TagTTL.Duration = time.Hour
	s, _ := newServer(f, env.Config)
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodPatch, http.MethodOptions}
	// Every path registryd may send to the upstream: the base, or a manifest, blob or
	// tag list of a valid repository under the alias's upstream path.
	upstreamPath := regexp.MustCompile(`^/v2/(?:` + regexp.QuoteMeta(registrytest.UpstreamPath) +
		`/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*/(?:(?:manifests|blobs)/[A-Za-z0-9_.:+=-]+|tags/list))?$`)

	const repo = "/v2/system/deckhouse/install"
	hex64 := strings.Repeat("a", 64)
	man := registrytest.Digest(f, img).String()
	blobs := registrytest.Blobs(f, img)
	layer := blobs[1].String()
	get := uint8(0)
	for _, target := range []string{
		// The paths of TestInputValidation, as sent.
		"/v2/system/deckhouse/Install/manifests/v1",
		"/v2/system/../install/manifests/v1",
		"/v2/system/./install/manifests/v1",
		"/v2/a//b/manifests/v1",
		"/v2/system/deckhouse/" + strings.Repeat("a", 239) + "/manifests/v1",
		"/v2/%2e%2e/x/manifests/v1",
		repo + "/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
		"/v2/sys:tem/install/manifests/v1",
		"/v2/localhost:5000/install/blobs/sha256:" + hex64,
		repo + "/blobs/sha256:" + strings.Repeat("z", 64),
		repo + "/blobs/sha256:" + hex64[:63],
		repo + "/blobs/md5:" + hex64[:32],
		repo + "/blobs/" + hex64,
		repo + "/manifests/sha256:" + strings.Repeat("A", 64),
		repo + "/manifests/-v1",
		repo + "/manifests/v1+x",
		repo + "/manifests/v1?ns=evil.example",
		"/v2/other/secret/manifests/v1",
		"/v2/other/secret/manifests/v1?ns=" + up.Host,
		"/v2/deckhouse/ce/install/manifests/v1",
		"/v2/system/deckhouse/manifests/v1",
		repo + "/blobs/uploads/0123",
		"/v2/_catalog",
		repo + "/tags/list",
		"/etc/passwd",
		// What the upstream holds.
		"/v2/",
		repo + "/manifests/v1",
		repo + "/manifests/v1?ns=" + up.Host,
		repo + "/manifests/" + man,
		repo + "/blobs/" + layer,
		repo + "/blobs/" + blobs[0].String() + "?ns=" + up.Host,
		"/v2/system/deckhouse/down/manifests/v1",
		"/v2/system/deckhouse/down/manifests/" + man,
		"/v2/system/deckhouse/down/blobs/" + layer,
		"/v2/system/deckhouse/down/sub/blobs/sha256:" + hex64 + "?ns=" + up.Host,
		// Encodings of dot segments, NUL, CRLF and slashes.
		"/v2/system/deckhouse/%2E%2E/%2e%2e/other/secret/manifests/v1",
		"/v2/system/deckhouse/install/%252e%252e/manifests/v1",
		"/v2/system/deckhouse/%252e%252e%252fother/manifests/v1",
		"/v2/system/deckhouse/install%00/manifests/v1",
		"/v2/system/deckhouse/install%0d%0aX-Evil:%201/manifests/v1",
		repo + "/manifests/v1%0d%0a",
		"/v2/system%2fdeckhouse%2finstall/manifests/v1",
		"/v2/system/deckhouse/install/manifests/v1/..",
		"/v2/system/deckhouse/install/blobs/sha256:" + hex64 + "/..",
		// Digests: algorithm, length, case.
		repo + "/blobs/sha512:" + hex64,
		repo + "/blobs/sha256:" + hex64 + "a",
		repo + "/blobs/SHA256:" + hex64,
		repo + "/blobs/sha256:" + strings.ToUpper(layer[len("sha256:"):]),
		repo + "/manifests/sha384:" + hex64,
		repo + "/blobs/sha256:",
		repo + "/blobs/:" + hex64,
	} {
		f.Add(get, target, "", "")
	}
	for _, rng := range []string{"bytes=0-99", "bytes=-10", "bytes=100-", "bytes=0-9223372036854775807", "bytes=4096-", "bytes=5-4", "bytes=0-1,3-4", "bytes=-0"} {
		f.Add(get, repo+"/blobs/"+layer, rng, "")
		f.Add(get, repo+"/blobs/"+blobs[2].String(), rng, "")
	}
	for _, accept := range []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "text/html", "*/*", "application/x-unknown+json; q=0.1"} {
		f.Add(get, repo+"/manifests/v1", "", accept)
	}
	for m := range methods {
		f.Add(uint8(m), repo+"/manifests/v1", "", "")
	}

	f.Fuzz(func(t *testing.T, method uint8, target, rng, accept string) {
		u, err := url.ParseRequestURI(target)
		// net/http answers these itself: a request line with a space or a control
		// character, or a header value with one.
		if err != nil || strings.ContainsAny(target, " \t") || !validHeaderValue(rng) || !validHeaderValue(accept) {
			return
		}
		r := httptest.NewRequest(methods[int(method)%len(methods)], "/", nil)
		r.URL, r.RequestURI = u, target
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		before := len(up.Requests())
		w := httptest.NewRecorder()
		s.handler.ServeHTTP(w, r)
		reqs := up.Requests()[before:]

		if w.Code >= 500 {
			name, _, _ := splitV2(u.Path)
			down := name == "system/deckhouse/down" || strings.HasPrefix(name, "system/deckhouse/down/")
			if !down || w.Header().Get("Hopless-Upstream-Error") == "" {
				t.Fatalf("%s %s (Range %q, Accept %q): %d %s, not the failing upstream's", r.Method, target, rng, accept, w.Code, w.Body)
			}
		}
		for _, req := range up.Requests() {
			if !upstreamPath.MatchString(req.Path) || strings.Contains(req.Path, "..") {
				t.Fatalf("%s %s: the upstream was asked for %s %s", r.Method, target, req.Method, req.Path)
			}
		}
		if why := badInput(u.Path); why != "" {
			if w.Code < 400 || w.Code >= 500 {
				t.Fatalf("%s %s, with %s: %d, want 4xx", r.Method, target, why, w.Code)
			}
			if len(reqs) != 0 {
				t.Fatalf("%s %s, with %s, reached the upstream: %v", r.Method, target, why, reqs)
			}
		}
	})
}

// badInput says what makes a /v2/ path one that must be refused, or "".
func badInput(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok || rest == "" {
		return ""
	}
	if strings.ContainsAny(rest, "\x00\r\n%") {
		return "a control character or a percent sign"
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "a dot or empty segment"
		}
	}
	if _, kind, ref := splitV2(p); kind == kindBlob {
		if _, err := digest.Parse(ref); err != nil {
			return "a bad digest"
		}
	}
	return ""
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// FuzzBlobRange sends arbitrary Range headers for blobs that the store has no room
// for, so that every request is a miss streamed from the upstream: no panic (a cut
// response is one), no 5xx, and the answer is the blob (200), the part of it that
// Content-Range names (206, with a Content-Length to match), or 416.
func FuzzBlobRange(f *testing.F) {
	up := registrytest.NewUpstream(f)
	img := registrytest.Image(f, 70<<10, 2)
	up.Push(f, registrytest.UpstreamPath+"/install", "v1", img)
	env := registrytest.NewEnv(f, "", up)
	// Above any filesystem's size: nothing is stored, every blob is streamed through.
	env.Config.Storage.MinFree = conf.Space{Bytes: 1 << 60}
	s, _ := newServer(f, env.Config)
	layers, err := img.Layers()
	if err != nil {
		f.Fatal(err)
	}
	var digests []string
	blobs := map[string][]byte{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			f.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			f.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil {
			f.Fatal(err)
		}
		digests = append(digests, d.String())
		blobs[d.String()] = b
	}
	for _, rng := range []string{
		"", "bytes=0-99", "bytes=100-", "bytes=990-5000", "bytes=-10", "bytes=-5000", "bytes=0-0",
		"bytes=71680-", "bytes=5-4", "bytes=-0", "bytes=x-1", "bytes=0-1,5-6", "items=0-1", "bytes=5",
		"bytes=0-9223372036854775807", "bytes=1000-9223372036854775807", "bytes=-9223372036854775807",
		"bytes=9223372036854775807-", "bytes=0-9223372036854775808", "bytes=+5-+9",
	} {
		f.Add(false, uint8(0), rng)
		f.Add(true, uint8(1), rng)
	}
	f.Fuzz(func(t *testing.T, head bool, which uint8, rng string) {
		if !validHeaderValue(rng) {
			return
		}
		d := digests[int(which)%len(digests)]
		blob := blobs[d]
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		r := httptest.NewRequest(method, "/v2/system/deckhouse/install/blobs/"+d, nil)
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		s.handler.ServeHTTP(w, r)
		what := fmt.Sprintf("%s of %d bytes with Range %q", method, len(blob), rng)
		if w.Header().Get("Hopless-Cache") != "miss" {
			t.Fatalf("%s: %d, Hopless-Cache %q; want every request a miss", what, w.Code, w.Header().Get("Hopless-Cache"))
		}
		var want []byte
		switch w.Code {
		case http.StatusOK:
			want = blob
		case http.StatusPartialContent:
			var first, last, total int64
			cr := w.Header().Get("Content-Range")
			if n, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &first, &last, &total); n != 3 || err != nil ||
				first < 0 || first > last || total != int64(len(blob)) || last >= total || cr != fmt.Sprintf("bytes %d-%d/%d", first, last, total) {
				t.Fatalf("%s: 206 with Content-Range %q", what, cr)
			}
			want = blob[first : last+1]
		case http.StatusRequestedRangeNotSatisfiable:
			if cr := w.Header().Get("Content-Range"); cr != fmt.Sprintf("bytes */%d", len(blob)) {
				t.Fatalf("%s: 416 with Content-Range %q", what, cr)
			}
			return
		default:
			t.Fatalf("%s: %d %s", what, w.Code, w.Body)
		}
		if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(len(want)) {
			t.Fatalf("%s: %d with Content-Length %q, want %d", what, w.Code, cl, len(want))
		}
		if !head && !bytes.Equal(w.Body.Bytes(), want) {
			t.Fatalf("%s: %d, %d bytes that are not the %d expected", what, w.Code, w.Body.Len(), len(want))
		}
	})
}
