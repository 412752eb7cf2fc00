package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

// Decoder decodes manifests strictly into their Go types: Kubernetes' own and
// prometheus-operator's monitoring.coreos.com/v1. An unknown field, a duplicate
// field or a kind that neither knows is an error.
type Decoder struct {
	dec runtime.Decoder
}

// NewDecoder returns a Decoder.
func NewDecoder() (*Decoder, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("building the decoder's scheme: %w", err)
	}
	if err := monitoringv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("building the decoder's scheme: %w", err)
	}
	return &Decoder{dec: serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()}, nil
}

// Decode decodes every YAML document of manifests; errors name the document.
func (d *Decoder) Decode(manifests []byte) ([]runtime.Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	var (
		objs []runtime.Object
		errs []error
	)
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading YAML document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, gvk, err := d.dec.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("decoding document %d (%s): %w", i, docName(doc), err))
			continue
		}
		if obj.GetObjectKind().GroupVersionKind().Empty() {
			obj.GetObjectKind().SetGroupVersionKind(*gvk)
		}
		objs = append(objs, obj)
	}
	return objs, errors.Join(errs...)
}

// docName names a document for an error, from its first lines.
func docName(doc []byte) string {
	var kind, name string
	for _, l := range bytes.Split(doc, []byte("\n")) {
		switch {
		case kind == "" && bytes.HasPrefix(l, []byte("kind: ")):
			kind = string(bytes.TrimPrefix(l, []byte("kind: ")))
		case name == "" && bytes.HasPrefix(l, []byte("  name: ")):
			name = string(bytes.TrimPrefix(l, []byte("  name: ")))
		}
	}
	return kind + " " + name
}

// ID names an object as "Kind namespace/name" (or "Kind name" for a cluster-wide one).
func ID(obj runtime.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	m, err := meta.Accessor(obj)
	if err != nil {
		return kind
	}
	if m.GetNamespace() == "" {
		return kind + " " + m.GetName()
	}
	return kind + " " + m.GetNamespace() + "/" + m.GetName()
}

// PodTemplate is the pod of a workload.
type PodTemplate struct {
	// Owner is the workload, as ID names it; Kind its kind.
	Owner     string
	Kind      string
	Namespace string
	Meta      metav1.ObjectMeta
	Spec      corev1.PodSpec
}

// PodTemplates returns the pods of every workload among objs.
func PodTemplates(objs []runtime.Object) []PodTemplate {
	var out []PodTemplate
	for _, o := range objs {
		var ns string
		var t *corev1.PodTemplateSpec
		switch w := o.(type) {
		case *appsv1.DaemonSet:
			ns, t = w.Namespace, &w.Spec.Template
		case *appsv1.Deployment:
			ns, t = w.Namespace, &w.Spec.Template
		case *appsv1.StatefulSet:
			ns, t = w.Namespace, &w.Spec.Template
		case *batchv1.Job:
			ns, t = w.Namespace, &w.Spec.Template
		case *batchv1.CronJob:
			ns, t = w.Namespace, &w.Spec.JobTemplate.Spec.Template
		case *corev1.Pod:
			out = append(out, PodTemplate{Owner: ID(o), Kind: "Pod", Namespace: w.Namespace, Meta: w.ObjectMeta, Spec: w.Spec})
			continue
		default:
			continue
		}
		out = append(out, PodTemplate{Owner: ID(o), Kind: o.GetObjectKind().GroupVersionKind().Kind, Namespace: ns, Meta: t.ObjectMeta, Spec: t.Spec})
	}
	return out
}

// Containers returns the init containers and containers of a pod.
func (p PodTemplate) Containers() []corev1.Container {
	return append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...)
}
