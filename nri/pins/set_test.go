package pins

import (
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

var (
	dA = digest.FromString("a")
	dB = digest.FromString("b")
	dC = digest.FromString("c")
)

// op is one call on a pinSet and whether it should report a change.
type op struct {
	set      *setOp
	remove   string
	replace  map[string]ImageRef
	resolved *ImageRef // Image resolved to Digest
	changed  bool
	evicted  string // set: the container that gave way
	leftOut  int    // replace: the containers left out
}

type setOp struct {
	id  string
	ref ImageRef
}

func set(id, image string, d digest.Digest, changed bool) op {
	return op{set: &setOp{id, ImageRef{image, d}}, changed: changed}
}

func TestPinSet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		maxContainers int
		maxImages     int
		ops           []op
		want          []digest.Digest // the snapshot's digests
		wantImages    []string        // the snapshot's images, in its order; nil: unchecked
		pending       []string
	}{
		{
			name: "a new digest changes, the same container again does not",
			ops:  []op{set("c1", "a:1", dA, true), set("c1", "a:1", dA, false)},
			want: []digest.Digest{dA},
		},
		{
			name: "a digest shared by two containers is unpinned with the last",
			ops: []op{
				set("c1", "a:1", dA, true), set("c2", "a:2", dA, false),
				{remove: "c1"}, {remove: "c2", changed: true}, {remove: "c3"},
			},
		},
		{
			name:       "the image of the most recently added container names a digest",
			ops:        []op{set("c1", "a:1", dA, true), set("c2", "a:2", dA, false), set("c3", "b:1", dB, true)},
			want:       []digest.Digest{dA, dB},
			wantImages: imagesSorted(map[digest.Digest]string{dA: "a:2", dB: "b:1"}),
		},
		{
			name: "a container that changes its digest",
			ops:  []op{set("c1", "a:1", dA, true), set("c1", "a:1", dB, true)},
			want: []digest.Digest{dB},
		},
		{
			name: "a pending container is pinned once resolved",
			ops: []op{
				set("c1", "a:1", "", false), set("c2", "a:1", "", false),
				{resolved: &ImageRef{"a:1", dA}, changed: true},
				{resolved: &ImageRef{"a:1", dB}},
			},
			want: []digest.Digest{dA},
		},
		{
			name: "a resolved container reported again without a digest keeps it",
			ops: []op{
				set("c1", "a:1", "", false), {resolved: &ImageRef{"a:1", dA}, changed: true},
				set("c1", "a:1", "", false),
			},
			want: []digest.Digest{dA},
		},
		{
			name:    "removing the last pending container forgets the image",
			ops:     []op{set("c1", "a:1", "", false), set("c2", "b:1", "", false), {remove: "c1"}},
			pending: []string{"b:1"},
		},
		{
			name: "replace with the same containers changes nothing",
			ops: []op{
				set("c1", "a:1", dA, true), set("c2", "b:1", "", false), {resolved: &ImageRef{"b:1", dB}, changed: true},
				{replace: map[string]ImageRef{"c1": {"a:1", dA}, "c2": {"b:1", ""}}},
			},
			want: []digest.Digest{dA, dB},
		},
		{
			name: "replace drops the containers it does not list",
			ops: []op{
				set("c1", "a:1", dA, true), set("c2", "b:1", dB, true),
				{replace: map[string]ImageRef{"c2": {"b:1", dB}, "c3": {"c:1", ""}}, changed: true},
			},
			want:    []digest.Digest{dB},
			pending: []string{"c:1"},
		},
		{
			name:          "a container beyond the bound evicts the least recently added",
			maxContainers: 2,
			ops: []op{
				set("c1", "a:1", dA, true), set("c2", "b:1", dB, true),
				set("c1", "a:1", dA, false), // not an addition: c1 stays the oldest
				{set: &setOp{"c3", ImageRef{"c:1", dC}}, changed: true, evicted: "c1"},
			},
			want: []digest.Digest{dB, dC},
		},
		{
			name:          "a pending container evicted",
			maxContainers: 1,
			ops:           []op{set("c1", "a:1", "", false), {set: &setOp{"c2", ImageRef{"b:1", dB}}, changed: true, evicted: "c1"}},
			want:          []digest.Digest{dB},
		},
		{
			name:          "replace beyond the bound keeps the last containers by ID",
			maxContainers: 2,
			ops: []op{{replace: map[string]ImageRef{"c1": {"a:1", dA}, "c2": {"b:1", dB}, "c3": {"c:1", dC}},
				changed: true, leftOut: 1}},
			want: []digest.Digest{dB, dC},
		},
		{
			name:      "beyond maxImages, the digests of the most recently added containers",
			maxImages: 2,
			ops: []op{
				set("c1", "a:1", dA, true), set("c2", "b:1", dB, true), set("c3", "c:1", dC, true),
				// Over the bound, any change may change what is sent.
				set("c4", "a:2", dA, true), {remove: "c4", changed: true},
			},
			want: []digest.Digest{dB, dC},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.maxContainers == 0 {
				tt.maxContainers = 100
			}
			if tt.maxImages == 0 {
				tt.maxImages = 100
			}
			s := newPinSet(tt.maxContainers, tt.maxImages)
			for i, o := range tt.ops {
				var changed bool
				switch {
				case o.set != nil:
					var evicted string
					changed, evicted = s.set(o.set.id, o.set.ref)
					if evicted != o.evicted {
						t.Errorf("op %d: set(%s) evicted %q, want %q", i, o.set.id, evicted, o.evicted)
					}
				case o.replace != nil:
					var leftOut int
					changed, leftOut = s.replace(o.replace)
					if leftOut != o.leftOut {
						t.Errorf("op %d: replace left out %d, want %d", i, leftOut, o.leftOut)
					}
				case o.resolved != nil:
					changed = s.resolved(o.resolved.Image, o.resolved.Digest)
				default:
					changed = s.remove(o.remove)
				}
				if changed != o.changed {
					t.Errorf("op %d: changed = %v, want %v", i, changed, o.changed)
				}
			}
			pins, total := s.snapshot()
			want := slices.Sorted(slices.Values(tt.want))
			if got := digestsOf(pins); !slices.Equal(got, want) && len(got)+len(want) > 0 {
				t.Errorf("snapshot %v, want %v", got, want)
			}
			if total != len(s.digests) {
				t.Errorf("total %d, want %d", total, len(s.digests))
			}
			if tt.wantImages != nil {
				var images []string
				for _, p := range pins {
					images = append(images, p.Image)
				}
				if !slices.Equal(images, tt.wantImages) {
					t.Errorf("images %v, want %v", images, tt.wantImages)
				}
			}
			var pending []string
			for image := range s.pending {
				pending = append(pending, image)
			}
			slices.Sort(pending)
			if !slices.Equal(pending, tt.pending) {
				t.Errorf("pending %v, want %v", pending, tt.pending)
			}
			if len(s.containers) != s.order.Len() || len(s.containers) > tt.maxContainers {
				t.Errorf("%d containers, %d in order, bound %d", len(s.containers), s.order.Len(), tt.maxContainers)
			}
		})
	}
}

// imagesSorted is the images of m in the order of their digests.
func imagesSorted(m map[digest.Digest]string) []string {
	ds := make([]digest.Digest, 0, len(m))
	for d := range m {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	images := make([]string, len(ds))
	for i, d := range ds {
		images[i] = m[d]
	}
	return images
}

func TestLogName(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"registry.example:5001/a/b:v1", "registry.example:5001/a/b:v1"},
		{`a"b\c<d>&e f` + "\n", "a_b_c_d__e_f_"},
		{"é", "__"},
		{strings.Repeat("x", 300), strings.Repeat("x", maxImageName)},
	}
	for _, tt := range tests {
		if got := logName(tt.in); got != tt.want {
			t.Errorf("logName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
