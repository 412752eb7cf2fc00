package cri

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	introspection "github.com/containerd/containerd/api/services/introspection/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Client asks one containerd over its gRPC socket. Every method needs a context
// with a deadline and fails at once without one, so that no call can hang.
type Client struct {
	socket string
	conn   *grpc.ClientConn
	images runtimeapi.ImageServiceClient
	intro  introspection.IntrospectionClient
	store  imagesapi.ImagesClient
	rt     runtimeapi.RuntimeServiceClient
	ver    versionapi.VersionClient
}

// Dial connects to containerd's socket (a unix socket path) and waits until the
// connection is up, until the first attempt has failed, or until ctx is done,
// whichever comes first. Close the Client when done.
func Dial(ctx context.Context, socket string) (*Client, error) {
	if err := needDeadline(ctx, "dialing containerd socket "+socket); err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex
		lastErr error
	)
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", socket)
		mu.Lock()
		lastErr = err
		mu.Unlock()
		return c, err
	}
	// passthrough with our own dialer: the socket path reaches the dialer as it is,
	// with no URL escaping. containerd does not look at the authority.
	conn, err := grpc.NewClient("passthrough:///containerd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithAuthority("localhost"),
	)
	if err != nil {
		return nil, fmt.Errorf("setting up a gRPC client for containerd socket %s: %w", socket, err)
	}
	conn.Connect()
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return &Client{
				socket: socket,
				conn:   conn,
				images: runtimeapi.NewImageServiceClient(conn),
				intro:  introspection.NewIntrospectionClient(conn),
				store:  imagesapi.NewImagesClient(conn),
				rt:     runtimeapi.NewRuntimeServiceClient(conn),
				ver:    versionapi.NewVersionClient(conn),
			}, nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			_ = conn.Close()
			mu.Lock()
			err := lastErr
			mu.Unlock()
			if err == nil {
				// The socket accepted the connection, but no gRPC server answered.
				err = errors.New("no gRPC server answered")
			}
			return nil, fmt.Errorf("connecting to containerd socket %s: %w", socket, err)
		}
		if !conn.WaitForStateChange(ctx, st) {
			_ = conn.Close()
			return nil, fmt.Errorf("connecting to containerd socket %s (still %s): %w", socket, st, ctx.Err())
		}
	}
}

// RuntimeReady asks CRI for its status and fails unless the runtime is ready.
func (c *Client) RuntimeReady(ctx context.Context) error {
	if err := needDeadline(ctx, "asking CRI for its status"); err != nil {
		return err
	}
	resp, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		return fmt.Errorf("asking CRI on %s for its status: %w", c.socket, err)
	}
	for _, cond := range resp.GetStatus().GetConditions() {
		if cond.GetType() == runtimeapi.RuntimeReady {
			if !cond.GetStatus() {
				return fmt.Errorf("CRI on %s: runtime not ready: %s %s", c.socket, cond.GetReason(), cond.GetMessage())
			}
			return nil
		}
	}
	return fmt.Errorf("CRI on %s reported no %s condition", c.socket, runtimeapi.RuntimeReady)
}

// Version is containerd's version, as it reports it.
func (c *Client) Version(ctx context.Context) (string, error) {
	if err := needDeadline(ctx, "asking containerd for its version"); err != nil {
		return "", err
	}
	resp, err := c.ver.Version(ctx, &emptypb.Empty{})
	if err != nil {
		return "", fmt.Errorf("asking containerd on %s for its version: %w", c.socket, err)
	}
	return resp.GetVersion(), nil
}

// Socket is the path that the Client was dialled with.
func (c *Client) Socket() string { return c.socket }

// Close closes the connection.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("closing the connection to containerd socket %s: %w", c.socket, err)
	}
	return nil
}

// needDeadline fails when ctx has no deadline: a call without one could block for
// as long as containerd does not answer.
func needDeadline(ctx context.Context, what string) error {
	if _, ok := ctx.Deadline(); !ok {
		return fmt.Errorf("%s: the context has no deadline: %w", what, errdefs.ErrInvalidArgument)
	}
	return nil
}
