package lab

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestAccessEntryDigest(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		method, path, query, want string
	}{
		{"GET", "/v2/lab/app/blobs/" + d, "", d},
		{"HEAD", "/v2/a/b/c/blobs/" + d, "", d},
		{"GET", "/v2/lab/app/manifests/" + d, "", d},
		{"GET", "/v2/lab/app/manifests/v1", "", ""},
		{"PUT", "/v2/lab/app/blobs/uploads/0c9d-uuid", "_state=x&digest=" + strings.Replace(d, ":", "%3A", 1), d},
		{"PUT", "/v2/lab/app/blobs/uploads/0c9d-uuid", "digest=" + d, d},
		{"PATCH", "/v2/lab/app/blobs/uploads/0c9d-uuid", "digest=" + d, ""},
		{"PUT", "/v2/lab/app/blobs/uploads/0c9d-uuid", "digest=sha256:short", ""},
		{"GET", "/v2/lab/app/blobs/sha256:ABC", "", ""},
		{"GET", "/v2/blobs/" + d, "", ""},
		{"GET", "/v2/", "", ""},
	} {
		e := AccessEntry{Method: tc.method, Path: tc.path, Query: tc.query}
		if got := e.Digest(); got != tc.want {
			t.Errorf("%s %s?%s: Digest() = %q, want %q", tc.method, tc.path, tc.query, got, tc.want)
		}
	}
}

func TestAccessBlobGETs(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("0", 64)
	entries := []AccessEntry{
		{Method: "GET", Path: "/v2/"},
		{Method: "HEAD", Path: "/v2/app/blobs/" + d},
		{Method: "GET", Path: "/v2/app/blobs/" + d, Status: 200},
		{Method: "GET", Path: "/v2/app/manifests/" + d},
		{Method: "GET", Path: "/v2/app/blobs/uploads/x"},
		{Method: "GET", Path: "/v2/lab/app/blobs/" + d, Status: 206},
	}
	got := BlobGETs(entries)
	if len(got) != 2 || got[0].Status != 200 || got[1].Status != 206 {
		t.Errorf("BlobGETs = %+v, want the two blob GETs in order", got)
	}
}

func TestReadAccessLog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	entries, err := ReadAccessLog(filepath.Join(dir, "missing.log"))
	if err != nil || len(entries) != 0 {
		t.Errorf("missing log: %v, %v; want empty and no error", entries, err)
	}

	bad := filepath.Join(dir, "bad.log")
	if err := os.WriteFile(bad, []byte("{\"method\":\"GET\"}\n\nnot json\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAccessLog(bad); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("bad log: err = %v, want one naming line 3", err)
	}
}

// TestAccessLogHandler checks that concurrent requests each get one whole
// line with the status and body size the handler wrote.
func TestAccessLogHandler(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.log")
	alog, err := openAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	h := alog.handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/teapot" {
			w.WriteHeader(http.StatusTeapot)
			return
		}
		w.Write([]byte(strings.Repeat("x", 1000)))
	}))

	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			path := "/ok"
			if i%2 == 1 {
				path = "/teapot"
			}
			req := httptest.NewRequest(http.MethodGet, path+"?a=b", nil)
			req.Header.Set("Range", "bytes=0-9")
			h.ServeHTTP(httptest.NewRecorder(), req)
		})
	}
	wg.Wait()
	if err := alog.close(); err != nil {
		t.Fatal(err)
	}

	entries, err := ReadAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Fatalf("%d entries, want %d", len(entries), n)
	}
	for _, e := range entries {
		ok := e.Query == "a=b" && e.Range == "bytes=0-9" && e.Remote != "" && !e.Time.IsZero() &&
			((e.Path == "/ok" && e.Status == 200 && e.Bytes == 1000) ||
				(e.Path == "/teapot" && e.Status == http.StatusTeapot && e.Bytes == 0))
		if !ok {
			t.Errorf("unexpected entry %+v", e)
		}
	}
}
