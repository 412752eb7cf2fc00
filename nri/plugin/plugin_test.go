package plugin

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/opencontainers/go-digest"
)

// dgst is a well-formed manifest digest.
var dgst = digest.FromString("manifest").String()

func TestImageOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		c    *api.Container
		want Image
		ok   bool
	}{
		{"Container.Image", &api.Container{Image: &api.Image{Name: "reg:5001/a/b:v1", Digest: dgst}},
			Image{Name: "reg:5001/a/b:v1", Digest: digest.Digest(dgst)}, true},
		{"annotation only", &api.Container{Annotations: map[string]string{ImageNameAnnotation: "reg:5001/a/b:v1"}},
			Image{Name: "reg:5001/a/b:v1"}, true},
		{"Image without a name", &api.Container{Image: &api.Image{Digest: dgst}, Annotations: map[string]string{ImageNameAnnotation: "a:v1"}},
			Image{Name: "a:v1", Digest: digest.Digest(dgst)}, true},
		{"a bad digest is dropped", &api.Container{Image: &api.Image{Name: "a:v1", Digest: "sha256:xyz"}},
			Image{Name: "a:v1"}, true},
		{"nothing", &api.Container{}, Image{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ImageOf(tc.c)
			if got != tc.want || ok != tc.ok {
				t.Errorf("ImageOf = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

type recorder struct {
	mu  sync.Mutex
	set map[string]Image
}

func (r *recorder) Set(id string, img Image) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set[id] = img
}

func (r *recorder) Remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.set, id)
}

func (r *recorder) Replace(m map[string]Image) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set = maps.Clone(m)
}

func TestHandlers(t *testing.T) {
	t.Parallel()
	r := &recorder{set: map[string]Image{}}
	p := New(r, nil, nil)
	ctx := context.Background()
	mask, err := p.Configure(ctx, "", "containerd", "v2.4.2")
	if err != nil {
		t.Fatal(err)
	}
	if !mask.IsSet(api.Event_POST_CREATE_CONTAINER) || !mask.IsSet(api.Event_REMOVE_CONTAINER) || mask.IsSet(api.Event_CREATE_CONTAINER) {
		t.Errorf("events %v, want PostCreateContainer and RemoveContainer only", mask.PrettyString())
	}
	a := &api.Container{Id: "a", Image: &api.Image{Name: "x:v1", Digest: dgst}}
	b := &api.Container{Id: "b", Annotations: map[string]string{ImageNameAnnotation: "y:v2"}}
	if _, err := p.Synchronize(ctx, nil, []*api.Container{a, {Id: "no-image"}}); err != nil {
		t.Fatal(err)
	}
	if err := p.PostCreateContainer(ctx, nil, b); err != nil {
		t.Fatal(err)
	}
	want := map[string]Image{"a": {Name: "x:v1", Digest: digest.Digest(dgst)}, "b": {Name: "y:v2"}}
	if !maps.Equal(r.set, want) {
		t.Fatalf("images %v, want %v", r.set, want)
	}
	if err := p.RemoveContainer(ctx, nil, a); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.set["a"]; ok || len(r.set) != 1 {
		t.Errorf("after RemoveContainer: %v, want only b", r.set)
	}
}

func TestConfigureError(t *testing.T) {
	t.Parallel()
	bad := errors.New("10-hopless.conf: hosts: must be one of auto, manage, off")
	p := New(&recorder{set: map[string]Image{}}, nil, func(string) error { return bad })
	if _, err := p.Configure(context.Background(), "hosts = 'x'", "containerd", "v2.4.2"); err != nil {
		t.Errorf("Configure = %v, want nil: its error would not reach containerd's log", err)
	}
	if _, err := p.Synchronize(context.Background(), nil, nil); !errors.Is(err, bad) {
		t.Errorf("Synchronize = %v, want the configuration's error", err)
	}
}

// TestStubAccepts: the NRI stub refuses a plugin with only Configure, Synchronize
// and Shutdown; ours has event handlers too.
func TestStubAccepts(t *testing.T) {
	t.Parallel()
	p := New(&recorder{set: map[string]Image{}}, nil, nil)
	if _, err := stub.New(p, stub.WithPluginName("hopless"), stub.WithPluginIdx("10"),
		stub.WithSocketPath(filepath.Join(t.TempDir(), "nri.sock"))); err != nil {
		t.Fatalf("stub.New: %v", err)
	}
}
