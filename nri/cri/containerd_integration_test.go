package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The integration tests run real containerd daemons: the stock build of the version
// that go.mod pins (make tools) and hopless's own (make build).
const (
	stockContainerd = "../../.tools/bin/containerd-stock"
	ourContainerd   = "../../bin/containerd"
)

// integrationTimeout bounds each daemon's start, the test's calls and its stop.
const integrationTimeout = 15 * time.Second

// containerdConfig is a minimal config.toml: its own root, state and sockets, the
// native snapshotter, and NRI on a socket of its own unless disabled.
const containerdConfig = `version = 4
root = '{{dir}}/root'
state = '{{dir}}/state'
imports = []
disabled_plugins = [
  'io.containerd.snapshotter.v1.overlayfs',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs',
  'io.containerd.differ.v1.erofs',
  'io.containerd.mount-handler.v1.erofs',
  'io.containerd.internal.v1.tracing',
  'io.containerd.tracing.processor.v1.otlp',
{{disabled}}]

[plugins.'io.containerd.server.v1.grpc']
  address = '{{dir}}/c.sock'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '{{dir}}/c.sock.ttrpc'
[plugins.'io.containerd.internal.v1.opt']
  path = '{{dir}}/opt'
[plugins.'io.containerd.nri.v1.nri']
  socket_path = '{{dir}}/nri.sock'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'native'
{{images}}
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = 'linux/amd64'
  snapshotter = 'native'
  differ = 'walking'
`

// daemon is one containerd started by a test.
type daemon struct {
	dir, sock string
}

// bootWatch collects containerd's log and closes booted at its "successfully booted"
// line.
type bootWatch struct {
	mu     sync.Mutex
	log    bytes.Buffer
	booted chan struct{}
	seen   bool
}

func (w *bootWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log.Write(p)
	if !w.seen && strings.Contains(w.log.String(), "containerd successfully booted") {
		w.seen = true
		close(w.booted)
	}
	return len(p), nil
}

func (w *bootWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// startContainerd runs bin as root with the minimal config, plus images (TOML lines
// of CRI's images section, where {{dir}} is the daemon's directory) and the plugins
// in disabled; it is stopped by its PID when the test ends.
func startContainerd(t *testing.T, bin, images string, disabled ...string) daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no containerd binary (make tools / make build): %v", err)
	}
	dir := t.TempDir()
	var dis strings.Builder
	for _, d := range disabled {
		fmt.Fprintf(&dis, "  '%s',\n", d)
	}
	cfg := strings.NewReplacer("{{disabled}}", dis.String(), "{{images}}", images).Replace(containerdConfig)
	cfg = strings.ReplaceAll(cfg, "{{dir}}", dir)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	w := &bootWatch{booted: make(chan struct{})}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = w, w
	// A test binary that dies does not leave containerd behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(integrationTimeout):
			t.Errorf("containerd (pid %d) did not stop within %s of SIGTERM; killing it", cmd.Process.Pid, integrationTimeout)
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("containerd %s log:\n%s", bin, w)
		}
	})
	select {
	case <-w.booted:
	case err := <-exited:
		exited <- err
		t.Fatalf("containerd %s exited before it booted: %v\n%s", bin, err, w)
	case <-time.After(integrationTimeout):
		t.Fatalf("containerd %s did not boot within %s", bin, integrationTimeout)
	}
	return daemon{dir: dir, sock: filepath.Join(dir, "c.sock")}
}

func integrationContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), integrationTimeout)
	t.Cleanup(cancel)
	return ctx
}

// dialCheck connects to d, closed when the test ends, and checks it.
func dialCheck(t *testing.T, ctx context.Context, d daemon) (*Client, Report) {
	t.Helper()
	c, err := Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	r, err := c.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %+v", r)
	return c, r
}

func TestIntegrationStockDefault(t *testing.T) {
	d := startContainerd(t, stockContainerd, "")
	ctx := integrationContext(t)
	c, r := dialCheck(t, ctx, d)
	if !r.Images.Loaded() || r.ConfigPath != "/etc/containerd/certs.d:/etc/docker/certs.d" || !r.ConfigPathReported ||
		r.PullMode != PullUnknown || r.NRI != NRIUnknown || r.HoplessBuild {
		t.Fatalf("Check = %+v; want containerd's default config_path, pull mode and NRI unknown, not our build", r)
	}
	ps := r.Problems("/etc/containerd/certs.d")
	if len(ps) != 1 || !strings.Contains(ps[0].Error(), "2 directories") {
		t.Fatalf("Problems = %v; want the list of 2 directories", ps)
	}
	t.Logf("problem: %v", ps[0])
	if _, err := c.ImageDigest(ctx, "busybox"); !errdefs.IsNotFound(err) {
		t.Fatalf("ImageDigest of an image never pulled: %v; want not found", err)
	}

	// The fact that Check is built on: CRI's verbose status carries the runtime's
	// config, not the images plugin's, so config_path is not in it.
	st, err := runtimeapi.NewRuntimeServiceClient(c.conn).Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal([]byte(st.GetInfo()["config"]), &cfg); err != nil {
		t.Fatalf("verbose status config: %v", err)
	}
	if _, ok := cfg["containerdEndpoint"]; !ok {
		t.Fatalf("verbose status config has no containerdEndpoint: %s", st.GetInfo()["config"])
	}
	for _, k := range []string{"registry", "maxConcurrentDownloads", "useLocalImagePull"} {
		if _, ok := cfg[k]; ok {
			t.Errorf("verbose status config has %q now: Check could read the images config from it", k)
		}
	}
}

func TestIntegrationStockLocalPull(t *testing.T) {
	d := startContainerd(t, stockContainerd, "  discard_unpacked_layers = true\n"+
		"  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '{{dir}}/certs.d'",
		"io.containerd.nri.v1.nri")
	ctx := integrationContext(t)
	c, r := dialCheck(t, ctx, d)
	if r.ConfigPath != d.dir+"/certs.d" || r.PullMode != PullLocal || r.NRI != NRIDisabled || r.HoplessBuild {
		t.Fatalf("Check = %+v; want our config_path, local pull, NRI disabled, not our build", r)
	}
	if ps := r.Problems(d.dir + "/certs.d/"); len(ps) != 0 {
		t.Fatalf("Problems = %v; want none", ps)
	}

	const install = "registry.example:5001/system/deckhouse/install"
	manifest := writeImage(t, ctx, d.sock, install+":v1", "docker.io/library/busybox:latest")
	for _, ref := range []string{install + ":v1", "busybox"} {
		got, err := imageDigestOnceListed(ctx, c, ref)
		if err != nil || got != manifest {
			t.Fatalf("ImageDigest(%q) = %q, %v; want %s", ref, got, err, manifest)
		}
	}
}

func TestIntegrationHoplessBuild(t *testing.T) {
	d := startContainerd(t, ourContainerd, "  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = '{{dir}}/certs.d'")
	ctx := integrationContext(t)
	_, r := dialCheck(t, ctx, d)
	if !r.HoplessBuild || r.ConfigPath != d.dir+"/certs.d" {
		t.Fatalf("Check = %+v; want our build with config_path %s/certs.d", r, d.dir)
	}
	if ps := r.Problems(d.dir + "/certs.d"); len(ps) != 0 {
		t.Fatalf("Problems = %v; want none", ps)
	}
}

// writeImage stores a one-platform image with no layers in containerd's k8s.io
// namespace, under each name and under name@digest, as a pull would; it returns the
// manifest digest.
func writeImage(t *testing.T, ctx context.Context, sock string, names ...string) digest.Digest {
	t.Helper()
	cc, err := client.New(sock, client.WithDefaultNamespace(k8sNamespace))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cc.Close() }()
	ctx, done, err := cc.WithLease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = done(context.WithoutCancel(ctx)) }()
	blob := func(mediaType string, v any, opts ...content.Opt) ocispec.Descriptor {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := content.WriteBlob(ctx, cc.ContentStore(), desc.Digest.String(), bytes.NewReader(b), desc, opts...); err != nil {
			t.Fatal(err)
		}
		return desc
	}
	cfg := blob(ocispec.MediaTypeImageConfig, ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
	})
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: []ocispec.Descriptor{}}
	m.SchemaVersion = 2
	// The label keeps the config from the garbage collector once the lease ends, as
	// a pull's labels do.
	target := blob(ocispec.MediaTypeImageManifest, m,
		content.WithLabels(map[string]string{"containerd.io/gc.ref.content.config": cfg.Digest.String()}))
	for _, n := range names {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{n, named.Name() + "@" + target.Digest.String()} {
			if _, err := cc.ImageService().Create(ctx, images.Image{Name: name, Target: target}); err != nil && !errdefs.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
	return target.Digest
}

// imageDigestOnceListed asks ImageDigest until CRI's image store, which follows
// containerd's image events, has the image.
func imageDigestOnceListed(ctx context.Context, c *Client, ref string) (digest.Digest, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := c.ImageDigest(ctx, ref)
		if !errors.Is(err, errdefs.ErrNotFound) {
			return d, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (waited for CRI to list it: %w)", err, ctx.Err())
		case <-tick.C:
		}
	}
}
