package lab

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"512", 512},
		{"512B", 512},
		{"8KiB", 8 << 10},
		{"8K", 8 << 10},
		{"8ki", 8 << 10},
		{"8MiB", 8 << 20},
		{"256M", 256 << 20},
		{"256mib", 256 << 20},
		{"1GiB", 1 << 30},
		{"2G", 2 << 30},
		{"1TiB", 1 << 40},
		{"8KB", 8000},
		{"3MB", 3_000_000},
		{"1GB", 1_000_000_000},
		{" 8 MiB ", 8 << 20},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "want a whole number"},
		{"MiB", "want a whole number"},
		{"-1", "want a whole number"},
		{"1.5GiB", `unknown unit ".5GiB"`},
		{"8XB", `unknown unit "XB"`},
		{"8 M B", `unknown unit "M B"`},
		{"99999999999999999999", "too large"},
		{"9000000TiB", "too large"},
	} {
		_, err := ParseSize(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"`+tc.in+`"`) {
			t.Errorf("ParseSize(%q) error = %v, want one naming the input and containing %q", tc.in, err, tc.want)
		}
	}
}

func TestParseImageRef(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, repo, tag string }{
		{"app:v1", "app", "v1"},
		{"lab/app:latest", "lab/app", "latest"},
		{"system/deckhouse/core:v1.2.3-rc_1", "system/deckhouse/core", "v1.2.3-rc_1"},
		{"a.b/c__d/e-f--g:_tag", "a.b/c__d/e-f--g", "_tag"},
		{"app:V1", "app", "V1"},
	} {
		repo, tag, err := ParseImageRef(tc.in)
		if err != nil || repo != tc.repo || tag != tc.tag {
			t.Errorf("ParseImageRef(%q) = %q, %q, %v; want %q, %q", tc.in, repo, tag, err, tc.repo, tc.tag)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "empty"},
		{"app", "missing tag"},
		{"localhost:5000/app", "missing tag"},
		{"app:", "empty tag"},
		{":v1", "empty repository"},
		{"App:v1", "lower case"},
		{"app@sha256:" + strings.Repeat("a", 64), "digests"},
		{"app:v1@sha256:" + strings.Repeat("a", 64), "digests"},
		{"my app:v1", "bad path component"},
		{"lab//app:v1", "bad path component"},
		{"/app:v1", "bad path component"},
		{"app/:v1", "bad path component"},
		{"-app:v1", "bad path component"},
		{"app.:v1", "bad path component"},
		{"a..b:v1", "bad path component"},
		{"app:-v1", "bad tag"},
		{"app:v1!", "bad tag"},
		{"app:" + strings.Repeat("t", 129), "bad tag"},
		{strings.Repeat("a", 256) + ":v1", "at most 255"},
	} {
		_, _, err := ParseImageRef(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseImageRef(%q) error = %v, want one containing %q", tc.in, err, tc.want)
			continue
		}
		if tc.in != "" && !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseImageRef(%q) error = %v, does not name the input", tc.in, err)
		}
	}
}

func TestSeedLayerIsTar(t *testing.T) {
	t.Parallel()
	for _, size := range []int64{0, 1, 511, 512, 513, 1 << 20} {
		key := sha256.Sum256([]byte{byte(size), byte(size >> 8), byte(size >> 16)})
		l, err := newRandomLayer(t.Context(), key, size)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := l.Size(); n != int64(len(blob)) || n%512 != 0 {
			t.Errorf("size %d: Size() = %d, blob is %d bytes, want equal and a multiple of 512", size, n, len(blob))
		}
		sum := sha256.Sum256(blob)
		if d, _ := l.Digest(); d.Hex != hex.EncodeToString(sum[:]) {
			t.Errorf("size %d: Digest() = %s, content hashes to %x", size, d, sum)
		}
		if d, _ := l.DiffID(); d != l.digest {
			t.Errorf("size %d: DiffID %s differs from digest %s", size, d, l.digest)
		}

		tr := tar.NewReader(bytes.NewReader(blob))
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("size %d: first tar entry: %v", size, err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size != size {
			t.Errorf("size %d: entry %q type %c size %d, want a regular file of %d bytes", size, hdr.Name, hdr.Typeflag, hdr.Size, size)
		}
		data, err := io.ReadAll(tr)
		if err != nil || int64(len(data)) != size {
			t.Errorf("size %d: read %d bytes, %v", size, len(data), err)
		}
		if size >= 64 && bytes.Count(data, []byte{0}) > len(data)/16 {
			t.Errorf("size %d: content does not look random", size)
		}
		if _, err := tr.Next(); !errors.Is(err, io.EOF) {
			t.Errorf("size %d: second tar entry: %v, want io.EOF", size, err)
		}
	}
}

func TestSeedLayersDiffer(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	img1, layers1, err := randomImage(ctx, 1, "amd64", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	img2, layers2, err := randomImage(ctx, 2, "amd64", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, l := range append(layers1, layers2...) {
		if seen[l.digest.String()] {
			t.Errorf("layer digest %s repeats", l.digest)
		}
		seen[l.digest.String()] = true
	}
	d1, err := img1.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := img2.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 == d2 {
		t.Errorf("seeds 1 and 2 give the same manifest %s", d1)
	}
	again, _, err := randomImage(ctx, 1, "amd64", 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := again.Digest(); d != d1 {
		t.Errorf("seed 1 gave %s, then %s", d1, d)
	}
}

func TestSeedBadOptions(t *testing.T) {
	t.Parallel()
	good := SeedOptions{Registry: "127.0.0.1:1", Repo: "lab/app", Tag: "v1", Layers: 1, LayerSize: 1}
	for _, tc := range []struct {
		name string
		edit func(*SeedOptions)
		want string
	}{
		{"no registry", func(o *SeedOptions) { o.Registry = "" }, "no registry"},
		{"bad repo", func(o *SeedOptions) { o.Repo = "Lab/App" }, `"Lab/App"`},
		{"bad tag", func(o *SeedOptions) { o.Tag = "-x" }, `"-x"`},
		{"no layers", func(o *SeedOptions) { o.Layers = 0 }, "layers"},
		{"negative size", func(o *SeedOptions) { o.LayerSize = -1 }, "layer size"},
		{"nothing listening", func(*SeedOptions) {}, "127.0.0.1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := good
			tc.edit(&o)
			_, err := Seed(t.Context(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
