package events

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestWarn(t *testing.T) {
	t.Parallel()
	c := fake.NewClientset()
	r := New(c, "worker-7")
	msg := `containerd would ignore the hosts.toml that hopless-nri writes: config_path lists 2 directories`
	if err := r.Warn(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	evs, err := c.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) != 1 {
		t.Fatalf("%d events, want 1", len(evs.Items))
	}
	e := evs.Items[0]
	if e.InvolvedObject.Kind != "Node" || e.InvolvedObject.Name != "worker-7" || e.Type != corev1.EventTypeWarning ||
		e.Reason != Reason || e.Message != msg || e.Source.Component != "hopless-nri" {
		t.Errorf("event %+v, want a warning about node worker-7 with the message", e)
	}
}

func TestClientNotConfigured(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	c, err := Client("")
	if c != nil || err != nil {
		t.Errorf("Client() = %v, %v; want none without kubeconfig or a pod", c, err)
	}
	if _, err := Client("/nonexistent/kubeconfig"); err == nil {
		t.Error("Client(a missing kubeconfig) succeeded")
	}
}
