package graph

import (
	"errors"
	"net/http"
	"slices"

	"github.com/containerd/log"
	"github.com/containerd/plugin"

	"github.com/hopless/hopless/plugin/balance"
	"github.com/hopless/hopless/plugin/config"
	"github.com/hopless/hopless/plugin/status"
	"github.com/hopless/hopless/plugin/transfer"
)

// wrapDebug makes the debug server's handler (the pprof plugin's *http.Server) also
// answer GET /debug/hopless with the hopless status.
func wrapDebug(r plugin.Registration) plugin.Registration {
	inner := r.InitFn
	r.Requires = append(slices.Clone(r.Requires), config.Type)
	r.InitFn = func(ic *plugin.InitContext) (any, error) {
		v, err := inner(ic)
		if err != nil {
			return v, err
		}
		srv, ok := v.(*http.Server)
		if !ok {
			log.G(ic.Context).Warnf("the debug handler is a %T, not an *http.Server: no %s", v, status.Path)
			return v, nil
		}
		in, herr := ic.GetByID(config.Type, config.ID)
		srv.Handler = status.Mux(srv.Handler, func() status.Report { return report(in, herr) })
		return srv, nil
	}
	return r
}

// report is the status of the hopless plugin that returned (v, err).
func report(v any, err error) status.Report {
	switch {
	case errors.Is(err, plugin.ErrPluginNotFound) || plugin.IsSkipPlugin(err):
		return status.Report{Hosts: []status.Host{}}
	case err != nil:
		return status.Report{Configured: true, Error: err.Error(), Hosts: []status.Host{}}
	}
	in, ok := v.(*Instance)
	if !ok {
		return status.Report{Configured: true, Error: "the hopless plugin's instance is not a *graph.Instance", Hosts: []status.Host{}}
	}
	r := status.Report{Configured: true, Hosts: []status.Host{}, CRILocalPull: in.criCheck()}
	for _, h := range in.Hosts.Status() {
		r.Hosts = append(r.Hosts, hostReport(h))
	}
	lr := in.Hosts.LastReload()
	r.Reload = status.Reload{Time: lr.Time, Result: lr.Result, Files: lr.Files}
	if lr.Err != nil {
		r.Reload.Error = lr.Err.Error()
	}
	return r
}

func hostReport(h transfer.HostStatus) status.Host {
	out := status.Host{Host: h.Host, Fallback: h.Fallback, Endpoints: []status.Endpoint{}}
	for _, e := range h.Endpoints {
		out.Endpoints = append(out.Endpoints, endpointReport(e))
	}
	return out
}

func endpointReport(e balance.EndpointStatus) status.Endpoint {
	out := status.Endpoint{
		URL:             e.URL,
		Weight:          e.Weight,
		EffectiveWeight: e.EffectiveWeight,
		Local:           e.Local,
		State:           e.State,
		Healthy:         e.Healthy,
		Reason:          e.Reason,
		Since:           e.Since,
		RetryAt:         e.RetryAt,
		Outstanding:     e.Outstanding,
		Share:           e.Share,
		ThroughputBps:   e.Throughput,
	}
	if e.LastError != nil {
		out.LastError = e.LastError.Error()
	}
	if len(e.HeadersP95) > 0 {
		out.HeadersP95Ms = make(map[string]float64, len(e.HeadersP95))
		for class, d := range e.HeadersP95 {
			out.HeadersP95Ms[class] = float64(d) / 1e6
		}
	}
	return out
}
