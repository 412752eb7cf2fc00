package manifests

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
)

// testDigest is the digest the tests render with.
const testDigest = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"

var testImage = Image{Name: "registry.test/hopless/hopless", Digest: testDigest}

func TestParseImage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ref  string
		want Image
		err  string
	}{
		{ref: "registry.test/hopless/hopless@" + testDigest, want: testImage},
		{ref: "registry.test:5000/hopless:0.1.0", want: Image{Name: "registry.test:5000/hopless", Tag: "0.1.0"}},
		{ref: "registry.test/hopless:0.1.0@" + testDigest, want: Image{Name: "registry.test/hopless", Tag: "0.1.0", Digest: testDigest}},
		{ref: "registry.test/hopless", err: "neither a digest nor a tag"},
		{ref: "registry.test/hopless:latest", err: "latest pins nothing"},
		{ref: "registry.test/hopless@sha256:abc", err: "parsing image reference"},
		{ref: "Registry.test/UPPER:1", err: "parsing image reference"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			got, err := ParseImage(tc.ref)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseImage = %+v, %v; want an error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseImage = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestRenderRefusesUnpinnedImages(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		image Image
		err   string
	}{
		{"no tag or digest", Image{Name: "registry.test/hopless"}, "neither a digest nor a tag"},
		{"latest", Image{Name: "registry.test/hopless", Tag: "latest"}, "latest pins nothing"},
		{"a short digest", Image{Name: "registry.test/hopless", Digest: "sha256:00"}, "not sha256:<64 hex digits>"},
		{"no name", Image{Tag: "0.1.0"}, "no name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(overlayDir("inprocess"), tc.image)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Render = %v, want an error with %q", err, tc.err)
			}
		})
	}
}

func TestJobName(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("n", 60) + ".example.com"
	sum := sha256.Sum256([]byte(long))
	for _, tc := range []struct {
		node, want string
	}{
		{"worker-1", "hopless-install-worker-1"},
		{"worker-1.example.com", "hopless-install-worker-1-example-com"},
		{long, "hopless-install-" + strings.Repeat("n", 38) + "-" + hex.EncodeToString(sum[:])[:8]},
	} {
		got := JobName(tc.node)
		if got != tc.want {
			t.Errorf("JobName(%q) = %q, want %q", tc.node, got, tc.want)
		}
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("JobName(%q) = %q, not a DNS label: %v", tc.node, got, errs)
		}
	}
	if JobName(long) == JobName(long+"x") {
		t.Error("two long node names that share their start got one Job name")
	}
	for _, tc := range []struct {
		node, want string
	}{
		{"worker-1", "hopless-uninstall-worker-1"},
		{"worker-1.example.com", "hopless-uninstall-worker-1-example-com"},
		{long, "hopless-uninstall-" + strings.Repeat("n", 36) + "-" + hex.EncodeToString(sum[:])[:8]},
	} {
		got := UninstallJobName(tc.node)
		if got != tc.want {
			t.Errorf("UninstallJobName(%q) = %q, want %q", tc.node, got, tc.want)
		}
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("UninstallJobName(%q) = %q, not a DNS label: %v", tc.node, got, errs)
		}
	}
}

// TestRenderJob renders the per-node Job of both modes for a sample node and checks
// that it is that node's, in that mode, with the image asked for.
func TestRenderJob(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "nri"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			b, err := RenderJob(jobDir(mode), testImage, "worker-7.example.com")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), NodePlaceholder) {
				t.Fatalf("the rendered Job still has %s:\n%s", NodePlaceholder, b)
			}
			var job batchv1.Job
			if err := yaml.UnmarshalStrict(b, &job); err != nil {
				t.Fatal(err)
			}
			spec := job.Spec.Template.Spec
			if job.Name != "hopless-install-worker-7-example-com" || spec.NodeName != "worker-7.example.com" {
				t.Errorf("Job %s on node %q, want hopless-install-worker-7-example-com on worker-7.example.com", job.Name, spec.NodeName)
			}
			c := spec.Containers[0]
			for _, want := range []string{"--mode=" + mode, "--node-name=worker-7.example.com", "--host-root=/host", "--restart"} {
				if !slices.Contains(c.Args, want) {
					t.Errorf("args %q lack %s", c.Args, want)
				}
			}
			if c.Image != testImage.String() {
				t.Errorf("image %q, want %q", c.Image, testImage.String())
			}
		})
	}
	for _, bad := range []string{"", "Worker_1", "-worker", strings.Repeat("a", 254)} {
		if _, err := RenderJob(jobDir("nri"), testImage, bad); err == nil {
			t.Errorf("RenderJob accepted the node name %q", bad)
		}
	}
}

// TestRenderUninstallJob renders the per-node uninstall Job of both modes, decodes it
// strictly, checks it by the rules beside its overlay (whose ConfigMap and
// ServiceAccount it uses), and checks that it is the install Job but for its name,
// component label and arguments.
func TestRenderUninstallJob(t *testing.T) {
	t.Parallel()
	const node = "worker-7.example.com"
	for _, tc := range []struct {
		mode, name string
	}{
		{"inprocess", "hopless-uninstall-worker-7-example-com"},
		{"nri", "hopless-uninstall-worker-7-example-com"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			b, err := RenderUninstallJob(jobDir(tc.mode), testImage, node)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), NodePlaceholder) {
				t.Fatalf("the rendered Job still has %s:\n%s", NodePlaceholder, b)
			}
			objs := decode(t, b)
			if len(objs) != 1 {
				t.Fatalf("RenderUninstallJob gave %d objects, want the Job", len(objs))
			}
			job, ok := objs[0].(*batchv1.Job)
			if !ok {
				t.Fatalf("RenderUninstallJob gave a %T, want a Job", objs[0])
			}
			overlay, err := Render(overlayDir(tc.mode), testImage)
			if err != nil {
				t.Fatal(err)
			}
			if err := Check(append(decode(t, overlay), job)); err != nil {
				t.Errorf("the overlay with the uninstall Job breaks the rules:\n%v", err)
			}

			spec := job.Spec.Template.Spec
			if job.Name != tc.name || spec.NodeName != node {
				t.Errorf("Job %s on node %q, want %s on %s", job.Name, spec.NodeName, tc.name, node)
			}
			for _, l := range []map[string]string{job.Labels, job.Spec.Template.Labels} {
				if got := l[componentLabel]; got != UninstallComponent {
					t.Errorf("label %s = %q, want %s", componentLabel, got, UninstallComponent)
				}
			}
			c := spec.Containers[0]
			if want := []string{"uninstall", "--host-root=/host", "--restart"}; !slices.Equal(c.Args, want) {
				t.Errorf("args %q, want %q", c.Args, want)
			}
			if c.Image != testImage.String() {
				t.Errorf("image %q, want %q", c.Image, testImage.String())
			}

			// The rest is the install Job's.
			ib, err := RenderJob(jobDir(tc.mode), testImage, node)
			if err != nil {
				t.Fatal(err)
			}
			var install batchv1.Job
			if err := yaml.UnmarshalStrict(ib, &install); err != nil {
				t.Fatal(err)
			}
			if l := install.Labels[componentLabel]; l != "node-job" {
				t.Errorf("the install Job's %s is %q, want node-job", componentLabel, l)
			}
			install.Name = job.Name
			install.Labels[componentLabel] = UninstallComponent
			install.Spec.Template.Labels[componentLabel] = UninstallComponent
			install.Spec.Template.Spec.Containers[0].Args = c.Args
			job.TypeMeta = install.TypeMeta
			if !equality.Semantic.DeepEqual(&install, job) {
				ij, _ := yaml.Marshal(&install)
				t.Errorf("the uninstall Job differs from the install Job beyond name, label and args:\n%s\nwant:\n%s", b, ij)
			}
		})
	}
	if _, err := RenderUninstallJob(jobDir("nri"), testImage, "Worker_1"); err == nil {
		t.Error("RenderUninstallJob accepted the node name Worker_1")
	}
}
