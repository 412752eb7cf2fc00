package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/hopless/hopless/test/lab"
)

// pullLab times crictl pulls of fresh images. Per round, on separate nodes: node-1
// pulls straight from the upstream (the baseline), node-2 pulls through cold masters,
// node-3 pulls the same image through the now warm masters, and node-4 through the
// cold stock distribution proxy: one caching hop that stores what it passes on.
func pullLab(ctx context.Context, c Config) ([]Result, error) {
	rounds, layers, size := 3, 4, int64(64<<20)
	if c.Quick {
		rounds, layers, size = 1, 2, 4<<20
	}
	o := c.Lab
	o.Dir, o.Masters, o.Nodes, o.Mode, o.Proxies = filepath.Join(c.Dir, "lab"), 3, 4, lab.ModeStock, 1
	l, err := lab.Up(ctx, o)
	if err != nil {
		return nil, err
	}
	defer l.Down()
	var direct, cold, warm, proxy figure
	proxyAddr := l.Proxies()[0].Addr
	for r := 0; r < rounds; r++ {
		repo, tag := lab.UpstreamPath+"/bench", fmt.Sprintf("r%d", r)
		res, err := l.Seed(ctx, repo, tag, layers, size, false)
		if err != nil {
			return nil, err
		}
		c.logf("round %d: seeded %s (%d x %d bytes)", r+1, res.Ref, layers, size)
		for _, step := range []struct {
			node int
			ref  string
			out  *figure
		}{
			{1, l.Upstream + "/" + repo + ":" + tag, &direct},
			{2, l.PullRef(repo, tag), &cold},
			{3, l.PullRef(repo, tag), &warm},
			{4, proxyAddr + "/" + repo + ":" + tag, &proxy},
		} {
			// Each pull starts with no writeback pending from the steps before it,
			// which would otherwise land on whichever pull comes some 30 s later.
			syscall.Sync()
			d, ok, err := boundedPull(ctx, c, "stock", l, step.node, benchImage{ref: step.ref}, pullBound, fmt.Sprintf("(round %d)", r+1))
			if err != nil {
				return nil, err
			}
			if !ok {
				step.out.fail()
				continue
			}
			step.out.add(d)
			c.logf("round %d: node-%d pulled %s in %.3fs", r+1, step.node, step.ref, d)
		}
	}
	const name = "pull-lab"
	return []Result{
		figureResult(name, "pull-cold-masters", "s", "direct-upstream", "", median, cold, direct),
		figureResult(name, "pull-warm-masters", "s", "direct-upstream", "", median, warm, direct),
		figureResult(name, "pull-cold-masters", "s", "distribution-proxy", "", median, cold, proxy),
	}, nil
}
