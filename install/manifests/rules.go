package manifests

import (
	"errors"
	"fmt"
	"slices"

	"github.com/distribution/reference"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// RootAnnotation on a pod template says why its containers run as root. A
// container that is neither privileged nor runAsNonRoot needs it.
const RootAnnotation = "hopless.io/runs-as-root"

// ControlPlaneLabel is the label that selects the control-plane nodes, and the key of
// their taint.
const ControlPlaneLabel = "node-role.kubernetes.io/control-plane"

// NodeCritical is the priority class of the node agents.
const NodeCritical = "system-node-critical"

// Rule is one requirement on a set of manifests.
type Rule struct {
	Name string
	// Check returns one error per violation, naming the object.
	Check func(objs []runtime.Object) []error
}

// Rules are the requirements that every rendering of install/deploy meets.
func Rules() []Rule {
	return []Rule{
		{"probes", checkProbes},
		{"security-context", checkSecurityContexts},
		{"pinned-images", checkImagesPinned},
		{"disruption-budgets", checkDisruptionBudgets},
		{"tolerations", checkTolerations},
		{"priority", checkPriority},
		{"resources", checkResources},
		{"rbac", checkRBAC},
		{"references", checkReferences},
	}
}

// Check runs every rule on objs.
func Check(objs []runtime.Object) error {
	var errs []error
	for _, r := range Rules() {
		for _, err := range r.Check(objs) {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name, err))
		}
	}
	return errors.Join(errs...)
}

// NodeAgent reports whether p runs on every node, or on one named node: a
// DaemonSet that selects no nodes, or a pod bound to its node by nodeName.
func NodeAgent(p PodTemplate) bool {
	if p.Spec.NodeName != "" {
		return true
	}
	a := p.Spec.Affinity
	return p.Kind == "DaemonSet" && len(p.Spec.NodeSelector) == 0 && (a == nil || a.NodeAffinity == nil)
}

// ControlPlane reports whether p runs on the control-plane nodes only.
func ControlPlane(p PodTemplate) bool {
	_, ok := p.Spec.NodeSelector[ControlPlaneLabel]
	return ok
}

// longRunning reports whether p's containers are expected to keep running.
func longRunning(p PodTemplate) bool {
	switch p.Kind {
	case "DaemonSet", "Deployment", "StatefulSet":
		return true
	}
	return false
}

func checkProbes(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		if !longRunning(p) {
			continue
		}
		for _, c := range p.Spec.Containers {
			at := fmt.Sprintf("%s: container %s", p.Owner, c.Name)
			for _, pr := range []struct {
				kind  string
				probe *corev1.Probe
			}{{"readiness", c.ReadinessProbe}, {"liveness", c.LivenessProbe}} {
				if pr.probe == nil {
					errs = append(errs, fmt.Errorf("%s: no %s probe", at, pr.kind))
					continue
				}
				if err := checkProbe(c, pr.probe); err != nil {
					errs = append(errs, fmt.Errorf("%s: %s probe: %w", at, pr.kind, err))
				}
			}
		}
	}
	return errs
}

// checkProbe checks that a probe's port is one the container declares, and that an
// HTTP probe of a port named https speaks HTTPS.
func checkProbe(c corev1.Container, p *corev1.Probe) error {
	var port intstr.IntOrString
	switch {
	case p.HTTPGet != nil:
		port = p.HTTPGet.Port
	case p.TCPSocket != nil:
		port = p.TCPSocket.Port
	case p.GRPC != nil:
		port = intstr.FromInt32(p.GRPC.Port)
	case p.Exec != nil:
		return nil
	default:
		return errors.New("no handler")
	}
	var declared *corev1.ContainerPort
	for i, cp := range c.Ports {
		if (port.Type == intstr.String && cp.Name == port.StrVal) || (port.Type == intstr.Int && cp.ContainerPort == port.IntVal) {
			declared = &c.Ports[i]
		}
	}
	if declared == nil {
		return fmt.Errorf("port %s is not one of the container's ports", port.String())
	}
	if p.HTTPGet != nil && declared.Name == "https" && p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
		return fmt.Errorf("port https probed with scheme %q, want HTTPS", p.HTTPGet.Scheme)
	}
	return nil
}

func checkSecurityContexts(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		pod := p.Spec.SecurityContext
		if pod == nil {
			pod = &corev1.PodSecurityContext{}
		}
		for _, c := range p.Containers() {
			at := fmt.Sprintf("%s: container %s", p.Owner, c.Name)
			sc := c.SecurityContext
			if sc == nil {
				errs = append(errs, fmt.Errorf("%s: no securityContext", at))
				continue
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				errs = append(errs, fmt.Errorf("%s: readOnlyRootFilesystem is not true", at))
			}
			if sc.Privileged != nil && *sc.Privileged {
				if !writesHost(p, c) {
					errs = append(errs, fmt.Errorf("%s: privileged, but it mounts no hostPath volume writable", at))
				}
				continue
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				errs = append(errs, fmt.Errorf("%s: allowPrivilegeEscalation is not false", at))
			}
			if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				errs = append(errs, fmt.Errorf("%s: capabilities do not drop ALL", at))
			} else if len(sc.Capabilities.Add) > 0 {
				errs = append(errs, fmt.Errorf("%s: capabilities add %v", at, sc.Capabilities.Add))
			}
			seccomp := sc.SeccompProfile
			if seccomp == nil {
				seccomp = pod.SeccompProfile
			}
			if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
				errs = append(errs, fmt.Errorf("%s: seccompProfile is not RuntimeDefault", at))
			}
			nonRoot, user := pod.RunAsNonRoot, pod.RunAsUser
			if sc.RunAsNonRoot != nil {
				nonRoot = sc.RunAsNonRoot
			}
			if sc.RunAsUser != nil {
				user = sc.RunAsUser
			}
			switch {
			case nonRoot != nil && *nonRoot:
			case user == nil || *user != 0:
				errs = append(errs, fmt.Errorf("%s: neither runAsNonRoot nor an explicit runAsUser: 0", at))
			case p.Meta.Annotations[RootAnnotation] == "":
				errs = append(errs, fmt.Errorf("%s: runs as root without the annotation %s saying why", at, RootAnnotation))
			}
		}
	}
	return errs
}

// writesHost reports whether c mounts a hostPath volume of p writable.
func writesHost(p PodTemplate, c corev1.Container) bool {
	for _, m := range c.VolumeMounts {
		if m.ReadOnly {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return true
			}
		}
	}
	return false
}

func checkImagesPinned(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		for _, c := range p.Containers() {
			if err := pinned(c.Image); err != nil {
				errs = append(errs, fmt.Errorf("%s: container %s: %w", p.Owner, c.Name, err))
			}
		}
	}
	return errs
}

// pinned checks that an image reference names a digest, or a tag other than latest.
func pinned(image string) error {
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fmt.Errorf("image %q: %w", image, err)
	}
	if _, ok := ref.(reference.Digested); ok {
		return nil
	}
	t, ok := ref.(reference.Tagged)
	switch {
	case !ok:
		return fmt.Errorf("image %q has neither a digest nor a tag", image)
	case t.Tag() == "latest":
		return fmt.Errorf("image %q: the tag latest pins nothing", image)
	}
	return nil
}

func checkDisruptionBudgets(objs []runtime.Object) []error {
	var (
		errs []error
		pdbs []*policyv1.PodDisruptionBudget
	)
	for _, o := range objs {
		if b, ok := o.(*policyv1.PodDisruptionBudget); ok {
			pdbs = append(pdbs, b)
		}
	}
	for _, o := range objs {
		svc, ok := o.(*corev1.Service)
		if !ok || len(svc.Spec.Selector) == 0 {
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		backed := false
		for _, p := range PodTemplates(objs) {
			if p.Namespace != svc.Namespace || !longRunning(p) || !sel.Matches(labels.Set(p.Meta.Labels)) {
				continue
			}
			backed = true
			var budget *policyv1.PodDisruptionBudget
			for _, b := range pdbs {
				s, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
				if err == nil && b.Namespace == p.Namespace && !s.Empty() && s.Matches(labels.Set(p.Meta.Labels)) {
					budget = b
				}
			}
			switch {
			case budget == nil:
				errs = append(errs, fmt.Errorf("%s backs %s but no PodDisruptionBudget selects its pods", p.Owner, ID(svc)))
			case budget.Spec.MaxUnavailable == nil || *budget.Spec.MaxUnavailable != intstr.FromInt32(1):
				errs = append(errs, fmt.Errorf("%s: maxUnavailable is %v, want 1", ID(budget), budget.Spec.MaxUnavailable))
			}
		}
		if !backed {
			errs = append(errs, fmt.Errorf("%s selects no workload's pods", ID(svc)))
		}
	}
	return errs
}

func checkTolerations(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		switch {
		case NodeAgent(p):
			if !slices.ContainsFunc(p.Spec.Tolerations, func(t corev1.Toleration) bool {
				return t.Key == "" && t.Operator == corev1.TolerationOpExists && t.Effect == ""
			}) {
				errs = append(errs, fmt.Errorf("%s: a node agent that does not tolerate every taint (operator: Exists)", p.Owner))
			}
		case ControlPlane(p):
			if !slices.ContainsFunc(p.Spec.Tolerations, func(t corev1.Toleration) bool {
				return (t.Key == ControlPlaneLabel || t.Key == "") && t.Operator == corev1.TolerationOpExists &&
					(t.Effect == corev1.TaintEffectNoSchedule || t.Effect == "")
			}) {
				errs = append(errs, fmt.Errorf("%s: selects the control-plane nodes but does not tolerate their taint %s:NoSchedule", p.Owner, ControlPlaneLabel))
			}
		}
	}
	return errs
}

func checkPriority(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		switch {
		case NodeAgent(p) && p.Spec.PriorityClassName != NodeCritical:
			errs = append(errs, fmt.Errorf("%s: a node agent with priorityClassName %q, want %s", p.Owner, p.Spec.PriorityClassName, NodeCritical))
		case p.Kind == "DaemonSet" && p.Spec.PriorityClassName == "":
			errs = append(errs, fmt.Errorf("%s: no priorityClassName", p.Owner))
		}
	}
	return errs
}

func checkResources(objs []runtime.Object) []error {
	var errs []error
	for _, p := range PodTemplates(objs) {
		for _, c := range p.Containers() {
			at := fmt.Sprintf("%s: container %s", p.Owner, c.Name)
			req, lim := c.Resources.Requests, c.Resources.Limits
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if _, ok := req[r]; !ok {
					errs = append(errs, fmt.Errorf("%s: no %s request", at, r))
				}
			}
			m, ok := lim[corev1.ResourceMemory]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: no memory limit", at))
				continue
			}
			if r, ok := req[corev1.ResourceMemory]; ok && r.Cmp(m) > 0 {
				errs = append(errs, fmt.Errorf("%s: memory request %s above its limit %s", at, r.String(), m.String()))
			}
		}
	}
	return errs
}

func checkRBAC(objs []runtime.Object) []error {
	var errs []error
	roles := map[string]bool{}
	accounts := map[string]bool{}
	bound := map[string]bool{}
	for _, o := range objs {
		switch r := o.(type) {
		case *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
			errs = append(errs, fmt.Errorf("%s: no component needs rights across the cluster", ID(o)))
		case *rbacv1.Role:
			roles[r.Namespace+"/"+r.Name] = true
			for i, rule := range r.Rules {
				for _, field := range [][]string{rule.APIGroups, rule.Resources, rule.Verbs, rule.ResourceNames} {
					if slices.Contains(field, "*") {
						errs = append(errs, fmt.Errorf("%s: rule %d has a wildcard", ID(o), i))
						break
					}
				}
			}
		case *corev1.ServiceAccount:
			accounts[r.Namespace+"/"+r.Name] = true
		}
	}
	for _, o := range objs {
		b, ok := o.(*rbacv1.RoleBinding)
		if !ok {
			continue
		}
		if b.RoleRef.Kind != "Role" || !roles[b.Namespace+"/"+b.RoleRef.Name] {
			errs = append(errs, fmt.Errorf("%s: binds %s %s, which is not among the manifests", ID(o), b.RoleRef.Kind, b.RoleRef.Name))
		}
		for _, s := range b.Subjects {
			if s.Kind != rbacv1.ServiceAccountKind || !accounts[s.Namespace+"/"+s.Name] {
				errs = append(errs, fmt.Errorf("%s: binds %s %s/%s, which is not a ServiceAccount among the manifests", ID(o), s.Kind, s.Namespace, s.Name))
				continue
			}
			bound[s.Namespace+"/"+s.Name] = true
		}
	}
	// A pod whose account has no rights has no use for the account's token.
	sas := map[string]*corev1.ServiceAccount{}
	for _, o := range objs {
		if sa, ok := o.(*corev1.ServiceAccount); ok {
			sas[sa.Namespace+"/"+sa.Name] = sa
		}
	}
	for _, p := range PodTemplates(objs) {
		key := p.Namespace + "/" + p.Spec.ServiceAccountName
		mount := p.Spec.AutomountServiceAccountToken
		if mount == nil {
			if sa := sas[key]; sa != nil {
				mount = sa.AutomountServiceAccountToken
			}
		}
		if (mount == nil || *mount) && !bound[key] {
			errs = append(errs, fmt.Errorf("%s: mounts the token of ServiceAccount %s, which no RoleBinding gives rights", p.Owner, key))
		}
	}
	return errs
}

// checkReferences checks that what pods and monitors name exists: ServiceAccounts,
// ConfigMaps (all generated here; Secrets are the user's), and the pods and ports
// that PodMonitors scrape.
func checkReferences(objs []runtime.Object) []error {
	var errs []error
	have := map[string]bool{}
	for _, o := range objs {
		have[ID(o)] = true
	}
	pods := PodTemplates(objs)
	for _, p := range pods {
		if sa := p.Spec.ServiceAccountName; sa == "" {
			errs = append(errs, fmt.Errorf("%s: no serviceAccountName", p.Owner))
		} else if !have["ServiceAccount "+p.Namespace+"/"+sa] {
			errs = append(errs, fmt.Errorf("%s: ServiceAccount %s is not among the manifests", p.Owner, sa))
		}
		for _, v := range p.Spec.Volumes {
			var cms []string
			if v.ConfigMap != nil {
				cms = append(cms, v.ConfigMap.Name)
			}
			if v.Projected != nil {
				for _, s := range v.Projected.Sources {
					if s.ConfigMap != nil {
						cms = append(cms, s.ConfigMap.Name)
					}
				}
			}
			for _, cm := range cms {
				if !have["ConfigMap "+p.Namespace+"/"+cm] {
					errs = append(errs, fmt.Errorf("%s: volume %s: ConfigMap %s is not among the manifests", p.Owner, v.Name, cm))
				}
			}
		}
	}
	for _, o := range objs {
		pm, ok := o.(*monitoringv1.PodMonitor)
		if !ok {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: selector: %w", ID(o), err))
			continue
		}
		ports := map[string]bool{}
		for _, p := range pods {
			if p.Namespace == pm.Namespace && !sel.Empty() && sel.Matches(labels.Set(p.Meta.Labels)) {
				for _, c := range p.Spec.Containers {
					for _, cp := range c.Ports {
						ports[cp.Name] = true
					}
				}
			}
		}
		if len(ports) == 0 {
			errs = append(errs, fmt.Errorf("%s selects no pods with ports", ID(o)))
			continue
		}
		for _, e := range pm.Spec.PodMetricsEndpoints {
			if e.Port == nil || !ports[*e.Port] {
				errs = append(errs, fmt.Errorf("%s: endpoint port %v is not a port of the pods it selects", ID(o), portName(e.Port)))
			}
		}
	}
	return errs
}

func portName(p *string) string {
	if p == nil {
		return "(none)"
	}
	return *p
}

// DaemonSet returns the DaemonSet namespace/name among objs, or nil.
func DaemonSet(objs []runtime.Object, namespace, name string) *appsv1.DaemonSet {
	for _, o := range objs {
		if d, ok := o.(*appsv1.DaemonSet); ok && d.Namespace == namespace && d.Name == name {
			return d
		}
	}
	return nil
}
