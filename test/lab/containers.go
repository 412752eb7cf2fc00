package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PauseRepo is the upstream repository of the lab's sandbox image, which nodes that
// run containers (Options.Containers) pull straight from the upstream.
const PauseRepo = "lab/pause"

// SandboxImage is the nodes' sandbox image.
func (l *Lab) SandboxImage() string { return l.Upstream + "/" + PauseRepo + ":v1" }

// runcPath is Debian's runc that make tools unpacks beside the tools.
func runcPath(toolsDir string) string {
	return filepath.Join(toolsDir, "..", "runc", "usr", "sbin", "runc")
}

// checkContainers checks the binaries that running containers needs.
func checkContainers(o *Options) error {
	for _, f := range []string{filepath.Join(o.BinDir, "lab-pause"), filepath.Join(o.ToolsDir, "containerd-shim-runc-v2"), runcPath(o.ToolsDir)} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("lab: %s is missing (run make build tools): %w", f, err)
		}
	}
	if len(o.NodeModes) == 0 && o.Mode == ModeInprocess {
		return fmt.Errorf("lab: running containers needs stock containerd (its shim is beside it), not --mode %s", o.Mode)
	}
	for i, m := range o.NodeModes {
		if m == ModeInprocess {
			return fmt.Errorf("lab: running containers needs stock containerd (its shim is beside it), not node-%d's mode %s", i+1, m)
		}
	}
	return nil
}

// pushPause pushes the sandbox image: one layer holding bin/lab-pause as /pause.
func (l *Lab) pushPause(ctx context.Context) error {
	bin, err := os.ReadFile(filepath.Join(l.BinDir, "lab-pause"))
	if err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	if _, err := tw.Write(bin); err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{Architecture: "amd64", OS: "linux", RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{Entrypoint: []string{"/pause"}}})
	if err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	img, err = mutate.AppendLayers(img, static.NewLayer(b.Bytes(), types.OCIUncompressedLayer))
	if err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	ref, err := name.NewTag(l.SandboxImage(), name.StrictValidation)
	if err != nil {
		return fmt.Errorf("sandbox image: %w", err)
	}
	pool, err := LoadPool(l.CA)
	if err != nil {
		return err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		return fmt.Errorf("sandbox image: push %s: %w", ref, err)
	}
	return nil
}

// RunPod starts a pod sandbox on node (host network: the lab has no CNI) and
// returns its ID and the config file it was started from.
func (l *Lab) RunPod(ctx context.Context, node int, podName string) (id, config string, err error) {
	n := l.Nodes[node-1]
	pod := map[string]any{
		"metadata": map[string]any{"name": podName, "namespace": "default", "uid": podName + "-uid", "attempt": 0},
		"linux":    map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	}
	config = filepath.Join(n.Dir, "pods", podName+".json")
	if err := writeJSON(config, pod); err != nil {
		return "", "", err
	}
	out, err := l.Crictl(ctx, node, "runp", config)
	if err != nil {
		return "", "", err
	}
	return lastLine(out), config, nil
}

// CreateContainer creates (does not start) a container of image in pod on node and
// returns its ID: containerd tells its NRI plugins of it.
func (l *Lab) CreateContainer(ctx context.Context, node int, pod, podConfig, ctrName, image string) (string, error) {
	n := l.Nodes[node-1]
	ctr := map[string]any{
		"metadata": map[string]any{"name": ctrName},
		"image":    map[string]any{"image": image},
		"command":  []string{"/nonexistent"},
		"linux":    map[string]any{},
	}
	config := filepath.Join(n.Dir, "pods", ctrName+".ctr.json")
	if err := writeJSON(config, ctr); err != nil {
		return "", err
	}
	out, err := l.Crictl(ctx, node, "create", "--no-pull", pod, config, podConfig)
	if err != nil {
		return "", err
	}
	return lastLine(out), nil
}

// lastLine is crictl's answer: the last line of its output, after its warnings.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func writeJSON(p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFile(p, b, 0o644)
}

// removePods stops and removes every pod of the nodes that run containers, bounded,
// so that no shim or sandbox outlives the lab. It is best effort: a node whose
// containerd is down has nothing to say.
func (l *Lab) removePods() {
	if !l.Containers {
		return
	}
	for i, n := range l.Nodes {
		if p := l.proc(n.Name); p == nil || !p.Alive() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _ = l.Crictl(ctx, i+1, "rmp", "--all", "--force")
		cancel()
	}
}
