package manifests

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/utils/ptr"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/internal/version"
)

const (
	namespace  = "hopless-system"
	sampleNode = "worker-7"
	samplePod  = "192.0.2.10"
)

func overlayDir(mode string) string { return filepath.Join("..", "deploy", "overlays", mode) }

func jobDir(mode string) string { return filepath.Join(overlayDir(mode), "job") }

func decode(t *testing.T, b []byte) []runtime.Object {
	t.Helper()
	d, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := d.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

type rendering struct {
	name string
	objs []runtime.Object
}

// withJob renders, with the test image, the overlay of mode, and its Job for
// sampleNode, as a user applies them, decoded strictly.
func withJob(t *testing.T, mode string) []runtime.Object {
	t.Helper()
	b, err := Render(overlayDir(mode), testImage)
	if err != nil {
		t.Fatal(err)
	}
	j, err := RenderJob(jobDir(mode), testImage, sampleNode)
	if err != nil {
		t.Fatal(err)
	}
	job := decode(t, j)
	if len(job) != 1 {
		t.Fatalf("RenderJob(%s) gave %d objects, want the Job", mode, len(job))
	}
	return append(decode(t, b), job...)
}

// renderings renders, with the test image and decoded strictly: each overlay; each
// overlay with its Job for sampleNode; and each Job's kustomization whole, with the
// Job's template unfilled.
func renderings(t *testing.T) []rendering {
	t.Helper()
	var out []rendering
	for _, mode := range []string{"inprocess", "nri"} {
		overlay, err := Render(overlayDir(mode), testImage)
		if err != nil {
			t.Fatal(err)
		}
		whole, err := Render(jobDir(mode), testImage)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out,
			rendering{mode, decode(t, overlay)},
			rendering{mode + " with the Job of " + sampleNode, withJob(t, mode)},
			rendering{mode + "/job", decode(t, whole)})
	}
	return out
}

func TestDecodeIsStrict(t *testing.T) {
	t.Parallel()
	const ds = `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: x
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: i}]
`
	for _, tc := range []struct {
		name, doc, err string
	}{
		{"a known kind", ds, ""},
		{"an unknown field", strings.Replace(ds, "containers:", "nodeSelectr: {}\n      containers:", 1), `unknown field "spec.template.spec.nodeSelectr"`},
		{"a duplicate field", strings.Replace(ds, "  name: x", "  name: x\n  name: z", 1), `key "name" already set`},
		{"an unknown kind", "apiVersion: v1\nkind: Nonsense\nmetadata: {name: x}\n", "no kind"},
		{"an unknown field of a PodMonitor", "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  podMetricEndpoints: []\n", `unknown field "spec.podMetricEndpoints"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewDecoder()
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.Decode([]byte("---\n" + tc.doc))
			switch {
			case tc.err == "" && err != nil:
				t.Fatal(err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("Decode = %v, want an error with %q", err, tc.err)
			}
		})
	}
}

// TestRenderings decodes every rendering strictly and checks what each must have.
func TestRenderings(t *testing.T) {
	t.Parallel()
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			kinds := map[string]int{}
			for _, o := range r.objs {
				kinds[o.GetObjectKind().GroupVersionKind().Kind]++
			}
			for kind, n := range map[string]int{
				"Namespace": 1, "DaemonSet": 3, "Service": 1, "PodDisruptionBudget": 1, "ServiceAccount": 3,
				"Role": 1, "RoleBinding": 1, "ConfigMap": 3, "PodMonitor": 3, "PrometheusRule": 1,
			} {
				if kinds[kind] != n {
					t.Errorf("%d of kind %s, want %d", kinds[kind], kind, n)
				}
			}
			if err := Check(r.objs); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestPodSecurity evaluates every pod template at its namespace's enforce level,
// where all pass, and at baseline, where each fails: hostPath volumes (and host
// networking, and the installer's privilege) are what the privileged level is for.
func TestPodSecurity(t *testing.T) {
	t.Parallel()
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			if err := PodSecurity(r.objs, ""); err != nil {
				t.Error(err)
			}
			err := PodSecurity(r.objs, psaapi.LevelBaseline)
			if err == nil {
				t.Fatal("every pod passes Pod Security baseline")
			}
			for _, p := range PodTemplates(r.objs) {
				if !strings.Contains(err.Error(), p.Owner+": forbidden at Pod Security baseline") {
					t.Errorf("%s passes baseline: %v", p.Owner, err)
				}
			}
		})
	}
	objs := renderings(t)[0].objs
	for _, o := range objs {
		if ns, ok := o.(*corev1.Namespace); ok {
			ns.Labels[psaapi.EnforceLevelLabel] = string(psaapi.LevelBaseline)
		}
	}
	if err := PodSecurity(objs, ""); err == nil || !strings.Contains(err.Error(), "forbidden at Pod Security baseline") {
		t.Errorf("with the namespace at baseline: %v, want the pods forbidden", err)
	}
}

// The base rendering that the negative cases change.
func baseObjs(t *testing.T) []runtime.Object { return withJob(t, "inprocess") }

func ds(objs []runtime.Object, name string) *appsv1.DaemonSet {
	return DaemonSet(objs, namespace, name)
}

func job(objs []runtime.Object) *batchv1.Job {
	for _, o := range objs {
		if j, ok := o.(*batchv1.Job); ok {
			return j
		}
	}
	return nil
}

func registryd(objs []runtime.Object) *corev1.Container {
	return &ds(objs, "registryd").Spec.Template.Spec.Containers[0]
}

func pdb(objs []runtime.Object) *policyv1.PodDisruptionBudget {
	for _, o := range objs {
		if b, ok := o.(*policyv1.PodDisruptionBudget); ok {
			return b
		}
	}
	return nil
}

func without[T any](objs []runtime.Object) []runtime.Object {
	return slices.DeleteFunc(objs, func(o runtime.Object) bool { _, ok := o.(T); return ok })
}

// TestRulesCatch shows that each rule catches the manifests it is there for: each
// case breaks one thing in a good rendering, and the rule must name it.
func TestRulesCatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rule, name string
		breakIt    func([]runtime.Object) []runtime.Object
		want       string
	}{
		{"probes", "no readiness probe", func(o []runtime.Object) []runtime.Object {
			registryd(o).ReadinessProbe = nil
			return o
		}, "DaemonSet hopless-system/registryd: container registryd: no readiness probe"},
		{"probes", "no liveness probe on a node agent", func(o []runtime.Object) []runtime.Object {
			ds(o, "hopless-nri").Spec.Template.Spec.Containers[0].LivenessProbe = nil
			return o
		}, "hopless-nri: container hopless-nri: no liveness probe"},
		{"probes", "HTTP on the https port", func(o []runtime.Object) []runtime.Object {
			registryd(o).LivenessProbe.HTTPGet.Scheme = corev1.URISchemeHTTP
			return o
		}, `liveness probe: port https probed with scheme "HTTP", want HTTPS`},
		{"probes", "an undeclared port", func(o []runtime.Object) []runtime.Object {
			registryd(o).ReadinessProbe.HTTPGet.Port = intstr.FromInt32(5002)
			return o
		}, "readiness probe: port 5002 is not one of the container's ports"},
		{"security-context", "none", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext = nil
			return o
		}, "container registryd: no securityContext"},
		{"security-context", "a writable root filesystem", func(o []runtime.Object) []runtime.Object {
			job(o).Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = ptr.To(false)
			return o
		}, "Job hopless-system/hopless-install-worker-7: container install: readOnlyRootFilesystem is not true"},
		{"security-context", "privilege escalation allowed", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext.AllowPrivilegeEscalation = nil
			return o
		}, "allowPrivilegeEscalation is not false"},
		{"security-context", "capabilities kept", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext.Capabilities.Drop = []corev1.Capability{"NET_RAW"}
			return o
		}, "capabilities do not drop ALL"},
		{"security-context", "a capability added", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext.Capabilities.Add = []corev1.Capability{"NET_ADMIN"}
			return o
		}, "capabilities add [NET_ADMIN]"},
		{"security-context", "no seccomp profile", func(o []runtime.Object) []runtime.Object {
			ds(o, "hopless-nri").Spec.Template.Spec.SecurityContext = nil
			return o
		}, "container hopless-nri: seccompProfile is not RuntimeDefault"},
		{"security-context", "root by default", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext.RunAsUser = nil
			return o
		}, "neither runAsNonRoot nor an explicit runAsUser: 0"},
		{"security-context", "root without saying why", func(o []runtime.Object) []runtime.Object {
			delete(ds(o, "hopless-install").Spec.Template.Annotations, RootAnnotation)
			return o
		}, "container watch: runs as root without the annotation"},
		{"security-context", "privileged without host writes", func(o []runtime.Object) []runtime.Object {
			registryd(o).SecurityContext.Privileged = ptr.To(true)
			for i := range registryd(o).VolumeMounts {
				registryd(o).VolumeMounts[i].ReadOnly = true
			}
			return o
		}, "container registryd: privileged, but it mounts no hostPath volume writable"},
		{"pinned-images", "latest", func(o []runtime.Object) []runtime.Object {
			registryd(o).Image = "registry.test/hopless:latest"
			return o
		}, "the tag latest pins nothing"},
		{"pinned-images", "untagged", func(o []runtime.Object) []runtime.Object {
			job(o).Spec.Template.Spec.Containers[0].Image = "hopless"
			return o
		}, `container install: image "hopless" has neither a digest nor a tag`},
		{"disruption-budgets", "none", without[*policyv1.PodDisruptionBudget],
			"DaemonSet hopless-system/registryd backs Service hopless-system/registry but no PodDisruptionBudget selects its pods"},
		{"disruption-budgets", "two at once", func(o []runtime.Object) []runtime.Object {
			pdb(o).Spec.MaxUnavailable = ptr.To(intstr.FromInt32(2))
			return o
		}, "maxUnavailable is 2, want 1"},
		{"disruption-budgets", "minAvailable instead", func(o []runtime.Object) []runtime.Object {
			pdb(o).Spec.MaxUnavailable = nil
			pdb(o).Spec.MinAvailable = ptr.To(intstr.FromInt32(2))
			return o
		}, "want 1"},
		{"disruption-budgets", "another selector", func(o []runtime.Object) []runtime.Object {
			pdb(o).Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "registry"}}
			return o
		}, "no PodDisruptionBudget selects its pods"},
		{"disruption-budgets", "a Service without pods", func(o []runtime.Object) []runtime.Object {
			for _, x := range o {
				if s, ok := x.(*corev1.Service); ok {
					s.Spec.Selector = map[string]string{"app.kubernetes.io/name": "registry"}
				}
			}
			return o
		}, "Service hopless-system/registry selects no workload's pods"},
		{"tolerations", "a node agent tolerating one taint", func(o []runtime.Object) []runtime.Object {
			ds(o, "hopless-nri").Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}}
			return o
		}, "DaemonSet hopless-system/hopless-nri: a node agent that does not tolerate every taint"},
		{"tolerations", "the Job tolerating nothing", func(o []runtime.Object) []runtime.Object {
			job(o).Spec.Template.Spec.Tolerations = nil
			return o
		}, "Job hopless-system/hopless-install-worker-7: a node agent that does not tolerate every taint"},
		{"tolerations", "masters not tolerating the control plane", func(o []runtime.Object) []runtime.Object {
			ds(o, "registryd").Spec.Template.Spec.Tolerations = nil
			return o
		}, "does not tolerate their taint node-role.kubernetes.io/control-plane:NoSchedule"},
		{"priority", "a node agent below node-critical", func(o []runtime.Object) []runtime.Object {
			ds(o, "hopless-install").Spec.Template.Spec.PriorityClassName = "system-cluster-critical"
			return o
		}, `hopless-install: a node agent with priorityClassName "system-cluster-critical", want system-node-critical`},
		{"priority", "the Job without one", func(o []runtime.Object) []runtime.Object {
			job(o).Spec.Template.Spec.PriorityClassName = ""
			return o
		}, `a node agent with priorityClassName "", want system-node-critical`},
		{"priority", "masters without one", func(o []runtime.Object) []runtime.Object {
			ds(o, "registryd").Spec.Template.Spec.PriorityClassName = ""
			return o
		}, "DaemonSet hopless-system/registryd: no priorityClassName"},
		{"resources", "no memory limit", func(o []runtime.Object) []runtime.Object {
			delete(registryd(o).Resources.Limits, corev1.ResourceMemory)
			return o
		}, "container registryd: no memory limit"},
		{"resources", "no CPU request", func(o []runtime.Object) []runtime.Object {
			delete(ds(o, "hopless-install").Spec.Template.Spec.InitContainers[0].Resources.Requests, corev1.ResourceCPU)
			return o
		}, "container install: no cpu request"},
		{"resources", "a request above the limit", func(o []runtime.Object) []runtime.Object {
			registryd(o).Resources.Requests[corev1.ResourceMemory] = resource.MustParse("3Gi")
			return o
		}, "memory request 3Gi above its limit 2Gi"},
		{"rbac", "rights across the cluster", func(o []runtime.Object) []runtime.Object {
			return append(o, &rbacv1.ClusterRole{TypeMeta: metav1.TypeMeta{Kind: "ClusterRole"}, ObjectMeta: metav1.ObjectMeta{Name: "hopless"}})
		}, "ClusterRole hopless: no component needs rights across the cluster"},
		{"rbac", "a wildcard", func(o []runtime.Object) []runtime.Object {
			for _, x := range o {
				if r, ok := x.(*rbacv1.Role); ok {
					r.Rules[0].Verbs = []string{"*"}
				}
			}
			return o
		}, "Role default/hopless-nri-node-events: rule 0 has a wildcard"},
		{"rbac", "a token without rights", func(o []runtime.Object) []runtime.Object {
			ds(o, "hopless-install").Spec.Template.Spec.AutomountServiceAccountToken = ptr.To(true)
			return o
		}, "DaemonSet hopless-system/hopless-install: mounts the token of ServiceAccount hopless-system/hopless-install, which no RoleBinding gives rights"},
		{"rbac", "a binding of nobody", func(o []runtime.Object) []runtime.Object {
			for _, x := range o {
				if b, ok := x.(*rbacv1.RoleBinding); ok {
					b.Subjects[0].Name = "hopless"
				}
			}
			return o
		}, "binds ServiceAccount hopless-system/hopless, which is not a ServiceAccount among the manifests"},
		{"references", "an unknown ServiceAccount", func(o []runtime.Object) []runtime.Object {
			ds(o, "registryd").Spec.Template.Spec.ServiceAccountName = "registry"
			return o
		}, "DaemonSet hopless-system/registryd: ServiceAccount registry is not among the manifests"},
		{"references", "an unknown ConfigMap", func(o []runtime.Object) []runtime.Object {
			job(o).Spec.Template.Spec.Volumes[1].ConfigMap.Name = "hopless-install-config"
			return o
		}, "volume config: ConfigMap hopless-install-config is not among the manifests"},
		{"references", "a monitor of a port the pods lack", func(o []runtime.Object) []runtime.Object {
			for _, x := range o {
				if m, ok := x.(*monitoringv1.PodMonitor); ok && m.Name == "registryd" {
					m.Spec.PodMetricsEndpoints[0].Port = ptr.To("prometheus")
				}
			}
			return o
		}, "PodMonitor hopless-system/registryd: endpoint port prometheus is not a port of the pods it selects"},
		{"references", "a monitor of no pods", func(o []runtime.Object) []runtime.Object {
			for _, x := range o {
				if m, ok := x.(*monitoringv1.PodMonitor); ok && m.Name == "hopless-nri" {
					m.Spec.Selector.MatchLabels = map[string]string{"app.kubernetes.io/name": "nri"}
				}
			}
			return o
		}, "PodMonitor hopless-system/hopless-nri selects no pods with ports"},
	} {
		t.Run(tc.rule+": "+tc.name, func(t *testing.T) {
			t.Parallel()
			var rule Rule
			for _, r := range Rules() {
				if r.Name == tc.rule {
					rule = r
				}
			}
			if rule.Check == nil {
				t.Fatalf("no rule %s", tc.rule)
			}
			objs := baseObjs(t)
			if errs := rule.Check(objs); len(errs) > 0 {
				t.Fatalf("the good rendering fails: %v", errs)
			}
			errs := rule.Check(tc.breakIt(objs))
			if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
				t.Errorf("rule %s found %v, want an error with %q", tc.rule, errs, tc.want)
			}
		})
	}
}

// TestOverlaysDifferInTheModeOnly compares the two overlays line by line: the
// installer's mode is the one difference.
func TestOverlaysDifferInTheModeOnly(t *testing.T) {
	t.Parallel()
	var lines [2][]string
	for i, mode := range []string{"inprocess", "nri"} {
		b, err := Render(overlayDir(mode), testImage)
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = strings.Split(string(b), "\n")
	}
	if len(lines[0]) != len(lines[1]) {
		t.Fatalf("%d lines and %d lines", len(lines[0]), len(lines[1]))
	}
	var diff []string
	for i := range lines[0] {
		if lines[0][i] != lines[1][i] {
			diff = append(diff, strings.TrimSpace(lines[0][i])+" -> "+strings.TrimSpace(lines[1][i]))
		}
	}
	if want := []string{"- --mode=inprocess -> - --mode=nri"}; !slices.Equal(diff, want) {
		t.Errorf("the overlays differ in %q, want %q", diff, want)
	}
}

// TestDefaultImage renders an overlay without an image: every container runs the
// default, pinned to this release's tag.
func TestDefaultImage(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{overlayDir("inprocess"), overlayDir("nri"), jobDir("inprocess"), jobDir("nri")} {
		b, err := Render(dir, Image{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range PodTemplates(decode(t, b)) {
			for _, c := range p.Containers() {
				if want := DefaultImageName + ":" + version.Version; c.Image != want {
					t.Errorf("%s: %s: container %s has image %q, want %q", dir, p.Owner, c.Name, c.Image, want)
				}
			}
		}
	}
}

// TestRegistryd checks the masters' DaemonSet, Service and configuration together.
func TestRegistryd(t *testing.T) {
	t.Parallel()
	objs := baseObjs(t)
	d := ds(objs, "registryd")
	spec := d.Spec.Template.Spec
	if !spec.HostNetwork || spec.NodeSelector[ControlPlaneLabel] != "" || len(spec.NodeSelector) != 1 {
		t.Errorf("hostNetwork %v, nodeSelector %v; want the host's network on control-plane nodes", spec.HostNetwork, spec.NodeSelector)
	}
	c := spec.Containers[0]
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
		if g := p.probe.HTTPGet; g == nil || g.Path != p.path || g.Scheme != corev1.URISchemeHTTPS || g.Port != intstr.FromString("https") {
			t.Errorf("probe %+v, want HTTPS GET %s on port https", p.probe.ProbeHandler, p.path)
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["https"] != 5001 {
		t.Errorf("port https is %d, want 5001", ports["https"])
	}

	rc, err := LoadRegistrydConfig(objs, d, samplePod)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rc.Config
	for _, l := range []struct {
		field, addr string
		port        int32
	}{{"server.listen", cfg.Server.Listen, ports["https"]}, {"metrics.listen", cfg.Metrics.Listen, ports["metrics"]}} {
		if !strings.HasSuffix(l.addr, ":"+strconv.Itoa(int(l.port))) {
			t.Errorf("%s is %q, but the container's port is %d", l.field, l.addr, l.port)
		}
	}
	if cfg.Peers.Self != "https://"+samplePod+":5001" || cfg.Peers.DNS != "registry."+namespace+".svc" || cfg.Peers.Port != 5001 {
		t.Errorf("peers self %q dns %q port %d; want this pod's address and the Service registry", cfg.Peers.Self, cfg.Peers.DNS, cfg.Peers.Port)
	}
	if cfg.API.NodeKeyFile == "" || cfg.Peers.TokenFile == "" || cfg.Server.TLSCert == "" {
		t.Error("pins, peers or TLS are not configured")
	}
	var dataMount string
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/var/lib/hopless/registryd" {
				dataMount = m.MountPath
			}
		}
	}
	if cfg.Storage.Root != dataMount || dataMount == "" {
		t.Errorf("storage.root %q, but the host's /var/lib/hopless/registryd is mounted at %q", cfg.Storage.Root, dataMount)
	}

	var svc *corev1.Service
	for _, o := range objs {
		if s, ok := o.(*corev1.Service); ok && s.Name == "registry" {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service registry")
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || svc.Spec.PublishNotReadyAddresses ||
		len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 5001 || svc.Spec.Ports[0].TargetPort != intstr.FromString("https") {
		t.Errorf("Service registry %+v, want headless on 5001, ready masters only", svc.Spec)
	}
}

// TestRegistrydConfigMustLoad breaks the masters' configuration in ways that only
// loading it as registryd does can see.
func TestRegistrydConfigMustLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		breakIt func([]runtime.Object)
		want    string
	}{
		{"an unknown key", func(o []runtime.Object) {
			cm := configMapNamed(o, "registryd-config")
			cm.Data["registryd.toml"] = strings.Replace(cm.Data["registryd.toml"], "[storage]", "[storage]\nmax_byte = 1", 1)
		}, "storage.max_byte: unknown key"},
		{"a token readable by others", func(o []runtime.Object) {
			ds(o, "registryd").Spec.Template.Spec.Volumes[0].Projected.DefaultMode = ptr.To(int32(0o644))
		}, "peer.token has mode 0644, want 0600 or stricter"},
		{"a file the volume lacks", func(o []runtime.Object) {
			src := ds(o, "registryd").Spec.Template.Spec.Volumes[0].Projected.Sources
			src[2].Secret.Items = src[2].Secret.Items[1:]
		}, "peers.token_file: file"},
		{"an unexpanded variable", func(o []runtime.Object) {
			registryd(o).Env = nil
		}, "uses $(POD_IP), which is not known here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			objs := baseObjs(t)
			tc.breakIt(objs)
			_, err := LoadRegistrydConfig(objs, ds(objs, "registryd"), samplePod)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadRegistrydConfig = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func configMapNamed(objs []runtime.Object, prefix string) *corev1.ConfigMap {
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && strings.HasPrefix(cm.Name, prefix) {
			return cm
		}
	}
	return nil
}

// TestNodeAgents checks the installer's and the NRI plugin's pods against what
// their commands need.
func TestNodeAgents(t *testing.T) {
	t.Parallel()
	for _, r := range renderings(t) {
		if strings.HasSuffix(r.name, "/job") {
			continue
		}
		mode, _, _ := strings.Cut(r.name, " ")
		t.Run(r.name, func(t *testing.T) {
			inst := ds(r.objs, "hopless-install").Spec.Template.Spec
			if len(inst.InitContainers) != 1 || len(inst.Containers) != 1 {
				t.Fatalf("hopless-install: %d init containers and %d containers, want 1 and 1", len(inst.InitContainers), len(inst.Containers))
			}
			pods := map[string]corev1.PodSpec{"DaemonSet hopless-install": inst}
			if j := job(r.objs); j != nil {
				pods["Job "+j.Name] = j.Spec.Template.Spec
			}
			for name, spec := range pods {
				install := append(slices.Clone(spec.InitContainers), spec.Containers...)[0]
				want := []string{"node", "--host-root=/host", "--mode=" + mode, "--config=/etc/hopless-install/install.toml",
					"--files-dir=/etc/hopless-install/files"}
				if !slices.Equal(install.Args[:len(want)], want) || install.Command[0] != "/hopless/bin/hopless-install" {
					t.Errorf("%s: %q %q, want hopless-install %q…", name, install.Command, install.Args, want)
				}
				if !hostRootAt(spec, install, "/host", false) || !spec.HostNetwork {
					t.Errorf("%s: the host's / is not mounted writable at /host, or not on the host's network", name)
				}
			}
			watch := inst.Containers[0]
			if want := []string{"watch", "--host-root=/host", "--interval=1m", "--metrics-listen=:9103"}; !slices.Equal(watch.Args, want) {
				t.Errorf("watch args %q, want %q", watch.Args, want)
			}
			if !hostRootAt(inst, watch, "/host", true) {
				t.Error("watch does not see the host's / read-only at /host")
			}

			nri := ds(r.objs, "hopless-nri").Spec.Template.Spec
			c := nri.Containers[0]
			if want := []string{"run", "--config=/etc/hopless/nri.toml", "--socket=/var/run/nri/nri.sock"}; !slices.Equal(c.Args, want) {
				t.Errorf("hopless-nri args %q, want %q", c.Args, want)
			}
			mounts := map[string]bool{}
			for _, m := range c.VolumeMounts {
				for _, v := range nri.Volumes {
					if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == m.MountPath {
						mounts[m.MountPath] = m.ReadOnly
					}
				}
			}
			for path, ro := range map[string]bool{"/var/run/nri": true, "/run/containerd": true, "/etc/hopless": true,
				"/etc/containerd/certs.d": false, "/var/lib/hopless/nri": false} {
				if got, ok := mounts[path]; !ok || got != ro {
					t.Errorf("hopless-nri: the host's %s mounted %v (read-only %v), want read-only %v", path, ok, got, ro)
				}
			}
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
			}) {
				t.Error("hopless-nri has no NODE_NAME from spec.nodeName")
			}
			for _, o := range r.objs {
				if role, ok := o.(*rbacv1.Role); ok {
					want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create"}}}
					if role.Namespace != metav1.NamespaceDefault || len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, want[0].Verbs) ||
						!slices.Equal(role.Rules[0].Resources, want[0].Resources) || !slices.Equal(role.Rules[0].APIGroups, want[0].APIGroups) {
						t.Errorf("Role %s/%s %v, want only events created in default", role.Namespace, role.Name, role.Rules)
					}
				}
			}
		})
	}
}

// hostRootAt reports whether c mounts the host's / at path, read-only or not.
func hostRootAt(spec corev1.PodSpec, c corev1.Container, path string, readOnly bool) bool {
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == "/" && m.MountPath == path && m.ReadOnly == readOnly {
				return true
			}
		}
	}
	return false
}

// TestInstallConfig reads install.toml as TOML (conf.LoadInstall does not know
// this format yet) and checks it against the manifests it works with.
func TestInstallConfig(t *testing.T) {
	t.Parallel()
	objs := baseObjs(t)
	cm := configMapNamed(objs, "hopless-install-config")
	src, err := os.ReadFile(filepath.Join("..", "deploy", "base", "install.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cm == nil || cm.Data["install.toml"] != string(src) {
		t.Fatal("the ConfigMap hopless-install-config does not hold base/install.toml")
	}
	in, err := conf.LoadInstall(filepath.Join("..", "deploy", "base", "install.toml"))
	if err != nil {
		t.Fatalf("hopless-install would not load the ConfigMap's install.toml: %v", err)
	}
	if len(in.Registries) != 1 || in.Registries[0].Host != "registry."+namespace+".svc:5001" {
		t.Errorf("registries %+v, want the one image host registry.%s.svc:5001", in.Registries, namespace)
	}
	if !slices.ContainsFunc(in.Files, func(f conf.InstallFile) bool { return f.Dest == in.Registries[0].TLS.CA }) {
		t.Errorf("registry.tls.ca %s is not among the files installed", in.Registries[0].TLS.CA)
	}
	var metricsPort int32
	for _, p := range ds(objs, "hopless-install").Spec.Template.Spec.Containers[0].Ports {
		if p.ContainerPort == 1338 {
			metricsPort = p.ContainerPort
		}
	}
	if metricsPort == 0 || in.Containerd.MetricsAddress != ":1338" {
		t.Errorf("containerd.metrics_address %q, want :1338, the port the hopless-node PodMonitor scrapes", in.Containerd.MetricsAddress)
	}
	var nriPort int32
	for _, p := range ds(objs, "hopless-nri").Spec.Template.Spec.Containers[0].Ports {
		if p.Name == "metrics" {
			nriPort = p.ContainerPort
		}
	}
	if !strings.HasSuffix(in.NRI.MetricsListen, ":"+strconv.Itoa(int(nriPort))) || strings.HasPrefix(in.NRI.MetricsListen, "127.") {
		t.Errorf("[nri] metrics_listen %q, but hopless-nri's metrics port, scraped on the node's address, is %d", in.NRI.MetricsListen, nriPort)
	}
	if in.NRI.Plugin != "external" || in.NRI.NodeKeyFile == "" {
		t.Errorf("[nri] %+v, want the external plugin (the DaemonSet) with a node key", in.NRI)
	}
}
