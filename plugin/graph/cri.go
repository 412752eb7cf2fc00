package graph

import (
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/plugin"

	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/crilocal"
	"github.com/hopless/hopless/plugin/status"
)

// criSection names CRI's images config section in messages.
const criSection = "[plugins.'io.containerd.cri.v1.images']"

// localPullTriggers are the settings of CRI's images config (as JSON) that make CRI
// pull through its local path on goos.
func localPullTriggers(configJSON []byte, goos string) ([]crilocal.Trigger, error) {
	c, err := crilocal.FromJSON(configJSON)
	if err != nil {
		return nil, err
	}
	return crilocal.Triggers(c, goos), nil
}

// wrapCRIImages checks CRI's images config before CRI's own InitFn runs. When
// hopless serves image hosts and the config would make CRI pull through its local
// path, which never reaches the transfer service, CRI's images plugin fails (with
// cri_local_pull = "refuse") or an error is logged (with "warn").
func wrapCRIImages(r plugin.Registration, m *metrics) plugin.Registration {
	inner := r.InitFn
	r.Requires = append(slices.Clone(r.Requires), config.Type)
	r.InitFn = func(ic *plugin.InitContext) (any, error) {
		v, err := ic.GetByID(config.Type, config.ID)
		if err != nil {
			// Not configured: nothing to bypass. Broken: the transfer plugin has
			// failed already, and CRI with it.
			return inner(ic)
		}
		in := v.(*Instance)
		if err := checkCRI(ic, in, m); err != nil {
			return nil, err
		}
		return inner(ic)
	}
	return r
}

// checkCRI runs the CRI check against ic.Config for in and records its result.
func checkCRI(ic *plugin.InitContext, in *Instance, m *metrics) error {
	b, err := json.Marshal(ic.Config)
	if err != nil {
		return fmt.Errorf("hopless: encoding CRI's images config to check it: %w", err)
	}
	triggers, err := localPullTriggers(b, runtime.GOOS)
	if err != nil {
		return fmt.Errorf("hopless: %w", err)
	}
	var settings []string
	for _, t := range triggers {
		settings = append(settings, t.Setting)
	}
	m.criLocalPull(settings)
	check := status.CRICheck{Checked: true, Mode: in.Settings.CRILocalPull, Settings: settings}
	if len(triggers) == 0 {
		in.setCRICheck(check)
		return nil
	}
	var desc []string
	for _, t := range triggers {
		desc = append(desc, t.String())
	}
	msg := fmt.Sprintf("%s sets %s: CRI would pull through its local path, which bypasses hopless",
		criSection, strings.Join(desc, ", "))
	if in.Settings.CRILocalPull == config.CRILocalPullRefuse {
		check.Refused = true
		in.setCRICheck(check)
		return fmt.Errorf("hopless: %s; remove these settings (the transfer service's own section has max_concurrent_downloads), "+
			"or set cri_local_pull = %q in %s to let CRI pull past hopless: %w",
			msg, config.CRILocalPullWarn, config.Section, errdefs.ErrFailedPrecondition)
	}
	in.setCRICheck(check)
	log.G(ic.Context).WithField("settings", settings).Error(msg + "; cri_local_pull = \"warn\" lets it")
	return nil
}
