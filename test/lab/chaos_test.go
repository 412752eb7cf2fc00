package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// procState is the state letter of pid in /proc/<pid>/stat: R, S, T (stopped)...
func procState(t *testing.T, pid int) byte {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		t.Fatalf("odd /proc/%d/stat: %q", pid, b)
	}
	return b[i+2]
}

// sleeper starts `sleep 600` as a lab process that the test stops at the end.
func sleeper(t *testing.T) (*Lab, *Proc) {
	t.Helper()
	dir := t.TempDir()
	p, err := start("sleeper", []string{"sleep", "600"}, filepath.Join(dir, "log"), "600")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(time.Second); err != nil {
			t.Error(err)
		}
	})
	return &Lab{Dir: dir, Procs: []*Proc{p}}, p
}

func TestFlap(t *testing.T) {
	t.Parallel()
	l, p := sleeper(t)
	stop := l.Flap("sleeper", 100*time.Millisecond, 100*time.Millisecond)
	seen := map[byte]int{}
	for range 60 {
		seen[procState(t, p.PID)]++
		time.Sleep(10 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if seen['T'] == 0 || seen['S'] == 0 {
		t.Errorf("states seen while flapping: %q; want both stopped (T) and sleeping (S)", fmt.Sprint(seen))
	}
	for range 5 {
		if s := procState(t, p.PID); s == 'T' {
			t.Fatalf("the process is stopped (%c) after stop", s)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}

	// Stopped while frozen: stop thaws it.
	stop = l.Flap("sleeper", time.Hour, time.Hour)
	deadline := time.Now().Add(5 * time.Second)
	for procState(t, p.PID) != 'T' {
		if time.Now().After(deadline) {
			t.Fatal("Flap did not freeze the process")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if s := procState(t, p.PID); s == 'T' {
		t.Errorf("the process is stopped after stop")
	}

	// A process that dies makes the loop end with an error that stop returns.
	stop = l.Flap("sleeper", 20*time.Millisecond, 20*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	if err := p.Stop(time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := stop(); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("stop after the process died: %v, want an error saying it is not running", err)
	}

	for _, tc := range []struct {
		name     string
		stop     time.Duration
		run      time.Duration
		wantText string
	}{
		{"nosuch", time.Second, time.Second, `no process "nosuch"`},
		{"sleeper", 0, time.Second, "must be positive"},
	} {
		if err := l.Flap(tc.name, tc.stop, tc.run)(); err == nil || !strings.Contains(err.Error(), tc.wantText) {
			t.Errorf("Flap(%q, %s, %s): %v, want an error containing %q", tc.name, tc.stop, tc.run, err, tc.wantText)
		}
	}
}

// TestNodeConfig renders an inprocess node's config.toml with extra lines and
// checks where they land.
func TestNodeConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := &Lab{
		Dir: dir, Mode: ModeInprocess, CA: filepath.Join(dir, "ca", "ca.pem"), ImageHost: ImageHost(7), Upstream: UpstreamAddr(7), Slot: 7,
		Masters:        []Master{{Name: "master-1", Addr: MasterAddr(7, 1)}},
		CRIImagesExtra: "discard_unpacked_layers = true",
		HoplessExtra:   "cri_local_pull = 'warn'",
	}
	n := Node{Name: "node-1", Dir: filepath.Join(dir, "node-1"), Sock: filepath.Join(dir, "node-1", "c.sock"), Crictl: filepath.Join(dir, "node-1", "crictl.yaml")}
	if err := l.writeNodeConfig(n, 1); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Plugins map[string]map[string]any `toml:"plugins"`
	}
	if _, err := toml.DecodeFile(filepath.Join(n.Dir, "config.toml"), &cfg); err != nil {
		t.Fatal(err)
	}
	if v := cfg.Plugins["io.containerd.cri.v1.images"]["discard_unpacked_layers"]; v != true {
		t.Errorf("cri images discard_unpacked_layers = %v, want true", v)
	}
	h := cfg.Plugins[HoplessSection]
	if h["cri_local_pull"] != "warn" {
		t.Errorf("[plugins.%q] cri_local_pull = %v, want warn: %v", HoplessSection, h["cri_local_pull"], h)
	}
	regs, _ := h["registry"].([]map[string]any)
	if len(regs) != 1 || regs[0]["host"] != l.ImageHost {
		t.Errorf("[plugins.%q] registry = %v, want one for %s", HoplessSection, h["registry"], l.ImageHost)
	}

	l.HoplessExtra = "cri_local_pull = "
	if err := l.writeNodeConfig(n, 1); err == nil || !strings.Contains(err.Error(), "not valid TOML") {
		t.Errorf("a broken extra line: %v, want a TOML error", err)
	}
}

// binDir is the module's bin/ and .tools/bin/, if make has built them.
func binDirs(t *testing.T) (bin, tools string) {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, tools = filepath.Join(root, "bin"), filepath.Join(root, ".tools", "bin")
	for _, f := range []string{filepath.Join(bin, "registryd"), filepath.Join(bin, "hopless-lab")} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("%s is not built (make build): %v", f, err)
		}
	}
	return bin, tools
}

// Slots of the lab tests that start real masters; the e2e tests use 0..59.
const (
	slotLabMasters = 250
)

// TestLabMasters starts a lab of two masters and no node (so no root is
// needed) and checks CorruptStoredBlob and RotateCA on them.
func TestLabMasters(t *testing.T) {
	t.Parallel()
	bin, tools := binDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Masters: 2, Mode: ModeInprocess, Slot: slotLabMasters, BinDir: bin, ToolsDir: tools})
	if err != nil {
		if _, serr := os.Stat(filepath.Join(tools, "crictl")); serr != nil {
			t.Skipf("tools are not built: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	img, err := l.Seed(ctx, UpstreamPath+"/chaos", "v1", 1, 256<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	layer := img.Layers[0]
	pool, err := LoadPool(l.CA)
	if err != nil {
		t.Fatal(err)
	}
	get := func(pool *x509.CertPool, master int, path string) ([]byte, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+l.Masters[master-1].Addr+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return b, err
	}
	blob := "/v2/" + LocalPrefix + "/chaos/blobs/" + layer

	t.Run("CorruptStoredBlob", func(t *testing.T) {
		body, err := get(pool, 1, blob)
		if err != nil || sha256Digest(body) != layer {
			t.Fatalf("warming %s on master-1: %d bytes, %v", layer, len(body), err)
		}
		path, err := l.StoredBlobPath(1, layer)
		if err != nil {
			t.Fatal(err)
		}
		var before os.FileInfo
		deadline := time.Now().Add(30 * time.Second)
		for before == nil || before.Size() != int64(len(body)) {
			if time.Now().After(deadline) {
				t.Fatalf("master-1 did not store %s at %s", layer, path)
			}
			time.Sleep(50 * time.Millisecond)
			before, _ = os.Stat(path)
		}
		if err := l.CorruptStoredBlob(1, layer); err != nil {
			t.Fatal(err)
		}
		after, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
			t.Errorf("metadata changed: size %d -> %d, mtime %s -> %s, same file %v",
				before.Size(), after.Size(), before.ModTime(), after.ModTime(), os.SameFile(before, after))
		}
		stored, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var diff []int
		for i := range stored {
			if stored[i] != body[i] {
				diff = append(diff, i)
			}
		}
		if len(diff) != 1 || diff[0] != len(body)/2 || stored[diff[0]] != body[diff[0]]^0xff {
			t.Errorf("bytes that differ: %v, want just byte %d, flipped", diff, len(body)/2)
		}
		for _, tc := range []struct {
			master int
			digest string
			want   string
		}{
			{3, layer, "no master 3"},
			{1, "sha256:abc", "not a sha256 digest"},
			{2, "sha256:" + strings.Repeat("0", 64), "does not hold"},
		} {
			if err := l.CorruptStoredBlob(tc.master, tc.digest); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CorruptStoredBlob(%d, %s): %v, want an error containing %q", tc.master, tc.digest, err, tc.want)
			}
		}
	})

	t.Run("RotateCA", func(t *testing.T) {
		oldPool := pool
		pids := map[string]int{}
		for _, m := range l.Masters {
			pids[m.Name] = l.proc(m.Name).PID
		}
		if err := l.RotateCA(ctx); err != nil {
			t.Fatal(err)
		}
		bundle, err := os.ReadFile(l.CA)
		if err != nil {
			t.Fatal(err)
		}
		var certs []*x509.Certificate
		for rest := bundle; ; {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			certs = append(certs, c)
		}
		newPool, err := LoadPool(filepath.Join(filepath.Dir(l.CA), "rotated-1", "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		origPEM, err := os.ReadFile(filepath.Join(filepath.Dir(l.CA), "original.pem"))
		if err != nil {
			t.Fatal(err)
		}
		if len(certs) != 2 || !bytes.HasSuffix(bundle, origPEM) {
			t.Fatalf("the CA file holds %d certificates, want the new CA and then the original", len(certs))
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: newPool}); err != nil {
			t.Errorf("the bundle's first certificate is not the new CA: %v", err)
		}
		for i, m := range l.Masters {
			if l.proc(m.Name).PID == pids[m.Name] {
				t.Errorf("%s was not restarted (pid %d)", m.Name, pids[m.Name])
			}
			if _, err := get(newPool, i+1, "/v2/"); err != nil {
				t.Errorf("%s through the new CA alone: %v", m.Name, err)
			}
			var uerr *tls.CertificateVerificationError
			if _, err := get(oldPool, i+1, "/v2/"); !errors.As(err, &uerr) {
				t.Errorf("%s through the old CA alone: %v, want a certificate verification error", m.Name, err)
			}
		}
		// The upstream keeps its certificate from the original CA, which the
		// bundle still trusts: the masters fill through it.
		bundlePool, err := LoadPool(l.CA)
		if err != nil {
			t.Fatal(err)
		}
		img2, err := l.Seed(ctx, UpstreamPath+"/chaos", "v2", 1, 64<<10, false)
		if err != nil {
			t.Fatal(err)
		}
		body, err := get(bundlePool, 2, "/v2/"+LocalPrefix+"/chaos/blobs/"+img2.Layers[0])
		if err != nil || sha256Digest(body) != img2.Layers[0] {
			t.Errorf("a fill of %s on master-2 after the rotation: %d bytes, %v", img2.Layers[0], len(body), err)
		}
		saved, err := Open(l.Dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range l.Masters {
			if saved.proc(m.Name).PID != l.proc(m.Name).PID {
				t.Errorf("lab.json records pid %d for %s, which runs as %d", saved.proc(m.Name).PID, m.Name, l.proc(m.Name).PID)
			}
		}
	})
}
