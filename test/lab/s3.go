//lint:file-ignore SA1019 aws-sdk-go v1 is the SDK of distribution's s3 driver, which the masters run; the lab adds no second one.

package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"

	"github.com/hopless/hopless/conf"
)

// Storage engines of the masters and the stock proxies (Options.Storage).
const (
	// StorageFilesystem keeps each master's cache in its own directory.
	StorageFilesystem = ""
	// StorageS3 puts every master's cache in one bucket of a SeaweedFS server that
	// the lab starts as its process "s3", and every stock proxy's in the same
	// bucket under a root of its own (ProxyS3Root).
	StorageS3 = "s3"
)

const (
	// S3Name is the lab process of the S3 server.
	S3Name = "s3"
	// S3Bucket is the bucket that the masters share.
	S3Bucket = "hopless"
	s3Region = "us-east-1"
	s3Port   = 8333
	// weedGRPCBase is the first of the weed servers' gRPC ports, 4 per slot.
	weedGRPCBase = 20000
	// weed serves S3 about 10 s after its start, longer on a busy machine.
	s3ReadyTimeout = 60 * time.Second
	// weed ignores SIGTERM for longer than the other processes' grace; its data is
	// the lab's alone, so it is killed soon after instead.
	s3StopGrace = 2 * time.Second
)

// weedPorts are the ports of the one weed server in slot: S3's, and master, volume
// and filer, each with its gRPC port, which weed would otherwise put at port+10000.
// Every slot has its own address, so the HTTP ports need not differ between slots.
func weedPorts(slot int) map[string]int {
	// weed puts each gRPC service on a unix socket too, named by its port alone
	// (/tmp/seaweedfs-<service>-grpc-<port>.sock): labs in different slots need
	// different gRPC ports, or the second one's services talk to the first's.
	grpc := weedGRPCBase + 4*slot
	return map[string]int{
		"master.port": 9333, "master.port.grpc": grpc,
		"volume.port": 8080, "volume.port.grpc": grpc + 1,
		"filer.port": 8888, "filer.port.grpc": grpc + 2,
		"s3.port": s3Port, "s3.port.grpc": grpc + 3,
	}
}

// S3IP is the S3 server's address in slot.
func S3IP(slot int) string { return fmt.Sprintf("127.%d.4.1", slot) }

// S3Endpoint is the S3 server's URL in slot, with TLS from the lab's CA.
func S3Endpoint(slot int) string { return fmt.Sprintf("https://%s:%d", S3IP(slot), s3Port) }

func (l *Lab) s3AccessKeyFile() string { return filepath.Join(l.Dir, "secrets", "s3.access") }
func (l *Lab) s3SecretKeyFile() string { return filepath.Join(l.Dir, "secrets", "s3.secret") }

// s3Addrs are the addresses the S3 server listens on.
func s3Addrs(slot int) []string {
	var out []string
	for _, p := range weedPorts(slot) {
		out = append(out, fmt.Sprintf("%s:%d", S3IP(slot), p))
	}
	return out
}

// startS3 writes the S3 credentials (mode 0600), starts weed server and, as its
// readiness check, creates the bucket.
func (l *Lab) startS3(ctx context.Context, ca *CA) error {
	access, secret := make([]byte, 10), make([]byte, 20)
	for _, b := range [][]byte{access, secret} {
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("generating the S3 keys: %w", err)
		}
	}
	ak, sk := hex.EncodeToString(access), hex.EncodeToString(secret)
	if err := writeFile(l.s3AccessKeyFile(), []byte(ak+"\n"), 0o600); err != nil {
		return err
	}
	if err := writeFile(l.s3SecretKeyFile(), []byte(sk+"\n"), 0o600); err != nil {
		return err
	}
	type cred struct {
		AccessKey string `json:"accessKey"`
		SecretKey string `json:"secretKey"`
	}
	type identity struct {
		Name        string   `json:"name"`
		Credentials []cred   `json:"credentials"`
		Actions     []string `json:"actions"`
	}
	cfg, err := json.MarshalIndent(map[string][]identity{"identities": {{
		Name: "hopless", Credentials: []cred{{ak, sk}}, Actions: []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the S3 config: %w", err)
	}
	d := filepath.Join(l.Dir, S3Name)
	cfgPath := filepath.Join(d, "s3.json")
	if err := writeFile(cfgPath, cfg, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(d, "data"), 0o700); err != nil {
		return fmt.Errorf("creating the S3 data dir: %w", err)
	}
	if err := ca.Issue(d, net.ParseIP(S3IP(l.Slot))); err != nil {
		return err
	}
	sockets, err := l.s3SocketDir()
	if err != nil {
		return err
	}
	ip := S3IP(l.Slot)
	args := []string{filepath.Join(l.ToolsDir, "weed"), "server", "-ip=" + ip, "-ip.bind=" + ip,
		"-dir=" + filepath.Join(d, "data"), "-s3", "-s3.config=" + cfgPath,
		"-s3.cert.file=" + filepath.Join(d, "cert.pem"), "-s3.key.file=" + filepath.Join(d, "key.pem"),
		"-master.volumeSizeLimitMB=64", "-volume.max=100",
		// weed's Iceberg and Lance catalogs are not needed (and Lance's default port
		// is the masters' metrics port).
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		// weed's local sockets default to /tmp/seaweedfs-*-<port>.sock, which labs
		// in different slots would share.
		"-filer.localSocket=" + sockets + "/filer.sock", "-s3.localSocket=" + sockets + "/s3.sock"}
	for flag, port := range weedPorts(l.Slot) {
		args = append(args, "-"+flag+"="+strconv.Itoa(port))
	}
	p, err := start(S3Name, args, filepath.Join(d, "log"), l.Dir)
	if err != nil {
		return err
	}
	if err := l.run(ctx, p, func(context.Context) error { return nil }); err != nil {
		return err
	}
	return waitReady(ctx, p, s3ReadyTimeout, l.s3Ready())
}

// s3SocketDir is where weed's local sockets go: DIR/s3, or, when that is too
// long for a unix socket path, the lab's short socket dir.
func (l *Lab) s3SocketDir() (string, error) {
	d := filepath.Join(l.Dir, S3Name)
	if len(d)+len("/filer.sock") <= maxSocketPath {
		return d, nil
	}
	d = l.shortSocketDir()
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("creating socket dir: %w", err)
	}
	return d, nil
}

// s3Ready creates the bucket; an S3 server that has it already is ready too.
func (l *Lab) s3Ready() func(context.Context) error {
	return func(ctx context.Context) error {
		c, err := l.S3Client()
		if err != nil {
			return err
		}
		_, err = c.CreateBucketWithContext(ctx, &s3.CreateBucketInput{Bucket: aws.String(S3Bucket)})
		var ae awserr.Error
		if errors.As(err, &ae) && (ae.Code() == s3.ErrCodeBucketAlreadyOwnedByYou || ae.Code() == s3.ErrCodeBucketAlreadyExists) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("creating bucket %s: %w", S3Bucket, err)
		}
		return nil
	}
}

// S3Client is a client of the lab's S3 server with the masters' keys.
func (l *Lab) S3Client() (*s3.S3, error) {
	ak, err := conf.ReadToken(l.s3AccessKeyFile())
	if err != nil {
		return nil, fmt.Errorf("reading the S3 access key: %w", err)
	}
	sk, err := conf.ReadToken(l.s3SecretKeyFile())
	if err != nil {
		return nil, fmt.Errorf("reading the S3 secret key: %w", err)
	}
	ca, err := os.ReadFile(l.CA)
	if err != nil {
		return nil, fmt.Errorf("reading lab CA: %w", err)
	}
	// CustomCABundle, not the transport's RootCAs: the SDK would replace those with
	// the bundle named by AWS_CA_BUNDLE, if the environment has one.
	sess, err := session.NewSessionWithOptions(session.Options{CustomCABundle: bytes.NewReader(ca), Config: *aws.NewConfig().
		WithEndpoint(S3Endpoint(l.Slot)).WithRegion(s3Region).WithS3ForcePathStyle(true).
		WithCredentials(credentials.NewStaticCredentials(ak, sk, "")).
		WithHTTPClient(&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}).WithMaxRetries(0)})
	if err != nil {
		return nil, fmt.Errorf("creating an S3 session: %w", err)
	}
	return s3.New(sess), nil
}

// S3Keys lists the keys of every object in the masters' bucket.
func (l *Lab) S3Keys(ctx context.Context) ([]string, error) {
	c, err := l.S3Client()
	if err != nil {
		return nil, err
	}
	var keys []string
	err = c.ListObjectsV2PagesWithContext(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(S3Bucket)}, func(out *s3.ListObjectsV2Output, _ bool) bool {
		for _, o := range out.Contents {
			keys = append(keys, aws.StringValue(o.Key))
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("listing bucket %s: %w", S3Bucket, err)
	}
	return keys, nil
}

// s3StorageKeys are a master's [storage] keys on the shared bucket.
func s3StorageKeys() string {
	return `driver = "s3"
spool = "spool"
# Every master shares the one bucket (storage.shared is on for s3): each keeps its
# bookkeeping under /hopless/masters/<master_id>/ and one of them evicts.
`
}

// s3Parameters is a master's [storage.parameters] table on the shared bucket.
func (l *Lab) s3Parameters() string {
	return fmt.Sprintf(`[storage.parameters]
region = %q
regionendpoint = %q
bucket = %q
forcepathstyle = true
accesskey_file = %q
secretkey_file = %q
`, s3Region, S3Endpoint(l.Slot), S3Bucket, l.s3AccessKeyFile(), l.s3SecretKeyFile())
}

// proxyS3Args are the hopless-lab proxy flags that put stock proxy name's cache in
// the masters' bucket, under a root of its own.
func (l *Lab) proxyS3Args(name string) []string {
	return []string{"--s3-endpoint", S3Endpoint(l.Slot), "--s3-region", s3Region, "--s3-bucket", S3Bucket,
		"--s3-access-key-file", l.s3AccessKeyFile(), "--s3-secret-key-file", l.s3SecretKeyFile(),
		"--s3-root", ProxyS3Root(name), "--s3-force-path-style"}
}

// ProxyS3Root is the prefix of stock proxy name's keys in the bucket of a lab on s3.
func ProxyS3Root(name string) string { return "/" + name }

// stopGrace is how long Stop and Down wait for the named process after SIGTERM.
func stopGraceFor(name string) time.Duration {
	if name == S3Name {
		return s3StopGrace
	}
	return stopGrace
}

// S3Objects lists the objects in the masters' bucket, key to size.
func (l *Lab) S3Objects(ctx context.Context) (map[string]int64, error) {
	c, err := l.S3Client()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	err = c.ListObjectsV2PagesWithContext(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(S3Bucket)}, func(page *s3.ListObjectsV2Output, _ bool) bool {
		for _, o := range page.Contents {
			out[aws.StringValue(o.Key)] = aws.Int64Value(o.Size)
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("listing bucket %s: %w", S3Bucket, err)
	}
	return out, nil
}

// S3Get reads an object of the masters' bucket.
func (l *Lab) S3Get(ctx context.Context, key string) ([]byte, error) {
	c, err := l.S3Client()
	if err != nil {
		return nil, err
	}
	out, err := c.GetObjectWithContext(ctx, &s3.GetObjectInput{Bucket: aws.String(S3Bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("getting %s from bucket %s: %w", key, S3Bucket, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s from bucket %s: %w", key, S3Bucket, err)
	}
	return b, nil
}

// S3Put writes an object of the masters' bucket behind their backs.
func (l *Lab) S3Put(ctx context.Context, key string, data []byte) error {
	c, err := l.S3Client()
	if err != nil {
		return err
	}
	if _, err := c.PutObjectWithContext(ctx, &s3.PutObjectInput{Bucket: aws.String(S3Bucket), Key: aws.String(key), Body: bytes.NewReader(data)}); err != nil {
		return fmt.Errorf("putting %s in bucket %s: %w", key, S3Bucket, err)
	}
	return nil
}

// S3Uploads counts the multipart uploads in progress in the masters' bucket.
func (l *Lab) S3Uploads(ctx context.Context) (int, error) {
	c, err := l.S3Client()
	if err != nil {
		return 0, err
	}
	out, err := c.ListMultipartUploadsWithContext(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(S3Bucket)})
	if err != nil {
		return 0, fmt.Errorf("listing the multipart uploads of bucket %s: %w", S3Bucket, err)
	}
	return len(out.Uploads), nil
}

// S3Delete removes an object of the masters' bucket behind their backs.
func (l *Lab) S3Delete(ctx context.Context, key string) error {
	c, err := l.S3Client()
	if err != nil {
		return err
	}
	if _, err := c.DeleteObjectWithContext(ctx, &s3.DeleteObjectInput{Bucket: aws.String(S3Bucket), Key: aws.String(key)}); err != nil {
		return fmt.Errorf("deleting %s from bucket %s: %w", key, S3Bucket, err)
	}
	return nil
}
