package e2e

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// Helpers of cluster_test.go; every name starts with cl.

// clHTTP is an HTTPS client that trusts the lab CA and never uses a proxy.
func clHTTP(t testing.TB, l *lab.Lab) *http.Client {
	t.Helper()
	pool, err := lab.LoadPool(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// clResponse is a response read whole.
type clResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// clDo sends one request; hdr holds extra headers. A transport error is returned,
// never fatal, so that goroutines may call it.
func clDo(c *http.Client, method, url string, hdr map[string]string, body io.Reader) (clResponse, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return clResponse{}, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return clResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return clResponse{}, fmt.Errorf("%s %s: reading the body: %w", method, url, err)
	}
	return clResponse{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// clMust is clDo that fails the test on a transport error.
func clMust(t testing.TB, c *http.Client, method, url string, hdr map[string]string, body io.Reader) clResponse {
	t.Helper()
	r, err := clDo(c, method, url, hdr, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// clMasterURL is the base URL of master i (1-based).
func clMasterURL(l *lab.Lab, i int) string { return "https://" + lab.MasterAddr(l.Slot, i) }

// clLocalName is the name clients use for an upstream repository.
func clLocalName(repo string) string {
	if rest, ok := strings.CutPrefix(repo, lab.UpstreamPath+"/"); ok {
		return lab.LocalPrefix + "/" + rest
	}
	return repo
}

// clBlobURL is blob d of the upstream repository repo on master i.
func clBlobURL(l *lab.Lab, i int, repo, d string) string {
	return clMasterURL(l, i) + "/v2/" + clLocalName(repo) + "/blobs/" + d
}

// clDigest is the sha256 digest of b.
func clDigest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// clGetBlob GETs blob d from master i and checks that it is whole and has digest d.
func clGetBlob(c *http.Client, l *lab.Lab, i int, repo, d string, hdr map[string]string) error {
	u := clBlobURL(l, i, repo, d)
	r, err := clDo(c, http.MethodGet, u, hdr, nil)
	if err != nil {
		return err
	}
	if r.Status != http.StatusOK {
		return fmt.Errorf("GET %s: status %d: %.300s", u, r.Status, r.Body)
	}
	if got := clDigest(r.Body); got != d {
		return fmt.Errorf("GET %s: body of %d bytes has digest %s", u, len(r.Body), got)
	}
	return nil
}

const clManifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// clPullHTTP pulls an image through master i as a client would: the manifest by tag,
// then the config and every layer. It returns every blob digest of the image.
func clPullHTTP(t testing.TB, c *http.Client, l *lab.Lab, i int, repo, tag string, img lab.SeedResult, hdr map[string]string) []string {
	t.Helper()
	h := map[string]string{"Accept": clManifestAccept}
	for k, v := range hdr {
		h[k] = v
	}
	u := clMasterURL(l, i) + "/v2/" + clLocalName(repo) + "/manifests/" + tag
	r := clMust(t, c, http.MethodGet, u, h, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", u, r.Status, r.Body)
	}
	if got := clDigest(r.Body); got != img.Digest {
		t.Fatalf("GET %s: manifest digest %s, want %s", u, got, img.Digest)
	}
	var m struct {
		Config struct {
			Digest string `json:"digest"`
		} `json:"config"`
	}
	if err := json.Unmarshal(r.Body, &m); err != nil || m.Config.Digest == "" {
		t.Fatalf("GET %s: not an image manifest (%v): %s", u, err, r.Body)
	}
	blobs := append([]string{m.Config.Digest}, img.Layers...)
	for _, d := range blobs {
		if err := clGetBlob(c, l, i, repo, d, hdr); err != nil {
			t.Fatal(err)
		}
	}
	return blobs
}

// clUpstreamGETs lists the upstream's blob GETs by digest.
func clUpstreamGETs(t testing.TB, l *lab.Lab) map[string][]lab.AccessEntry {
	t.Helper()
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]lab.AccessEntry{}
	for _, e := range lab.BlobGETs(entries) {
		out[e.Digest()] = append(out[e.Digest()], e)
	}
	return out
}

// clUpstreamCount is the number of requests in the upstream's access log.
func clUpstreamCount(t testing.TB, l *lab.Lab) int {
	t.Helper()
	entries, err := l.UpstreamLog()
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// clPeerPath is the peer blob endpoint.
const clPeerPath = "/hopless/v1/peer/blob"

// clPeerRequests counts, per master, the requests to the peer blob endpoint in its
// access log.
func clPeerRequests(t testing.TB, l *lab.Lab) map[string]int {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, r := range reqs {
		if r.Path == clPeerPath {
			n[r.Master]++
		}
	}
	return n
}

// clServedBlob reports whether master's access log shows a 200 GET of blob d.
func clServedBlob(t testing.TB, l *lab.Lab, master, d string) bool {
	t.Helper()
	reqs, err := l.MasterRequests()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if r.Master == master && r.IsBlobGET() && strings.HasSuffix(r.Path, "/blobs/"+d) && r.Status == http.StatusOK {
			return true
		}
	}
	return false
}

// clOwner is the master that owns digest d when every master is healthy: the
// weighted rendezvous hashing that registryd/peers documents, over the masters' URLs
// with weight 1. The tests check its answer against the masters' logs.
func clOwner(l *lab.Lab, d string) string {
	best, bestScore := "", math.Inf(-1)
	for i := range l.Masters {
		u := clMasterURL(l, i+1)
		sum := sha256.Sum256([]byte(u + "\x00" + d))
		h := (float64(binary.BigEndian.Uint64(sum[:8])>>11) + 0.5) / (1 << 53)
		if sc := -1 / math.Log(h); sc > bestScore {
			best, bestScore = l.Masters[i].Name, sc
		}
	}
	return best
}

// clStoreBlobs lists the blob files under master's storage root by digest, with their
// sizes.
func clStoreBlobs(t testing.TB, l *lab.Lab, master string) map[string]int64 {
	t.Helper()
	root := filepath.Join(l.MasterData(master), "hopless", "blobs")
	out := map[string]int64{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if e.Type().IsRegular() {
			fi, err := e.Info()
			if err != nil {
				if os.IsNotExist(err) { // evicted while we walked
					return nil
				}
				return err
			}
			rel, _ := filepath.Rel(root, p)
			parts := strings.Split(rel, string(filepath.Separator))
			out[parts[0]+":"+parts[len(parts)-1]] = fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return out
}

func clTotal(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// clMetric sums every series of the named metric on master i's metrics listener.
func clMetric(t testing.TB, l *lab.Lab, i int, name string) float64 {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + lab.MasterMetricsAddr(l.Slot, i) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// clErrorCodes returns the codes of a registry error body.
func clErrorCodes(body []byte) []string {
	var e struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &e) != nil {
		return nil
	}
	var out []string
	for _, x := range e.Errors {
		out = append(out, x.Code)
	}
	return out
}

// clHasCode reports whether a registry error body carries code.
func clHasCode(body []byte, code string) bool {
	for _, c := range clErrorCodes(body) {
		if c == code {
			return true
		}
	}
	return false
}

// clSecret reads a one-line secret file.
func clSecret(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// clWalk lists every path under dir.
func clWalk(t testing.TB, dir string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
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

// clPoll calls cond until it returns "" or the deadline passes, and returns the last
// reason it gave. It bounds waits for background work; nothing asserts on time.
func clPoll(d time.Duration, cond func() string) string {
	deadline := time.Now().Add(d)
	for {
		why := cond()
		if why == "" || time.Now().After(deadline) {
			return why
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// clSeedUntil seeds small images into repo until pick has chosen want layer digests,
// and returns them with the image each came from.
func clSeedUntil(t *testing.T, l *lab.Lab, repo string, want int, pick func(d string) bool) ([]string, map[string]lab.SeedResult) {
	t.Helper()
	var got []string
	from := map[string]lab.SeedResult{}
	for n := 1; len(got) < want; n++ {
		if n > 20 {
			t.Fatalf("seeded 20 images and found only %d of %d wanted blobs", len(got), want)
		}
		img := seed(t, l, repo, "s"+strconv.Itoa(n), 4, 64<<10)
		for _, d := range img.Layers {
			if len(got) < want && pick(d) {
				got = append(got, d)
				from[d] = img
			}
		}
	}
	return got, from
}

// clWaitPeersUp waits until no master's log leaves a peer marked down: registryd logs
// "peer down" and "peer ejected ..." when it stops asking a peer and "peer up" when it
// asks it again. Ownership, and so the peer-fill counts, assume that every master
// sees every other as healthy.
func clWaitPeersUp(t testing.TB, l *lab.Lab) {
	t.Helper()
	why := clPoll(30*time.Second, func() string {
		for _, m := range l.Masters {
			f, err := os.Open(m.Log)
			if err != nil {
				return err.Error()
			}
			down := map[string]bool{}
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				var e struct {
					Msg  string `json:"msg"`
					Peer string `json:"peer"`
				}
				if json.Unmarshal(sc.Bytes(), &e) != nil || e.Peer == "" {
					continue
				}
				switch {
				case e.Msg == "peer up":
					down[e.Peer] = false
				case e.Msg == "peer down" || strings.HasPrefix(e.Msg, "peer ejected"):
					down[e.Peer] = true
				}
			}
			f.Close()
			for p, d := range down {
				if d {
					return fmt.Sprintf("%s sees peer %s down", m.Name, p)
				}
			}
		}
		return ""
	})
	if why != "" {
		t.Fatal(why)
	}
}
