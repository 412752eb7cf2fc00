package cri

import (
	"context"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testContext is bounded by the test binary's own deadline: the methods need one,
// and no test should time out before go test does.
func testContext(t *testing.T) context.Context {
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d)
		t.Cleanup(cancel)
		return ctx
	}
	// go test -timeout 0: a deadline that no test run reaches.
	ctx, cancel := context.WithTimeout(ctx, 24*time.Hour)
	t.Cleanup(cancel)
	return ctx
}

// fakeContainerd serves CRI's image service and containerd's introspection and
// images services on a unix socket.
type fakeContainerd struct {
	runtimeapi.UnimplementedImageServiceServer
	introspection.UnimplementedIntrospectionServer
	imagesapi.UnimplementedImagesServer

	// images maps an image reference to its RepoDigests.
	images map[string][]string
	// targets maps a name in namespace k8s.io to its target digest.
	targets map[string]string
	fixture fixture
	// statusCalls counts ImageStatus calls.
	statusCalls atomic.Int32
}

func (f *fakeContainerd) ImageStatus(_ context.Context, r *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	f.statusCalls.Add(1)
	rds, ok := f.images[r.GetImage().GetImage()]
	if !ok {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: dB, RepoDigests: rds}}, nil
}

func (f *fakeContainerd) Get(ctx context.Context, r *imagesapi.GetImageRequest) (*imagesapi.GetImageResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if ns := md.Get(namespaceHeader); len(ns) != 1 || ns[0] != k8sNamespace {
		return nil, status.Errorf(codes.FailedPrecondition, "namespace %v", ns)
	}
	d, ok := f.targets[r.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", r.GetName())
	}
	return &imagesapi.GetImageResponse{Image: &imagesapi.Image{Name: r.GetName(), Target: &types.Descriptor{Digest: d}}}, nil
}

func (f *fakeContainerd) Plugins(context.Context, *introspection.PluginsRequest) (*introspection.PluginsResponse, error) {
	if f.fixture.plugins == nil {
		return nil, status.Error(codes.Unavailable, "introspection is down")
	}
	return f.fixture.plugins, nil
}

func (f *fakeContainerd) Server(context.Context, *emptypb.Empty) (*introspection.ServerResponse, error) {
	return f.fixture.server, nil
}

// serve starts f on a socket in a temporary directory and returns its path.
func (f *fakeContainerd) serve(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(s, f)
	introspection.RegisterIntrospectionServer(s, f)
	imagesapi.RegisterImagesServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return sock
}

func dial(t *testing.T, sock string) *Client {
	t.Helper()
	c, err := Dial(testContext(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestDialFailures(t *testing.T) {
	dir := t.TempDir()
	notGRPC := filepath.Join(dir, "http.sock")
	l, err := net.Listen("unix", notGRPC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	tests := []struct {
		name string
		ctx  context.Context
		sock string
		want string
	}{
		{"no deadline", context.Background(), notGRPC, "no deadline"},
		{"no socket", testContext(t), filepath.Join(dir, "missing.sock"), "no such file"},
		{"not a gRPC server", testContext(t), notGRPC, "connecting to containerd socket " + notGRPC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(tt.ctx, tt.sock)
			if err == nil {
				_ = c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.sock) {
				t.Fatalf("Dial: %v; want the socket and %q", err, tt.want)
			}
		})
	}
}

func TestImageDigest(t *testing.T) {
	const install = "registry.example:5001/system/deckhouse/install"
	f := &fakeContainerd{
		images: map[string][]string{
			install + ":v1": {install + "@" + dA},
			"busybox":       {"docker.io/library/busybox@" + dA, "docker.io/library/busybox@" + dB},
			"nginx":         {"docker.io/library/nginx@" + dA, "docker.io/library/nginx@" + dB},
		},
		targets: map[string]string{"docker.io/library/busybox:latest": dB},
	}
	c := dial(t, f.serve(t))
	tests := []struct {
		name     string
		ctx      context.Context
		ref      string
		want     digest.Digest
		calls    int32
		wantErr  string
		notFound bool
	}{
		{name: "repo digest", ref: install + ":v1", want: dA, calls: 1},
		{name: "digest in the ref", ref: install + "@" + dB, want: dB},
		{name: "digest in the ref needs no deadline", ctx: context.Background(), ref: install + ":v1@" + dB, want: dB},
		{name: "ambiguous, the tag's image record", ref: "busybox", want: dB, calls: 1},
		{name: "ambiguous, no image record", ref: "nginx", calls: 1, wantErr: "more than one repo digest", notFound: true},
		{name: "not pulled", ref: "registry.example:5001/missing:v1", calls: 1, notFound: true},
		{name: "no deadline", ctx: context.Background(), ref: install + ":v1", wantErr: "no deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = testContext(t)
			}
			before := f.statusCalls.Load()
			got, err := c.ImageDigest(ctx, tt.ref)
			if calls := f.statusCalls.Load() - before; calls != tt.calls {
				t.Errorf("%d ImageStatus calls; want %d", calls, tt.calls)
			}
			if tt.wantErr == "" && !tt.notFound {
				if err != nil || got != tt.want {
					t.Fatalf("ImageDigest = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errdefs.IsNotFound(err) != tt.notFound {
				t.Fatalf("ImageDigest = %q, %v; want an error with %q, not found %v", got, err, tt.wantErr, tt.notFound)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	f := &fakeContainerd{fixture: loadFixture(t, "stock-default.json")}
	sock := f.serve(t)
	c := dial(t, sock)
	got, err := c.Check(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := newReport(sock, f.fixture.plugins.GetPlugins(), f.fixture.server.GetDeprecations()); !reflect.DeepEqual(got, want) {
		t.Fatalf("Check = %+v; want %+v", got, want)
	}
	if _, err := c.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "no deadline") {
		t.Fatalf("Check without a deadline: %v", err)
	}

	down := &fakeContainerd{}
	dsock := down.serve(t)
	_, err = dial(t, dsock).Check(testContext(t))
	if err == nil || !strings.Contains(err.Error(), "listing the plugins of containerd socket "+dsock) || !errdefs.IsUnavailable(err) {
		t.Fatalf("Check of a failing introspection service: %v", err)
	}
}
