package status

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// classes are the request classes of HeadersP95Ms in the order they are printed;
// any other class follows, sorted.
func classes() []string { return []string{"manifest", "blob", "token"} }

// Render prints r for an operator: a line each for the plugin, the last reload and
// the CRI check, then a table of every endpoint. Ages are relative to now.
func Render(w io.Writer, r Report, now time.Time) error {
	var b strings.Builder
	switch {
	case r.Error != "":
		fmt.Fprintf(&b, "hopless: FAILED: %s\n", r.Error)
	case !r.Configured:
		b.WriteString("hopless: not configured: every pull takes containerd's own path\n")
	default:
		fmt.Fprintf(&b, "hopless: %d image host(s)\n", len(r.Hosts))
	}
	b.WriteString("reload: " + reloadLine(r.Reload, now) + "\n")
	b.WriteString("cri local pull: " + criLine(r.CRILocalPull) + "\n")
	if len(r.Hosts) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOST\tENDPOINT\tSTATE\tREASON\tSINCE\tP95 HEADERS\tSHARE\tTHROUGHPUT\tOUTSTANDING")
		for _, h := range r.Hosts {
			if len(h.Endpoints) == 0 {
				fmt.Fprintf(tw, "%s\t-\t(no status)\t-\t-\t-\t-\t-\t-\n", h.Host)
			}
			for _, e := range h.Endpoints {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n",
					h.Host, e.URL, orDash(e.State), orDash(e.Reason), age(e.Since, now),
					p95(e.HeadersP95Ms), share(e.Share), throughput(e.ThroughputBps), e.Outstanding)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func reloadLine(r Reload, now time.Time) string {
	if r.Result == "" {
		return "none since containerd started"
	}
	s := fmt.Sprintf("%s %s ago", r.Result, age(r.Time, now))
	if len(r.Files) > 0 {
		s += " (" + strings.Join(r.Files, ", ") + ")"
	}
	if r.Error != "" {
		s += ": " + strings.ReplaceAll(r.Error, "\n", "; ")
	}
	return s
}

func criLine(c CRICheck) string {
	switch {
	case !c.Checked:
		return "not checked (CRI's images plugin has not loaded)"
	case len(c.Settings) == 0:
		return "none"
	case c.Refused:
		return strings.Join(c.Settings, ", ") + ": REFUSED, CRI's images plugin failed to load (cri_local_pull = \"refuse\")"
	default:
		return strings.Join(c.Settings, ", ") + ": CRI pulls past hopless (cri_local_pull = \"" + c.Mode + "\")"
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return max(now.Sub(t), 0).Round(time.Second).String()
}

// p95 is "manifest 12ms, blob 80ms, token -".
func p95(m map[string]float64) string {
	if len(m) == 0 {
		return "-"
	}
	order := classes()
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if !slices.Contains(order, k) {
			order = append(order, k)
		}
	}
	parts := make([]string, 0, len(order))
	for _, k := range order {
		v, ok := m[k]
		if !ok {
			parts = append(parts, k+" -")
			continue
		}
		d := time.Duration(v * float64(time.Millisecond))
		if d >= time.Millisecond {
			d = d.Round(time.Millisecond)
		} else {
			d = d.Round(time.Microsecond)
		}
		parts = append(parts, k+" "+d.String())
	}
	return strings.Join(parts, ", ")
}

func share(f float64) string {
	return fmt.Sprintf("%.0f%%", f*100)
}

// throughput is bytes/s in binary units.
func throughput(bps float64) string {
	if bps <= 0 {
		return "-"
	}
	units := []string{"B/s", "KiB/s", "MiB/s", "GiB/s"}
	i := 0
	for bps >= 1024 && i < len(units)-1 {
		bps /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", bps, units[i])
	}
	return fmt.Sprintf("%.1f %s", bps, units[i])
}
