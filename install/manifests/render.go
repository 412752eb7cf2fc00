// Package manifests renders hopless's Kubernetes manifests (install/deploy) through
// kustomize's Go API with the image to run, and checks them: strict decoding into
// the Kubernetes and prometheus-operator types, Pod Security, and the rules that
// every workload here must follow (see Rules).
package manifests

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/resid"
	"sigs.k8s.io/yaml"
)

// DefaultImageName is the image name that the overlays give every container
// (components/image); Render replaces it.
const DefaultImageName = "registry.example.com/hopless/hopless"

// NodePlaceholder stands for the node's name in the Job template
// (components/node-job); RenderJob fills it in.
const NodePlaceholder = "__NODE__"

// jobSelector is the label of the per-node Job.
const jobSelector = "app.kubernetes.io/name=hopless-install-job"

// Image is a reference to the hopless image, pinned by digest or by a tag other
// than latest.
type Image struct {
	// Name is the repository, e.g. "registry.example.com/hopless/hopless".
	Name string
	// Digest, "sha256:<64 hex digits>", pins the image; Tag is used without it.
	Digest string
	Tag    string
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ParseImage parses "name@sha256:…" or "name:tag".
func ParseImage(s string) (Image, error) {
	ref, err := reference.Parse(s)
	if err != nil {
		return Image{}, fmt.Errorf("parsing image reference %q: %w", s, err)
	}
	named, ok := ref.(reference.Named)
	if !ok {
		return Image{}, fmt.Errorf("image reference %q has no name", s)
	}
	img := Image{Name: named.Name()}
	if d, ok := ref.(reference.Digested); ok {
		img.Digest = d.Digest().String()
	}
	if t, ok := ref.(reference.Tagged); ok {
		img.Tag = t.Tag()
	}
	if err := img.validate(); err != nil {
		return Image{}, err
	}
	return img, nil
}

// String is the reference as a container's image field takes it.
func (i Image) String() string {
	if i.Digest != "" {
		return i.Name + "@" + i.Digest
	}
	return i.Name + ":" + i.Tag
}

func (i Image) validate() error {
	if i.Name == "" {
		return errors.New("image: no name")
	}
	if _, err := reference.ParseNamed(i.Name); err != nil {
		return fmt.Errorf("image name %q: %w", i.Name, err)
	}
	switch {
	case i.Digest != "":
		if !digestRE.MatchString(i.Digest) {
			return fmt.Errorf("image %s: digest %q is not sha256:<64 hex digits>", i.Name, i.Digest)
		}
	case i.Tag == "":
		return fmt.Errorf("image %s: neither a digest nor a tag pins it", i.Name)
	case i.Tag == "latest":
		return fmt.Errorf("image %s: the tag latest pins nothing", i.Name)
	}
	return nil
}

// Render builds the kustomization in dir (an overlay of install/deploy) with every
// container's image set to image, and returns the manifests as YAML documents. A
// zero image keeps the overlay's own default (DefaultImageName, by tag).
func Render(dir string, image Image) ([]byte, error) {
	m, err := render(dir, image)
	if err != nil {
		return nil, err
	}
	out, err := m.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("writing the manifests of %s as YAML: %w", dir, err)
	}
	return out, nil
}

// RenderJob builds the kustomization in dir (overlays/*/job) like Render and returns
// only its per-node Job, filled in for node.
func RenderJob(dir string, image Image, node string) ([]byte, error) {
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return nil, fmt.Errorf("rendering the install Job: node name %q: %s", node, strings.Join(errs, "; "))
	}
	m, err := render(dir, image)
	if err != nil {
		return nil, err
	}
	jobs, err := m.Select(types.Selector{ResId: resid.ResId{Gvk: resid.Gvk{Group: "batch", Kind: "Job"}}, LabelSelector: jobSelector})
	if err != nil {
		return nil, fmt.Errorf("finding the install Job in %s: %w", dir, err)
	}
	if len(jobs) != 1 {
		return nil, fmt.Errorf("finding the install Job in %s: %d Jobs labelled %s, want 1", dir, len(jobs), jobSelector)
	}
	b, err := jobs[0].AsYAML()
	if err != nil {
		return nil, fmt.Errorf("writing the install Job of %s as YAML: %w", dir, err)
	}
	if !strings.Contains(string(b), "nodeName: "+NodePlaceholder) {
		return nil, fmt.Errorf("rendering the install Job of %s: its template has no nodeName: %s", dir, NodePlaceholder)
	}
	// A node name is a DNS subdomain, which needs no quoting in YAML. The Job's own
	// name is made a DNS label first: it becomes a label value of its pods.
	s := strings.ReplaceAll(string(b), "hopless-install-"+NodePlaceholder, JobName(node))
	return []byte(strings.ReplaceAll(s, NodePlaceholder, node)), nil
}

// JobName is the name of node's install Job: hopless-install-<node> as a DNS label
// (dots become dashes), shortened with a hash of the node's name when too long.
func JobName(node string) string { return jobName("hopless-install-", node) }

// UninstallJobName is the name of node's uninstall Job: hopless-uninstall-<node>,
// made a DNS label as JobName makes its name.
func UninstallJobName(node string) string { return jobName("hopless-uninstall-", node) }

// UninstallComponent is the app.kubernetes.io/component label of the uninstall Job
// (the install Job's is node-job).
const UninstallComponent = "node-uninstall"

// componentLabel is the label that tells the install Job from the uninstall Job.
const componentLabel = "app.kubernetes.io/component"

// UninstallArgs are the arguments of the uninstall Job's container: the installer
// takes hopless off the node and restarts containerd.
func UninstallArgs() []string { return []string{"uninstall", "--host-root=/host", "--restart"} }

// RenderUninstallJob renders node's install Job as RenderJob does and turns it into
// the Job that takes hopless off node: named UninstallJobName(node), labelled
// app.kubernetes.io/component: node-uninstall, its container run with
// UninstallArgs. Everything else (mounts, security context, node, tolerations) is
// the install Job's.
func RenderUninstallJob(dir string, image Image, node string) ([]byte, error) {
	b, err := RenderJob(dir, image, node)
	if err != nil {
		return nil, err
	}
	var job batchv1.Job
	if err := yaml.UnmarshalStrict(b, &job); err != nil {
		return nil, fmt.Errorf("rendering the uninstall Job of %s: decoding the install Job: %w", dir, err)
	}
	if n := len(job.Spec.Template.Spec.Containers); n != 1 {
		return nil, fmt.Errorf("rendering the uninstall Job of %s: the install Job has %d containers, want 1", dir, n)
	}
	job.Name = UninstallJobName(node)
	for _, m := range []*metav1.ObjectMeta{&job.ObjectMeta, &job.Spec.Template.ObjectMeta} {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[componentLabel] = UninstallComponent
	}
	job.Spec.Template.Spec.Containers[0].Args = UninstallArgs()
	// Through a map, to leave out the empty status that batchv1.Job writes.
	jb, err := yaml.Marshal(&job)
	if err != nil {
		return nil, fmt.Errorf("writing the uninstall Job of %s as YAML: %w", dir, err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(jb, &m); err != nil {
		return nil, fmt.Errorf("writing the uninstall Job of %s as YAML: %w", dir, err)
	}
	delete(m, "status")
	out, err := yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("writing the uninstall Job of %s as YAML: %w", dir, err)
	}
	return out, nil
}

func jobName(prefix, node string) string {
	n := prefix + strings.ReplaceAll(node, ".", "-")
	if len(n) <= validation.DNS1123LabelMaxLength {
		return n
	}
	sum := sha256.Sum256([]byte(node))
	suffix := "-" + hex.EncodeToString(sum[:])[:8]
	return strings.TrimRight(n[:validation.DNS1123LabelMaxLength-len(suffix)], "-") + suffix
}

func render(dir string, image Image) (resmap.ResMap, error) {
	if image != (Image{}) {
		if err := image.validate(); err != nil {
			return nil, fmt.Errorf("rendering %s: %w", dir, err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	// The image is set by a kustomization of our own on top of dir's, in a
	// directory of its own: kustomize takes the path of a base only relative.
	wrap, err := os.MkdirTemp("", "hopless-render-")
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	defer os.RemoveAll(wrap)
	base, err := filepath.Rel(wrap, abs)
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	k := types.Kustomization{
		TypeMeta:  types.TypeMeta{APIVersion: types.KustomizationVersion, Kind: types.KustomizationKind},
		Resources: []string{base},
	}
	if image != (Image{}) {
		k.Images = []types.Image{{Name: DefaultImageName, NewName: image.Name, NewTag: image.Tag, Digest: image.Digest}}
		if image.Digest != "" {
			k.Images[0].NewTag = ""
		}
	}
	kb, err := yaml.Marshal(k)
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(wrap, "kustomization.yaml"), kb, 0o600); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), wrap)
	if err != nil {
		return nil, fmt.Errorf("rendering %s with kustomize: %w", dir, err)
	}
	if image != (Image{}) {
		if err := checkImages(m, image.String()); err != nil {
			return nil, fmt.Errorf("rendering %s: %w", dir, err)
		}
	}
	return m, nil
}

// checkImages makes sure that the image transformer reached every container: one
// whose image is not named DefaultImageName before the transformer is missed by it.
func checkImages(m resmap.ResMap, want string) error {
	var errs []error
	for _, r := range m.Resources() {
		for _, path := range []string{"spec.template.spec.containers", "spec.template.spec.initContainers"} {
			cs, err := r.GetSlice(path)
			if err != nil {
				continue
			}
			for _, c := range cs {
				cm, ok := c.(map[string]any)
				if !ok {
					continue
				}
				if got, _ := cm["image"].(string); got != want {
					errs = append(errs, fmt.Errorf("%s %s: container %v has image %q, want %q", r.GetKind(), r.GetName(), cm["name"], got, want))
				}
			}
		}
	}
	return errors.Join(errs...)
}
