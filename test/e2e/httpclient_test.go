package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// labHTTP returns an HTTPS client that trusts the lab's CA and talks to the lab's
// loopback addresses directly. It has no overall timeout: callers bound requests
// with their context.
func labHTTP(t *testing.T, l *lab.Lab) *http.Client {
	t.Helper()
	pool, err := lab.LoadPool(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 32,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// localName is the name a client asks a master for: an upstream repository under
// the upstream path goes through the local prefix alias, as nodes pull it.
func localName(repo string) string {
	if rest, ok := strings.CutPrefix(repo, lab.UpstreamPath+"/"); ok {
		return lab.LocalPrefix + "/" + rest
	}
	return repo
}

// masterURL is https://<master i's address>/v2/<name>/<kind>/<ref> (i is 1-based).
func masterURL(l *lab.Lab, master int, name, kind, ref string) string {
	return "https://" + l.Masters[master-1].Addr + "/v2/" + name + "/" + kind + "/" + ref
}

// openBlob sends GET for blob digest of repo (an upstream repository name) to one
// master, with a Range header unless rng is empty, and returns the response with
// its body unread.
func openBlob(ctx context.Context, c *http.Client, l *lab.Lab, master int, repo, digest, rng string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, masterURL(l, master, localName(repo), "blobs", digest), nil)
	if err != nil {
		return nil, err
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	return c.Do(req)
}

// blobResponse is what a client got for one blob GET.
type blobResponse struct {
	Status int
	Header http.Header
	// Body holds the bytes received, also when Err cut them short.
	Body []byte
	// Err is a transport error, or an error while reading the body (a cut
	// connection shows as io.ErrUnexpectedEOF).
	Err error
}

// complete reports whether the response arrived whole: no error, and as many body
// bytes as its Content-Length said.
func (r blobResponse) complete() bool {
	return r.Err == nil && r.Header != nil && int64(len(r.Body)) == contentLength(r.Header)
}

func (r blobResponse) String() string {
	return fmt.Sprintf("status %d, %d body bytes (Content-Length %q, Content-Range %q), sha256 %s, error %v",
		r.Status, len(r.Body), r.Header.Get("Content-Length"), r.Header.Get("Content-Range"), sha(r.Body), r.Err)
}

func contentLength(h http.Header) int64 {
	n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// getBlob GETs a whole blob (or the range rng) from one master and reads the body.
func getBlob(ctx context.Context, c *http.Client, l *lab.Lab, master int, repo, digest, rng string) blobResponse {
	resp, err := openBlob(ctx, c, l, master, repo, digest, rng)
	if err != nil {
		return blobResponse{Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return blobResponse{Status: resp.StatusCode, Header: resp.Header, Body: body, Err: err}
}

// sha is the digest of b, as "sha256:<hex>".
func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// manifestAccept is what containerd asks for: every manifest and index media type.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"

// manifestResponse is what a client got for one manifest GET.
type manifestResponse struct {
	Status int
	// Digest is the Docker-Content-Digest header.
	Digest    string
	MediaType string
	Body      []byte
}

// registryErrorCode is the first error code of a registry error body, or "".
func (r manifestResponse) registryErrorCode() string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(r.Body, &e) != nil || len(e.Errors) == 0 {
		return ""
	}
	return e.Errors[0].Code
}

func (r manifestResponse) String() string {
	body := r.Body
	if len(body) > 300 {
		body = body[:300]
	}
	return fmt.Sprintf("status %d, digest %q, media type %q: %s", r.Status, r.Digest, r.MediaType, bytes.TrimSpace(body))
}

// fetchManifest GETs /v2/<name>/manifests/<ref><query> from one master; name is the
// name as the client sends it (see localName) and query is "" or starts with "?".
func fetchManifest(ctx context.Context, c *http.Client, l *lab.Lab, master int, name, ref, query string) (manifestResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, masterURL(l, master, name, "manifests", ref)+query, nil)
	if err != nil {
		return manifestResponse{}, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := c.Do(req)
	if err != nil {
		return manifestResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return manifestResponse{}, fmt.Errorf("GET %s: reading the body: %w", req.URL, err)
	}
	return manifestResponse{Status: resp.StatusCode, Digest: resp.Header.Get("Docker-Content-Digest"),
		MediaType: resp.Header.Get("Content-Type"), Body: body}, nil
}

// metric sums the samples of a metric from master i's /metrics whose labels include
// every label in want; the name is the sample's (e.g. a histogram's _count).
func metric(t *testing.T, l *lab.Lab, master int, name string, want map[string]string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "http://" + l.Masters[master-1].Metrics + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", u, err)
	}
	return sampleSum(t, string(b), name, want)
}

// metricSamples returns the samples of metric name in the Prometheus text.
func metricSamples(t *testing.T, text, name string) []lab.Sample {
	t.Helper()
	s, err := lab.ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return s.Of(name)
}

// sampleSum sums the samples of metric name in the Prometheus text whose labels
// include every label in want.
func sampleSum(t *testing.T, text, name string, want map[string]string) float64 {
	t.Helper()
	s, err := lab.ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	sum, _ := s.Sum(name, want)
	return sum
}

// masterLogLines returns the JSON log records of master i whose msg is msg.
func masterLogLines(t *testing.T, l *lab.Lab, master int, msg string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(l.Masters[master-1].Log)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// eventually polls cond every 100 ms until it holds, failing the test with what if
// it still does not after limit. The limit bounds a wait; it is not what is tested.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not so after %s: %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
