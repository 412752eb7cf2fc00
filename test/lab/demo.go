package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Demo brings a lab up with 3 masters and 1 node, seeds a sample image, pulls it with
// crictl, shows which master served each request and what reached the upstream, and
// brings the lab down.
func Demo(ctx context.Context, o Options, w io.Writer) (err error) {
	o.Masters, o.Nodes = 3, 1
	if o.Mode == "" {
		o.Mode = ModeInprocess
	}
	fmt.Fprintf(w, "== bringing the lab up in %s (%s mode, 3 masters, 1 node)\n", o.Dir, o.Mode)
	l, err := Up(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(w, "== bringing the lab down")
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	for _, s := range l.Status() {
		fmt.Fprintf(w, "   %-10s pid %-7d %s\n", s.Name, s.PID, s.Addr)
	}

	repo, tag := UpstreamPath+"/demo", "v1"
	fmt.Fprintf(w, "== seeding %s/%s:%s (3 layers of 4 MiB)\n", l.Upstream, repo, tag)
	res, err := l.Seed(ctx, repo, tag, 3, 4<<20, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   manifest %s\n", res.Digest)
	before, err := l.UpstreamLog()
	if err != nil {
		return err
	}

	ref := l.PullRef(repo, tag)
	fmt.Fprintf(w, "== crictl pull %s (node-1)\n", ref)
	t0 := time.Now()
	out, err := l.Crictl(ctx, 1, "pull", ref)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "   %s (took %.2fs)\n", strings.TrimSpace(out), time.Since(t0).Seconds())

	reqs, err := l.MasterRequests()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "== requests served by the masters")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   MASTER\tMETHOD\tSTATUS\tBYTES\tPATH")
	per := map[string]int{}
	for _, r := range reqs {
		fmt.Fprintf(tw, "   %s\t%s\t%d\t%d\t%s\n", r.Master, r.Method, r.Status, r.Bytes, r.Path)
		per[r.Master]++
	}
	tw.Flush()
	var names []string
	for _, m := range l.Masters {
		names = append(names, m.Name)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "   %s served %d requests\n", n, per[n])
	}

	after, err := l.UpstreamLog()
	if err != nil {
		return err
	}
	fresh := after[len(before):]
	fmt.Fprintf(w, "== the pull made %d requests to the upstream, %d of them blob GETs:\n", len(fresh), len(BlobGETs(fresh)))
	for _, e := range fresh {
		fmt.Fprintf(w, "   %s %s -> %d (%d bytes)\n", e.Method, e.Path, e.Status, e.Bytes)
	}
	fmt.Fprintf(w, "== logs are in %s\n", filepath.Join(l.Dir))
	return nil
}
