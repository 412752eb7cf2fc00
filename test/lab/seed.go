package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// SeedOptions configures Seed.
type SeedOptions struct {
	// Registry is the registry's host:port.
	Registry string
	Repo     string
	Tag      string
	// Layers is the number of layers of the linux/amd64 image.
	Layers int
	// LayerSize is the size of the one file in each layer.
	LayerSize int64
	// Index pushes an OCI image index for linux/amd64 and linux/arm64
	// instead of a single linux/amd64 image.
	Index bool
	// RootCAs verifies the registry's certificate; nil means the system pool.
	RootCAs *x509.CertPool
	// Seed makes the content reproducible: the same options give the same
	// digests. 0 means random.
	Seed uint64
}

// SeedResult describes what Seed pushed.
type SeedResult struct {
	// Ref is registry/repo:tag.
	Ref string
	// Digest is the digest of the manifest, or of the index with Index set.
	Digest string
	// Layers are the layer digests of the linux/amd64 image, base first.
	Layers []string
	// Bytes is the total size of those layer blobs.
	Bytes int64
}

// arm64LayerSize caps the one layer of the arm64 image of an index: it is
// there for the platform matcher to skip, not to be pulled.
const arm64LayerSize = 64 << 10

// Seed builds a random image (or index) and pushes it to the registry over
// https. Each layer is an uncompressed OCI tar holding one file of random
// bytes.
func Seed(ctx context.Context, o SeedOptions) (SeedResult, error) {
	if err := o.validate(); err != nil {
		return SeedResult{}, err
	}
	seed := o.Seed
	for seed == 0 {
		seed = rand.Uint64()
	}
	ref, err := name.NewTag(o.Registry+"/"+o.Repo+":"+o.Tag, name.StrictValidation)
	if err != nil {
		return SeedResult{}, fmt.Errorf("seed: image reference: %w", err)
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the lab only talks to this machine
	tr.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12}
	defer tr.CloseIdleConnections()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr)}

	img, layers, err := randomImage(ctx, seed, "amd64", o.Layers, o.LayerSize)
	if err != nil {
		return SeedResult{}, err
	}
	res := SeedResult{Ref: ref.String()}
	for _, l := range layers {
		res.Layers = append(res.Layers, l.digest.String())
		res.Bytes += l.size()
	}

	var digest v1.Hash
	if o.Index {
		arm, _, err := randomImage(ctx, seed, "arm64", 1, min(o.LayerSize, arm64LayerSize))
		if err != nil {
			return SeedResult{}, err
		}
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
			mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
			mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		)
		if err := remote.WriteIndex(ref, idx, opts...); err != nil {
			return SeedResult{}, fmt.Errorf("seed: push index %s: %w", ref, err)
		}
		if digest, err = idx.Digest(); err != nil {
			return SeedResult{}, fmt.Errorf("seed: index digest: %w", err)
		}
	} else {
		if err := remote.Write(ref, img, opts...); err != nil {
			return SeedResult{}, fmt.Errorf("seed: push image %s: %w", ref, err)
		}
		if digest, err = img.Digest(); err != nil {
			return SeedResult{}, fmt.Errorf("seed: manifest digest: %w", err)
		}
	}
	res.Digest = digest.String()
	return res, nil
}

func (o SeedOptions) validate() error {
	if o.Registry == "" {
		return errors.New("seed: no registry address")
	}
	if err := validRepo(o.Repo); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := validTag(o.Tag); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if o.Layers < 1 {
		return fmt.Errorf("seed: layers must be at least 1, got %d", o.Layers)
	}
	if o.LayerSize < 0 {
		return fmt.Errorf("seed: layer size must not be negative, got %d", o.LayerSize)
	}
	return nil
}

// randomImage builds a linux/arch OCI image of n random layers. Its content
// depends only on seed, arch, n and size.
func randomImage(ctx context.Context, seed uint64, arch string, n int, size int64) (v1.Image, []*randomLayer, error) {
	epoch := v1.Time{Time: time.Unix(0, 0).UTC()}
	layers := make([]*randomLayer, 0, n)
	adds := make([]mutate.Addendum, 0, n)
	for i := range n {
		key := sha256.Sum256(fmt.Appendf(nil, "hopless lab layer seed=%d arch=%s index=%d", seed, arch, i))
		l, err := newRandomLayer(ctx, key, size)
		if err != nil {
			return nil, nil, fmt.Errorf("seed: build %s layer %d: %w", arch, i, err)
		}
		layers = append(layers, l)
		adds = append(adds, mutate.Addendum{
			Layer:     l,
			MediaType: types.OCIUncompressedLayer,
			History:   v1.History{Created: epoch, CreatedBy: fmt.Sprintf("hopless lab: %d random bytes", size)},
		})
	}

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	// mutate.Append fills in RootFS.DiffIDs from the layers.
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      epoch,
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Labels: map[string]string{"io.hopless.lab.seed": strconv.FormatUint(seed, 10)},
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("seed: image config: %w", err)
	}
	img, err = mutate.Append(img, adds...)
	if err != nil {
		return nil, nil, fmt.Errorf("seed: append layers: %w", err)
	}
	return img, layers, nil
}

// randomLayer is an uncompressed tar layer holding one regular file of
// pseudo-random bytes. The bytes are generated again on every read, so a
// layer of any size costs no memory; the digest takes one pass to compute.
type randomLayer struct {
	key      [32]byte
	fileSize int64
	header   []byte // tar header block(s) of the file
	trailer  int    // zero bytes after the file: padding plus end of archive
	digest   v1.Hash
}

var _ v1.Layer = (*randomLayer)(nil)

func newRandomLayer(ctx context.Context, key [32]byte, fileSize int64) (*randomLayer, error) {
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	// The name comes from the key so that layers differ even when empty.
	err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     "hopless/" + hex.EncodeToString(key[:8]),
		Mode:     0o644,
		Size:     fileSize,
		ModTime:  time.Unix(0, 0),
	})
	if err != nil {
		return nil, fmt.Errorf("write tar header: %w", err)
	}
	l := &randomLayer{
		key:      key,
		fileSize: fileSize,
		header:   hdr.Bytes(),
		trailer:  int((512-fileSize%512)%512) + 2*512,
	}
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, l.open()}); err != nil {
		return nil, fmt.Errorf("hash layer: %w", err)
	}
	l.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	return l, nil
}

func (l *randomLayer) open() io.ReadCloser {
	return io.NopCloser(io.MultiReader(
		bytes.NewReader(l.header),
		io.LimitReader(rand.NewChaCha8(l.key), l.fileSize),
		bytes.NewReader(make([]byte, l.trailer)),
	))
}

func (l *randomLayer) size() int64 { return int64(len(l.header)) + l.fileSize + int64(l.trailer) }

func (l *randomLayer) Digest() (v1.Hash, error) { return l.digest, nil }

// DiffID is the digest: the layer is not compressed.
func (l *randomLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *randomLayer) Compressed() (io.ReadCloser, error)   { return l.open(), nil }
func (l *randomLayer) Uncompressed() (io.ReadCloser, error) { return l.open(), nil }
func (l *randomLayer) Size() (int64, error)                 { return l.size(), nil }
func (l *randomLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

// ctxReader stops reading once ctx is done, so hashing a large layer can be
// cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// ParseSize parses a byte count such as "512", "8KiB", "256M" or "1GiB".
// K, Ki, KiB, M, Mi, MiB, G, Gi, GiB, T, Ti, TiB are powers of 1024;
// KB, MB, GB, TB are powers of 1000. Units are case-insensitive.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number of bytes with an optional unit, such as 512, 8KiB or 256M", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	unit := strings.TrimSpace(t[i:])
	mult := sizeUnit(strings.ToLower(unit))
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB or TB)", s, unit)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n * mult, nil
}

// sizeUnit returns the multiplier of a lower-case unit, or 0 if unknown.
func sizeUnit(unit string) int64 {
	switch unit {
	case "", "b":
		return 1
	case "k", "ki", "kib":
		return 1 << 10
	case "m", "mi", "mib":
		return 1 << 20
	case "g", "gi", "gib":
		return 1 << 30
	case "t", "ti", "tib":
		return 1 << 40
	case "kb":
		return 1e3
	case "mb":
		return 1e6
	case "gb":
		return 1e9
	case "tb":
		return 1e12
	}
	return 0
}

var (
	repoComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// ParseImageRef splits REPO:TAG as given to the CLI's --image. The repository
// follows the OCI distribution name grammar, without a registry host; a tag
// is required and digests are refused.
func ParseImageRef(s string) (repo, tag string, err error) {
	if s == "" {
		return "", "", errors.New("image reference is empty: want REPO:TAG")
	}
	if strings.Contains(s, "@") {
		return "", "", fmt.Errorf("image reference %q: digests are not supported: want REPO:TAG", s)
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.Contains(s[i+1:], "/") {
		return "", "", fmt.Errorf("image reference %q: missing tag: want REPO:TAG", s)
	}
	repo, tag = s[:i], s[i+1:]
	if err := validRepo(repo); err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", s, err)
	}
	if err := validTag(tag); err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", s, err)
	}
	return repo, tag, nil
}

func validRepo(repo string) error {
	if repo == "" {
		return errors.New("empty repository name")
	}
	if len(repo) > 255 {
		return fmt.Errorf("repository name is %d characters long, at most 255 allowed", len(repo))
	}
	if strings.ToLower(repo) != repo {
		return fmt.Errorf("repository %q must be lower case", repo)
	}
	for c := range strings.SplitSeq(repo, "/") {
		if !repoComponentRE.MatchString(c) {
			return fmt.Errorf("repository %q: bad path component %q: want lower-case letters and digits, separated by '.', '_', '__' or '-'", repo, c)
		}
	}
	return nil
}

func validTag(tag string) error {
	if tag == "" {
		return errors.New("empty tag")
	}
	if !tagRE.MatchString(tag) {
		return fmt.Errorf("bad tag %q: want at most 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
	}
	return nil
}
