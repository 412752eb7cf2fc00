// Package events reports the NRI plugin's setup problems as Kubernetes events on the
// node's Node object, where a client is configured: in-cluster (a DaemonSet's
// service account) or from a kubeconfig file. kubectl describe node then shows them
// beside the kubelet's own.
package events

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Reason is the events' reason.
const Reason = "HoplessHostsIgnored"

// component is the events' source.
const component = "hopless-nri"

// Recorder records warnings about one node.
type Recorder struct {
	client kubernetes.Interface
	node   string
	host   string
}

// New returns a Recorder for node on client.
func New(client kubernetes.Interface, node string) *Recorder {
	host, _ := os.Hostname()
	return &Recorder{client: client, node: node, host: host}
}

// Client returns a client from kubeconfig, or in-cluster when kubeconfig is empty
// and the process runs in a pod; nil and no error when neither is configured.
func Client(kubeconfig string) (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.Timeout = 10 * time.Second
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// Warn records a warning event about the node. Nodes are cluster-scoped; their
// events live in the default namespace, as the kubelet's do.
func (r *Recorder) Warn(ctx context.Context, message string) error {
	now := metav1.NewTime(time.Now())
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: r.node + ".hopless-", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: r.node, UID: "", APIVersion: "v1"},
		Reason:         Reason,
		Message:        message,
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: component, Host: r.host},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	if _, err := r.client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("recording an event on node %s: %w", r.node, err)
	}
	return nil
}
