package server

import (
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hopless/hopless/test/registrytest"
)

// TestInputValidation sends bad input through the running server: every request is
// answered by the validation in front of distribution, none reaches the upstream,
// and no file appears outside the storage root.
func TestInputValidation(t *testing.T) {
	t.Parallel()
	up := registrytest.NewUpstream(t)
	env := registrytest.NewEnv(t, "", up)
	s, _ := newServer(t, env.Config)
	registrytest.Start(t, s)
	client := env.Cert.Client(t)
	before := files(t, env.Dir)

	const repo = "/v2/system/deckhouse/install"
	hex64 := strings.Repeat("a", 64)
	tests := []struct {
		name    string
		method  string
		path    string
		rawPath string // sent instead of path's own encoding when set
		status  int
		code    string
		message string // a substring of the error message
	}{
		{name: "uppercase name", path: "/v2/system/deckhouse/Install/manifests/v1", status: 400, code: "NAME_INVALID", message: `"system/deckhouse/Install"`},
		{name: "dot dot", path: "/v2/system/../install/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "dot", path: "/v2/system/./install/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "empty component", path: "/v2/a//b/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "name over 255 characters", path: "/v2/system/deckhouse/" + strings.Repeat("a", 239) + "/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "encoded dot dot", path: "/v2/../x/manifests/v1", rawPath: "/v2/%2e%2e/x/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "encoded slashes in a digest", path: repo + "/blobs/sha256:../../../etc/passwd", rawPath: repo + "/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd", status: 400, code: "NAME_INVALID"},
		{name: "name with a colon", path: "/v2/sys:tem/install/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "uppercase first component", path: "/v2/Deckhouse/install/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "registry host and port", path: "/v2/localhost:5000/install/blobs/sha256:" + hex64, status: 400, code: "NAME_INVALID"},
		{name: "blob digest not hex", path: repo + "/blobs/sha256:" + strings.Repeat("z", 64), status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest too short", path: repo + "/blobs/sha256:" + hex64[:63], status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest unknown algorithm", path: repo + "/blobs/md5:" + hex64[:32], status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest without algorithm", path: repo + "/blobs/" + hex64, status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest HEAD", method: http.MethodHead, path: repo + "/blobs/sha256:xyz", status: 400},
		{name: "manifest digest not hex", path: repo + "/manifests/sha256:" + strings.Repeat("g", 64), status: 400, code: "DIGEST_INVALID", message: "sha256:ggg"},
		{name: "manifest digest uppercase", path: repo + "/manifests/sha256:" + strings.Repeat("A", 64), status: 400, code: "DIGEST_INVALID"},
		{name: "tag with a leading dash", path: repo + "/manifests/-v1", status: 400, code: "TAG_INVALID", message: `"-v1"`},
		{name: "tag over 128 characters", path: repo + "/manifests/" + strings.Repeat("t", 129), status: 400, code: "TAG_INVALID"},
		{name: "tag with a plus", path: repo + "/manifests/v1+x", status: 400, code: "TAG_INVALID"},
		{name: "unknown ns", path: repo + "/manifests/v1?ns=evil.example", status: 403, code: "DENIED", message: `"evil.example"`},
		{name: "unknown ns on a blob", path: repo + "/blobs/sha256:" + hex64 + "?ns=evil.example:5000", status: 403, code: "DENIED", message: `"evil.example:5000"`},
		{name: "unknown ns, not configured", path: repo + "/manifests/v1?ns=evil.example", status: 403, code: "DENIED", message: `ns "evil.example" is not configured`},
		{name: "outside the alias", path: "/v2/other/secret/manifests/v1", status: 404, code: "NAME_UNKNOWN", message: `repository "other/secret" is not configured`},
		{name: "outside the alias, a blob", path: "/v2/other/secret/blobs/sha256:" + hex64, status: 404, code: "NAME_UNKNOWN", message: "not configured"},
		{name: "outside the alias, with its ns", path: "/v2/other/secret/manifests/v1?ns=" + up.Host, status: 404, code: "NAME_UNKNOWN", message: "not configured"},
		{name: "the upstream's path", path: "/v2/deckhouse/ce/install/manifests/v1", status: 404, code: "NAME_UNKNOWN", message: "not configured"},
		{name: "the alias prefix alone", path: "/v2/system/deckhouse/manifests/v1", status: 404, code: "NAME_UNKNOWN", message: "not configured"},
		{name: "PUT manifest", method: http.MethodPut, path: repo + "/manifests/v1", status: 405, code: "UNSUPPORTED"},
		{name: "PUT manifest of a bad name", method: http.MethodPut, path: "/v2/A/manifests/v1", status: 405, code: "UNSUPPORTED"},
		{name: "POST upload", method: http.MethodPost, path: repo + "/blobs/uploads/", status: 405, code: "UNSUPPORTED"},
		{name: "PATCH upload", method: http.MethodPatch, path: repo + "/blobs/uploads/0123", status: 405, code: "UNSUPPORTED"},
		{name: "PUT upload", method: http.MethodPut, path: repo + "/blobs/uploads/0123?digest=sha256:" + hex64, status: 405, code: "UNSUPPORTED"},
		{name: "GET upload", path: repo + "/blobs/uploads/0123", status: 405, code: "UNSUPPORTED"},
		{name: "DELETE manifest", method: http.MethodDelete, path: repo + "/manifests/sha256:" + hex64, status: 405, code: "UNSUPPORTED"},
		{name: "DELETE blob", method: http.MethodDelete, path: repo + "/blobs/sha256:" + hex64, status: 405, code: "UNSUPPORTED"},
		{name: "POST base", method: http.MethodPost, path: "/v2/", status: 405, code: "UNSUPPORTED"},
		{name: "catalog", path: "/v2/_catalog", status: 404, code: "UNSUPPORTED"},
		{name: "tags list, bad n", path: repo + "/tags/list?n=many", status: 400, code: "PAGINATION_NUMBER_INVALID", message: `"many"`},
		{name: "tags list outside the alias", path: "/v2/other/secret/tags/list", status: 404, code: "NAME_UNKNOWN", message: "not configured"},
		{name: "tags list, unknown ns", path: repo + "/tags/list?ns=evil.example", status: 403, code: "DENIED", message: `ns "evil.example" is not configured`},
		{name: "tags list of a bad name", path: "/v2/A/tags/list", status: 400, code: "NAME_INVALID"},
		{name: "not the registry API", path: "/etc/passwd", status: 404, code: "UNSUPPORTED"},
		{name: "encoded dot dot in upper case", path: "/v2/../x/manifests/v1", rawPath: "/v2/%2E%2E/x/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "encoded dot dot as the reference", path: repo + "/manifests/..", rawPath: repo + "/manifests/%2e%2e", status: 400, code: "NAME_INVALID"},
		{name: "double-encoded dot dot", path: "/v2/system/deckhouse/%252e%252e/other/manifests/v1", status: 400, code: "NAME_INVALID", message: `"system/deckhouse/%2e%2e/other"`},
		{name: "double-encoded slash", path: "/v2/system/deckhouse/install%252f..%252fx/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "NUL in a name", path: "/v2/system/deckhouse/in%00stall/manifests/v1", status: 400, code: "NAME_INVALID", message: `"system/deckhouse/in\x00stall"`},
		{name: "CRLF in a name", path: "/v2/system/deckhouse/install%0d%0aX-Injected:%201/manifests/v1", status: 400, code: "NAME_INVALID", message: `install\r\nX-Injected`},
		{name: "CRLF in a tag", path: repo + "/manifests/v1%0d%0aX-Injected", status: 400, code: "TAG_INVALID", message: `"v1\r\nX-Injected"`},
		{name: "CRLF in a digest", path: repo + "/blobs/sha256:" + hex64 + "%0d%0a", status: 400, code: "DIGEST_INVALID"},
		{name: "CRLF in ns", path: repo + "/manifests/v1?ns=evil.example%0d%0aX-Injected:%201", status: 403, code: "DENIED", message: `"evil.example\r\nX-Injected: 1"`},
		{name: "blob digest uppercase hex", path: repo + "/blobs/sha256:" + strings.Repeat("A", 64), status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest uppercase algorithm", path: repo + "/blobs/SHA256:" + hex64, status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest too long", path: repo + "/blobs/sha256:" + hex64 + "a", status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest sha512 of sha256's length", path: repo + "/blobs/sha512:" + hex64, status: 400, code: "DIGEST_INVALID"},
		{name: "manifest digest of an unknown algorithm", path: repo + "/manifests/sha1:" + hex64[:40], status: 400, code: "DIGEST_INVALID"},
		{name: "blob digest empty", path: repo + "/blobs/sha256:", status: 400, code: "DIGEST_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequestWithContext(t.Context(), method, baseURL(s)+tt.path, strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			if tt.rawPath != "" {
				req.URL.RawPath = tt.rawPath
				if got := req.URL.EscapedPath(); got != tt.rawPath {
					t.Fatalf("the request would be sent as %q, not %q", got, tt.rawPath)
				}
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := readAll(t, resp)
			if resp.StatusCode != tt.status {
				t.Fatalf("%s %s: %d %s, want %d", method, tt.path, resp.StatusCode, body, tt.status)
			}
			if method == http.MethodHead {
				return
			}
			errs := registrytest.Errors(t, body)
			if errs[0].Code != tt.code || !strings.Contains(errs[0].Message, tt.message) {
				t.Errorf("error %+v, want code %s with a message containing %q", errs[0], tt.code, tt.message)
			}
			// Refusals name what the client sent, never what is configured.
			if !strings.Contains(tt.path, up.Host) && strings.Contains(string(body), up.Host) {
				t.Errorf("the answer %s names the upstream %s", body, up.Host)
			}
			if tt.status == http.StatusMethodNotAllowed && strings.Contains(tt.path, "/uploads") == (resp.Header.Get("Allow") != "") {
				t.Errorf("Allow %q: want GET, HEAD for writes and nothing for uploads", resp.Header.Get("Allow"))
			}
		})
	}
	t.Cleanup(func() {
		if n := up.Count(registrytest.Any); n != 0 {
			t.Errorf("bad requests made %d upstream requests: %v", n, up.Requests())
		}
		root := env.Config.Storage.Root + string(filepath.Separator)
		for f := range files(t, env.Dir) {
			if !before[f] && !strings.HasPrefix(f, root) {
				t.Errorf("file %s appeared outside the storage root", f)
			}
		}
	})
}

func files(t *testing.T, dir string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out[p] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSplitV2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path, name, kind, ref string
	}{
		{"/v2/", "", "", ""},
		{"/v2/_catalog", "", "", ""},
		{"/v2/a/manifests/v1", "a", kindManifest, "v1"},
		{"/v2/a/b/c/manifests/sha256:x", "a/b/c", kindManifest, "sha256:x"},
		{"/v2/manifests/blobs/sha256:x", "manifests", kindBlob, "sha256:x"},
		{"/v2/a/tags/list", "a", kindTags, ""},
		{"/v2/a/blobs/uploads", "a", kindUpload, ""},
		{"/v2/a/blobs/uploads/", "a", kindUpload, ""},
		{"/v2/a/b/blobs/uploads/123", "a/b", kindUpload, "123"},
		{"/v2/a/tags/other", "", "", ""},
		{"/hopless/v1/pins", "", "", ""},
	}
	for _, tt := range tests {
		name, kind, ref := splitV2(tt.path)
		if name != tt.name || kind != tt.kind || ref != tt.ref {
			t.Errorf("splitV2(%q) = %q, %q, %q; want %q, %q, %q", tt.path, name, kind, ref, tt.name, tt.kind, tt.ref)
		}
	}
}

func TestRequestKind(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"/healthz":               kindHealth,
		"/readyz":                kindHealth,
		"/v2/":                   kindBase,
		"/v2":                    kindBase,
		"/v2/a/manifests/v1":     kindManifest,
		"/v2/a/blobs/sha256:x":   kindBlob,
		"/v2/a/tags/list":        kindTags,
		"/v2/a/blobs/uploads/":   kindUpload,
		"/v2/_catalog":           kindOther,
		"/hopless/v1/peer/blob":  kindPeer,
		"/hopless/v1/pins":       kindAPI,
		"/hopless/v1/prefetch/3": kindAPI,
		"/hopless/v1/peer":       kindAPI,
		"/metrics":               kindOther,
		"/hopless/v2/peer/blob":  kindOther,
		"/v2/a/manifests/":       kindManifest,
	}
	for path, want := range tests {
		if got := requestKind(path); got != want {
			t.Errorf("requestKind(%q) = %q, want %q", path, got, want)
		}
	}
}

// TestAPIRequestKinds checks that requests to registryd's own API are logged and
// counted as "peer" and "api".
func TestAPIRequestKinds(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	s, logs := newServer(t, env.Config)
	tests := []struct {
		method, path, kind string
		code               int
	}{
		{http.MethodGet, "/hopless/v1/peer/blob?upstream=x", kindPeer, http.StatusUnauthorized},
		{http.MethodPut, "/hopless/v1/pins", kindAPI, http.StatusNotFound},
		{http.MethodGet, "/hopless/v1/prefetch/1", kindAPI, http.StatusNotFound},
	}
	for _, tt := range tests {
		if w := serve(s, tt.method, tt.path); w.Code != tt.code {
			t.Errorf("%s %s: %d %s, want %d", tt.method, tt.path, w.Code, w.Body, tt.code)
		}
		if got := counterValue(t, s.metrics.HTTPRequests.WithLabelValues(tt.method, tt.kind, strconv.Itoa(tt.code))); got != 1 {
			t.Errorf("%s %s: requests{kind=%s} = %v, want 1", tt.method, tt.path, tt.kind, got)
		}
		if want := `"path":"` + strings.Split(tt.path, "?")[0] + `","kind":"` + tt.kind + `"`; !strings.Contains(logs.String(), want) {
			t.Errorf("no access log line with %s:\n%s", want, logs.String())
		}
	}
}

// TestPlainHTTPLogged checks that a setting that turns TLS off is logged, by name,
// when registryd starts, and that a config with TLS everywhere logs none.
func TestPlainHTTPLogged(t *testing.T) {
	t.Parallel()
	env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
	_, logs := newServer(t, env.Config)
	if strings.Contains(logs.String(), "TLS is off") {
		t.Errorf("TLS everywhere, yet registryd logged it off:\n%s", logs.String())
	}
	cfg := *env.Config
	cfg.Peers.TLS.Insecure = true
	_, logs = newServer(t, &cfg)
	if !strings.Contains(logs.String(), `"msg":"TLS is off by configuration: plain http","setting":"peers.tls.insecure"`) {
		t.Errorf("peers.tls.insecure = true was not logged:\n%s", logs.String())
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// separateSpool puts the spool outside the storage root.
		separateSpool bool
		breakFS       func(t *testing.T, root, spool string)
		path          string
		wantCode      int
		wantBody      string
	}{
		{name: "liveness", path: "/healthz", wantCode: http.StatusOK, wantBody: "ok"},
		{name: "ready", path: "/readyz", wantCode: http.StatusOK, wantBody: "ok"},
		{
			name: "liveness ignores storage", path: "/healthz",
			breakFS:  func(t *testing.T, root, _ string) { mustRemove(t, root) },
			wantCode: http.StatusOK, wantBody: "ok",
		},
		{
			name: "spool missing", path: "/readyz",
			breakFS:  func(t *testing.T, _, spool string) { mustRemove(t, spool) },
			wantCode: http.StatusServiceUnavailable, wantBody: "storage.spool does not exist",
		},
		{
			name: "spool is a file", path: "/readyz",
			breakFS: func(t *testing.T, _, spool string) {
				mustRemove(t, spool)
				mustWrite(t, spool)
			},
			wantCode: http.StatusServiceUnavailable, wantBody: "storage.spool is not a directory",
		},
		{
			name: "root missing", path: "/readyz", separateSpool: true,
			breakFS:  func(t *testing.T, root, _ string) { mustRemove(t, root) },
			wantCode: http.StatusServiceUnavailable, wantBody: "storage.root does not exist",
		},
		{
			name: "root is a file", path: "/readyz", separateSpool: true,
			breakFS: func(t *testing.T, root, _ string) {
				mustRemove(t, root)
				mustWrite(t, root)
			},
			wantCode: http.StatusServiceUnavailable, wantBody: "storage.root is not a directory",
		},
		{
			name: "root not writable", path: "/readyz", separateSpool: true,
			breakFS: func(t *testing.T, root, _ string) {
				if os.Geteuid() == 0 {
					t.Skip("root ignores directory permissions")
				}
				if err := os.Chmod(root, 0o500); err != nil {
					t.Fatal(err)
				}
			},
			wantCode: http.StatusServiceUnavailable, wantBody: "is not writable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := registrytest.NewEnv(t, "", registrytest.NewUpstream(t))
			cfg := env.Config
			if tt.separateSpool {
				cfg.Storage.Spool = filepath.Join(env.Dir, "spool")
			}
			s, _ := newServer(t, cfg)
			if tt.breakFS != nil {
				tt.breakFS(t, cfg.Storage.Root, cfg.Storage.Spool)
				// Close writes the store's index under the root.
				t.Cleanup(func() {
					for _, dir := range []string{cfg.Storage.Root, cfg.Storage.Spool} {
						_ = os.Chmod(dir, 0o700)
						if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
							mustRemove(t, dir)
							if err := os.MkdirAll(dir, 0o700); err != nil {
								t.Error(err)
							}
						}
					}
				})
			}
			w := serve(s, http.MethodGet, tt.path)
			if w.Code != tt.wantCode || !strings.Contains(w.Body.String(), tt.wantBody) {
				t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, w.Code, w.Body, tt.wantCode, tt.wantBody)
			}
			if strings.Contains(w.Body.String(), env.Dir) {
				t.Errorf("GET %s: the answer names a local path: %q", tt.path, w.Body)
			}
			if got := counterValue(t, s.metrics.HTTPRequests.WithLabelValues("GET", kindHealth, strconv.Itoa(tt.wantCode))); got != 1 {
				t.Errorf("health counter = %v, want 1", got)
			}
		})
	}
}

func mustRemove(t *testing.T, p string) {
	t.Helper()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}
