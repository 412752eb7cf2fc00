package manifests

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/hopless/hopless/conf"
)

// RegistrydConfig is registryd's configuration as a DaemonSet's container runs it.
type RegistrydConfig struct {
	// Config is the file loaded with conf.LoadRegistryd, peers.self set from
	// --peers-self.
	Config *conf.Registryd
	// Args are the container's arguments, $(VAR) expanded.
	Args []string
	// Secrets are the Secret keys that the config volume needs, as "name/key".
	Secrets []string
}

// LoadRegistrydConfig loads the registryd.toml that the first container of ds
// reads (its --config), from the ConfigMap among objs that the container mounts,
// as conf.LoadRegistryd loads it at start: the file is written to a directory laid
// out like the container's config volume, whose Secret files, which are the user's,
// are stand-ins with the volume's modes, so that every file the configuration
// names must be one the volume provides, with a mode that conf accepts. --peers-self
// replaces peers.self as registryd does, with podIP for $(POD_IP).
func LoadRegistrydConfig(objs []runtime.Object, ds *appsv1.DaemonSet, podIP string) (*RegistrydConfig, error) {
	if len(ds.Spec.Template.Spec.Containers) == 0 {
		return nil, fmt.Errorf("%s: no containers", ID(ds))
	}
	c := ds.Spec.Template.Spec.Containers[0]
	args, err := expandArgs(c, podIP)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ID(ds), err)
	}
	cfgPath, self := flagValue(args, "config"), flagValue(args, "peers-self")
	if cfgPath == "" || !path.IsAbs(cfgPath) {
		return nil, fmt.Errorf("%s: container %s: --config %q is not an absolute path", ID(ds), c.Name, cfgPath)
	}
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if strings.HasPrefix(cfgPath, strings.TrimSuffix(m.MountPath, "/")+"/") {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil {
		return nil, fmt.Errorf("%s: container %s: no volume is mounted where --config %s is", ID(ds), c.Name, cfgPath)
	}
	var vol *corev1.Volume
	for i, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == mount.Name {
			vol = &ds.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil {
		return nil, fmt.Errorf("%s: volume %s is mounted but not defined", ID(ds), mount.Name)
	}
	dir, err := os.MkdirTemp("", "hopless-registryd-config-")
	if err != nil {
		return nil, fmt.Errorf("laying out the config volume of %s: %w", ID(ds), err)
	}
	defer os.RemoveAll(dir)
	secrets, err := layOut(objs, ds.Namespace, *vol, dir)
	if err != nil {
		return nil, fmt.Errorf("%s: volume %s: %w", ID(ds), vol.Name, err)
	}
	rel := strings.TrimPrefix(cfgPath, strings.TrimSuffix(mount.MountPath, "/")+"/")
	file := filepath.Join(dir, filepath.FromSlash(rel))
	cfg, err := conf.LoadRegistryd(file)
	if err != nil {
		return nil, fmt.Errorf("%s: loading %s: %w", ID(ds), cfgPath, err)
	}
	if self != "" {
		cfg.Peers.Self = self
		if err := cfg.Validate(cfgPath + " with --peers-self"); err != nil {
			return nil, fmt.Errorf("%s: %w", ID(ds), err)
		}
	}
	return &RegistrydConfig{Config: cfg, Args: args, Secrets: secrets}, nil
}

// layOut writes the files of a configMap, secret or projected volume into dir,
// ConfigMaps' with their content and Secrets' as stand-ins, with their modes, and
// returns the Secret keys used.
func layOut(objs []runtime.Object, namespace string, v corev1.Volume, dir string) ([]string, error) {
	type source struct {
		configMap, secret string
		items             []corev1.KeyToPath
	}
	var (
		sources     []source
		defaultMode = int32(0o644)
	)
	switch {
	case v.Projected != nil:
		if v.Projected.DefaultMode != nil {
			defaultMode = *v.Projected.DefaultMode
		}
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				sources = append(sources, source{configMap: s.ConfigMap.Name, items: s.ConfigMap.Items})
			case s.Secret != nil:
				sources = append(sources, source{secret: s.Secret.Name, items: s.Secret.Items})
			default:
				return nil, errors.New("only configMap and secret sources are laid out")
			}
		}
	case v.ConfigMap != nil:
		if v.ConfigMap.DefaultMode != nil {
			defaultMode = *v.ConfigMap.DefaultMode
		}
		sources = append(sources, source{configMap: v.ConfigMap.Name, items: v.ConfigMap.Items})
	case v.Secret != nil:
		if v.Secret.DefaultMode != nil {
			defaultMode = *v.Secret.DefaultMode
		}
		sources = append(sources, source{secret: v.Secret.SecretName, items: v.Secret.Items})
	default:
		return nil, errors.New("not a configMap, secret or projected volume")
	}
	var secrets []string
	for _, s := range sources {
		var data map[string]string
		if s.configMap != "" {
			cm := configMap(objs, namespace, s.configMap)
			if cm == nil {
				return nil, fmt.Errorf("the ConfigMap %s/%s is not among the manifests", namespace, s.configMap)
			}
			data = cm.Data
		}
		items := s.items
		if len(items) == 0 {
			if s.secret != "" {
				return nil, fmt.Errorf("the Secret %s lists no items: its files are unknown", s.secret)
			}
			for k := range data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			content := "stand-in for the key " + it.Key + " of Secret " + s.secret + "\n"
			if s.configMap != "" {
				c, ok := data[it.Key]
				if !ok {
					return nil, fmt.Errorf("the ConfigMap %s has no key %s", s.configMap, it.Key)
				}
				content = c
			} else {
				secrets = append(secrets, s.secret+"/"+it.Key)
			}
			mode := defaultMode
			if it.Mode != nil {
				mode = *it.Mode
			}
			p := filepath.Join(dir, filepath.FromSlash(path.Clean("/"+it.Path)))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return nil, fmt.Errorf("laying out %s: %w", it.Path, err)
			}
			if err := os.WriteFile(p, []byte(content), os.FileMode(mode)); err != nil {
				return nil, fmt.Errorf("laying out %s: %w", it.Path, err)
			}
			// WriteFile's mode is masked by the umask; the volume's is not.
			if err := os.Chmod(p, os.FileMode(mode)); err != nil {
				return nil, fmt.Errorf("laying out %s: %w", it.Path, err)
			}
		}
	}
	return secrets, nil
}

func configMap(objs []runtime.Object, namespace, name string) *corev1.ConfigMap {
	for _, o := range objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Namespace == namespace && cm.Name == name {
			return cm
		}
	}
	return nil
}

var kubeletVarRE = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs expands $(VAR) in a container's arguments as the kubelet does, for
// the variables whose value is known here: status.podIP (as podIP) and literal
// values.
func expandArgs(c corev1.Container, podIP string) ([]string, error) {
	vals := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			vals[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP":
			vals[e.Name] = podIP
		}
	}
	var errs []error
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = kubeletVarRE.ReplaceAllStringFunc(a, func(m string) string {
			name := m[2 : len(m)-1]
			v, ok := vals[name]
			if !ok {
				errs = append(errs, fmt.Errorf("container %s: argument %q uses $(%s), which is not known here", c.Name, a, name))
			}
			return v
		})
	}
	return out, errors.Join(errs...)
}

// flagValue returns the value of --name=value or --name value among args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
