package manifests

import (
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// PodSecurity evaluates every pod template among objs with the Pod Security
// admission's own checks, at the enforce level and version of its namespace's
// labels (the namespace must be among objs), or at level when it is not empty. It
// returns one error per pod that the level forbids, saying why.
func PodSecurity(objs []runtime.Object, level psaapi.Level) error {
	eval, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return fmt.Errorf("building the Pod Security evaluator: %w", err)
	}
	namespaces := map[string]*corev1.Namespace{}
	for _, o := range objs {
		if ns, ok := o.(*corev1.Namespace); ok {
			namespaces[ns.Name] = ns
		}
	}
	var errs []error
	for _, p := range PodTemplates(objs) {
		lv := psaapi.LevelVersion{Level: level, Version: psaapi.LatestVersion()}
		if level == "" {
			ns, ok := namespaces[p.Namespace]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: its namespace %q is not among the manifests, so its Pod Security level is unknown", p.Owner, p.Namespace))
				continue
			}
			pol, ferrs := psaapi.PolicyToEvaluate(ns.Labels, psaapi.Policy{
				Enforce: psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()},
			})
			if len(ferrs) > 0 {
				errs = append(errs, fmt.Errorf("namespace %s: Pod Security labels: %w", ns.Name, ferrs.ToAggregate()))
				continue
			}
			lv = pol.Enforce
		}
		meta, spec := p.Meta, p.Spec
		res := policy.AggregateCheckResults(eval.EvaluatePod(lv, &meta, &spec))
		if !res.Allowed {
			errs = append(errs, fmt.Errorf("%s: forbidden at Pod Security %s: %s: %s", p.Owner, lv,
				res.ForbiddenReason(), strings.TrimSpace(res.ForbiddenDetail())))
		}
	}
	return errors.Join(errs...)
}
