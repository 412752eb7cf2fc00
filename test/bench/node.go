package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hopless/hopless/test/lab"
)

// The node benchmarks pull with crictl on containerd nodes in the three node modes,
// one after another in the same run: in-process (ours: our containerd, balancing
// inside it), nginx (the system hopless replaces: stock containerd through a
// per-node NGINX stream hop, least_conn over the masters) and stock hosts.toml
// (stock containerd listing the masters). Each mode gets a lab of its own with 3
// masters, warmed before anything is measured, and a fresh node for every measured
// pull, so that no content is already on the node. Every metric is reported twice:
// ours against nginx, and ours against stock hosts.toml.

const (
	baselineNginx = "nginx"
	baselineStock = "stock-hosts"
	nodeMasters   = 3
)

// nodeModes are the node modes, in the order they run; the first is ours.
var nodeModes = []string{lab.ModeInprocess, lab.ModeNginx, lab.ModeStock}

// vsBaselines turns one figure per mode into two results: in-process against nginx
// and against stock hosts.toml.
func vsBaselines(bench, metric, unit string, byMode map[string]float64) []Result {
	return []Result{
		newResult(bench, metric, unit, baselineNginx, byMode[lab.ModeInprocess], byMode[lab.ModeNginx]),
		newResult(bench, metric, unit, baselineStock, byMode[lab.ModeInprocess], byMode[lab.ModeStock]),
	}
}

// figures holds one figure per node mode.
type figures map[string]*figure

func (fs figures) of(mode string) *figure {
	if fs[mode] == nil {
		fs[mode] = &figure{}
	}
	return fs[mode]
}

// vsBaselineFigures is vsBaselines for figures with failed runs, each aggregated
// with agg; nginxName names the nginx mode's baseline.
func vsBaselineFigures(bench, metric, unit, goal, nginxName string, agg func([]float64) float64, fs figures) []Result {
	return []Result{
		figureResult(bench, metric, unit, nginxName, goal, agg, *fs.of(lab.ModeInprocess), *fs.of(lab.ModeNginx)),
		figureResult(bench, metric, unit, baselineStock, goal, agg, *fs.of(lab.ModeInprocess), *fs.of(lab.ModeStock)),
	}
}

// withFailed sets the failed runs of each mode on results made by vsBaselines.
func withFailed(rs []Result, failed map[string]int) []Result {
	for i := range rs {
		rs[i].OursFailed = failed[lab.ModeInprocess]
		switch rs[i].BaselineName {
		case baselineStock:
			rs[i].BaselineFailed = failed[lab.ModeStock]
		default:
			rs[i].BaselineFailed = failed[lab.ModeNginx]
		}
		if rs[i].OursFailed > 0 || rs[i].BaselineFailed > 0 {
			rs[i].Ratio = 0
		}
	}
	return rs
}

// eachRound runs fn for every round and node mode. Each run gets a lab of its own,
// with 3 masters and the given number of fresh nodes, in DIR/BENCH-MODE-ROUND;
// it is brought down, and its image data removed (configs and logs stay), before
// the next one starts. The modes take turns within a round, in an order that
// rotates from round to round, so that a burst of other load on the machine does
// not fall on one mode alone.
func eachRound(ctx context.Context, c Config, bench string, rounds, nodes int, fn func(ctx context.Context, round int, mode string, l *lab.Lab) error) error {
	return eachRoundTuned(ctx, c, bench, rounds, nodes, nil, fn)
}

// eachRoundTuned is eachRound with tune, if not nil, adjusting each lab's
// options before it comes up.
func eachRoundTuned(ctx context.Context, c Config, bench string, rounds, nodes int, tune func(mode string, o *lab.Options), fn func(ctx context.Context, round int, mode string, l *lab.Lab) error) error {
	return eachRoundModes(ctx, c, bench, rounds, nodes, nodeModes, tune, fn)
}

// eachRoundModes is eachRoundTuned over the given node modes.
func eachRoundModes(ctx context.Context, c Config, bench string, rounds, nodes int, modes []string, tune func(mode string, o *lab.Options), fn func(ctx context.Context, round int, mode string, l *lab.Lab) error) error {
	for r := range rounds {
		for j := range modes {
			mode := modes[(j+r)%len(modes)]
			err := func() (err error) {
				o := c.Lab
				o.Dir = filepath.Join(c.Dir, fmt.Sprintf("%s-%s-%d", bench, mode, r+1))
				o.Masters, o.Nodes, o.Mode, o.Proxies, o.Weights, o.Fallback = nodeMasters, nodes, mode, 0, nil, false
				if tune != nil {
					tune(mode, &o)
				}
				l, err := lab.Up(ctx, o)
				if err != nil {
					return err
				}
				defer func() {
					downLab(l, &err)
					if err == nil {
						err = removeImageData(l)
					}
				}()
				c.logf("round %d, %s: lab up in %s: %d masters, %d fresh nodes", r+1, mode, l.Dir, nodeMasters, nodes)
				return fn(ctx, r, mode, l)
			}()
			if err != nil {
				return fmt.Errorf("round %d, %s mode: %w", r+1, mode, err)
			}
		}
	}
	return nil
}

// removeImageData removes the image bytes of a lab that is down: the upstream's,
// the masters', the stock proxies' and the nodes' storage. Every lab holds GiBs
// of them.
func removeImageData(l *lab.Lab) error {
	dirs := []string{filepath.Join(l.Dir, "upstream", "data")}
	for _, m := range l.Masters {
		dirs = append(dirs, l.MasterData(m.Name))
	}
	for _, p := range l.Proxies() {
		dirs = append(dirs, filepath.Join(l.Dir, p.Name, "data"))
	}
	for _, n := range l.Nodes {
		dirs = append(dirs, filepath.Join(n.Dir, "root"), filepath.Join(n.Dir, "state"))
	}
	var errs []error
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("removing lab data: %w", err))
		}
	}
	return errors.Join(errs...)
}

// benchImage is one seeded image: what a node pulls, and its layer bytes.
type benchImage struct {
	repo, tag string
	layers    int
	bytes     int64
	ref       string
}

func (im benchImage) String() string {
	return fmt.Sprintf("%d x %d MiB", im.layers, im.bytes/int64(im.layers)>>20)
}

// seedWarm pushes an image of n layers of size bytes to the upstream and warms every
// master with its manifest, config and layers.
func seedWarm(ctx context.Context, c Config, l *lab.Lab, name string, n int, size int64) (benchImage, error) {
	im, err := seedImage(ctx, l, name, n, size)
	if err != nil {
		return benchImage{}, err
	}
	t0 := time.Now()
	if err := warmMasters(ctx, l, im.repo, im.tag); err != nil {
		return benchImage{}, err
	}
	c.logf("seeded %s (%s) and warmed %d masters in %.1fs", im.ref, im, len(l.Masters), time.Since(t0).Seconds())
	return im, nil
}

// seedCold pushes an image of n layers of size bytes to the upstream only: no
// master has seen it.
func seedCold(ctx context.Context, c Config, l *lab.Lab, name string, n int, size int64) (benchImage, error) {
	im, err := seedImage(ctx, l, name, n, size)
	if err != nil {
		return benchImage{}, err
	}
	c.logf("seeded %s (%s), cold: no master has it", im.ref, im)
	return im, nil
}

// seedImage pushes deckhouse/ce/bench/NAME:v1, of n random layers of size bytes,
// to the upstream; nodes pull it through the local prefix.
func seedImage(ctx context.Context, l *lab.Lab, name string, n int, size int64) (benchImage, error) {
	repo, tag := lab.UpstreamPath+"/bench/"+name, "v1"
	res, err := l.Seed(ctx, repo, tag, n, size, false)
	if err != nil {
		return benchImage{}, err
	}
	return benchImage{repo: repo, tag: tag, layers: n, bytes: res.Bytes, ref: l.PullRef(repo, tag)}, nil
}

// warmMasters GETs an image's manifest (by tag and by digest), config and layers
// from every master, checking every digest, so that a node's pull is served from the
// masters' caches alone.
func warmMasters(ctx context.Context, l *lab.Lab, repo, tag string) error {
	client, err := newClient(l)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	var hosts []string
	for _, m := range l.Masters {
		hosts = append(hosts, m.Addr)
	}
	local := lab.LocalPrefix + "/" + strings.TrimPrefix(repo, lab.UpstreamPath+"/")
	return warmHosts(ctx, client, hosts, local, repo, tag)
}

// warmHosts GETs an image's manifest (by tag and by digest), config and layers
// from every host, which names the upstream repository repo as name, checking
// every digest.
func warmHosts(ctx context.Context, client *http.Client, hosts []string, name, repo, tag string) error {
	for _, host := range hosts {
		body, err := getManifest(ctx, client, host, name, tag)
		if err != nil {
			return fmt.Errorf("warming %s: %w", host, err)
		}
		sum := sha256.Sum256(body)
		digest := "sha256:" + hex.EncodeToString(sum[:])
		if _, err := getManifest(ctx, client, host, name, digest); err != nil {
			return fmt.Errorf("warming %s: %w", host, err)
		}
		var mf struct {
			Config blobRef   `json:"config"`
			Layers []blobRef `json:"layers"`
		}
		if err := json.Unmarshal(body, &mf); err != nil || mf.Config.Digest == "" {
			return fmt.Errorf("warming %s: manifest of %s:%s is not an image manifest: %v", host, name, tag, err)
		}
		for _, b := range append([]blobRef{mf.Config}, mf.Layers...) {
			if err := getBlob(ctx, client, host, name, blob{repo: repo, digest: b.Digest, size: b.Size}); err != nil {
				return fmt.Errorf("warming %s: %w", host, err)
			}
		}
	}
	return nil
}

type blobRef struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

func getManifest(ctx context.Context, client *http.Client, host, repo, ref string) ([]byte, error) {
	url := "https://" + host + "/v2/" + repo + "/manifests/" + ref
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// pullBound bounds an ordinary pull of a benchmark: one that no fault slows.
const pullBound = 5 * time.Minute

// timedPull pulls im on node with crictl within limit and returns the wall time.
// A pull that fails or is cut at limit is a failed run: it is logged as FAILED and
// returned with ok false, never as a time; only ctx ending is an error. It syncs
// first: with the native snapshotter a pull writes each layer's snapshot again in
// full, and the dirty pages that one pull leaves behind must not slow the next.
func timedPull(ctx context.Context, c Config, mode string, l *lab.Lab, node int, im benchImage, limit time.Duration) (took float64, ok bool, err error) {
	before, err := servedBy(l)
	if err != nil {
		return 0, false, err
	}
	syscall.Sync()
	took, ok, err = boundedPull(ctx, c, mode, l, node, im, limit, "")
	if err != nil || !ok {
		return took, ok, err
	}
	after, err := servedBy(l)
	if err != nil {
		return 0, false, err
	}
	c.logf("%s: node-%d pulled %s (%s) in %.3fs; blob bytes served: %s", mode, node, im.ref, im, took, servedDelta(l, before, after))
	return took, true, nil
}

// boundedPull runs crictl pull of im on node, cut at limit. A failure or the cut
// is logged as FAILED, with what the pull was for (what, e.g. "with master-1
// frozen"), and returned as ok false; only ctx ending is an error.
func boundedPull(ctx context.Context, c Config, mode string, l *lab.Lab, node int, im benchImage, limit time.Duration, what string) (took float64, ok bool, err error) {
	pctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t0 := time.Now()
	_, perr := l.Crictl(pctx, node, "pull", im.ref)
	took = time.Since(t0).Seconds()
	if ctx.Err() != nil {
		return 0, false, ctx.Err()
	}
	if what != "" {
		what = " " + what
	}
	switch {
	case perr != nil && pctx.Err() != nil:
		c.logf("%s: node-%d's pull of %s%s FAILED: not done within its bound of %s, cut after %.1fs", mode, node, im.ref, what, limit, took)
		return took, false, nil
	case perr != nil:
		c.logf("%s: node-%d's pull of %s%s FAILED after %.1fs: %v", mode, node, im.ref, what, took, perr)
		return took, false, nil
	}
	return took, true, nil
}

// servedBy sums the blob bytes that each master has served so far.
func servedBy(l *lab.Lab) (map[string]int64, error) {
	reqs, err := l.MasterRequests()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, r := range reqs {
		if r.IsBlobGET() {
			out[r.Master] += r.Bytes
		}
	}
	return out, nil
}

func servedDelta(l *lab.Lab, before, after map[string]int64) string {
	var parts []string
	for _, m := range l.Masters {
		parts = append(parts, fmt.Sprintf("%s %.1f MiB", m.Name, float64(after[m.Name]-before[m.Name])/(1<<20)))
	}
	return strings.Join(parts, ", ")
}

// nodePullThroughput: the wall time of crictl pull of a warm single-layer image and
// of a warm image of many small layers, per node mode, median of the rounds.
func nodePullThroughput(ctx context.Context, c Config) ([]Result, error) {
	const name = "pull-throughput"
	rounds, bigSize, many, manySize := 5, int64(256<<20), 20, int64(8<<20)
	if c.Quick {
		rounds, bigSize, many, manySize = 1, 16<<20, 4, 2<<20
	}
	bigS, manyS := figures{}, figures{}
	err := eachRound(ctx, c, name, rounds, 2, func(ctx context.Context, _ int, mode string, l *lab.Lab) error {
		imBig, err := seedWarm(ctx, c, l, "big", 1, bigSize)
		if err != nil {
			return err
		}
		imMany, err := seedWarm(ctx, c, l, "many", many, manySize)
		if err != nil {
			return err
		}
		for _, p := range []struct {
			node int
			im   benchImage
			fig  *figure
		}{{1, imBig, bigS.of(mode)}, {2, imMany, manyS.of(mode)}} {
			d, ok, err := timedPull(ctx, c, mode, l, p.node, p.im, pullBound)
			if err != nil {
				return err
			}
			if !ok {
				p.fig.fail()
				continue
			}
			p.fig.add(d)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, mode := range nodeModes {
		c.logf("%s: median of %d rounds: %.3fs (1 layer, %d failed), %.3fs (%d layers, %d failed)", mode, rounds,
			median(bigS.of(mode).vals), bigS.of(mode).failed, median(manyS.of(mode).vals), many, manyS.of(mode).failed)
	}
	return append(vsBaselineFigures(name, "pull-1-layer-s", "s", "", baselineNginx, median, bigS),
		vsBaselineFigures(name, "pull-many-layers-s", "s", "", baselineNginx, median, manyS)...), nil
}

// clockTicks is CLK_TCK, the unit of utime and stime in /proc/PID/stat, from
// getconf; 100 (Linux's USER_HZ on every common architecture) if getconf fails.
func clockTicks(c Config) float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	c.logf("getconf CLK_TCK failed (%v); assuming 100 ticks per second", err)
	return 100
}

// cpuTicks is utime+stime of a running process, in clock ticks: every thread of it,
// the exited ones included.
func cpuTicks(p *lab.Proc) (int64, error) {
	if !p.Alive() {
		return 0, fmt.Errorf("%s (pid %d) is not running", p.Name, p.PID)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading stat of %s (pid %d): %w", p.Name, p.PID, err)
	}
	// The fields after the command name, which is in parentheses: state is the
	// first (field 3 of proc(5)), so utime (14) and stime (15) are the 12th and 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat of %s (pid %d) is malformed", p.Name, p.PID)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("stat of %s (pid %d) is malformed", p.Name, p.PID)
	}
	u, uerr := strconv.ParseInt(f[11], 10, 64)
	s, serr := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(uerr, serr); err != nil {
		return 0, fmt.Errorf("stat of %s (pid %d): %w", p.Name, p.PID, err)
	}
	return u + s, nil
}

// nodeCPU: the CPU that a node spends on pulling a warm single-layer image, in CPU
// seconds per GiB of layers, from utime+stime of its containerd and, in nginx mode,
// of its nginx hop, read before and after each pull; totals over the rounds.
func nodeCPU(ctx context.Context, c Config) ([]Result, error) {
	const name = "node-cpu"
	rounds, size := 5, int64(256<<20)
	if c.Quick {
		// Ticks are 10 ms: a smaller image could read 0 for the nginx hop.
		rounds, size = 1, 64<<20
	}
	tck := clockTicks(c)
	ctrTicks, hopTicks, pulled, failed := map[string]int64{}, map[string]int64{}, map[string]int64{}, map[string]int{}
	err := eachRound(ctx, c, name, rounds, 1, func(ctx context.Context, _ int, mode string, l *lab.Lab) error {
		im, err := seedWarm(ctx, c, l, "cpu", 1, size)
		if err != nil {
			return err
		}
		procs := []*lab.Proc{findProc(l, l.Nodes[0].Name)}
		if mode == lab.ModeNginx {
			procs = append(procs, findProc(l, lab.NginxName(1)))
		}
		before := make([]int64, len(procs))
		for j, p := range procs {
			if p == nil {
				return fmt.Errorf("lab has no process for node-1")
			}
			if before[j], err = cpuTicks(p); err != nil {
				return err
			}
		}
		wall, ok, err := timedPull(ctx, c, mode, l, 1, im, pullBound)
		if err != nil {
			return err
		}
		if !ok {
			// A failed pull's CPU is not a pull's: it is counted, not measured.
			failed[mode]++
			return nil
		}
		var used [2]int64
		for j, p := range procs {
			after, err := cpuTicks(p)
			if err != nil {
				return err
			}
			used[j] = after - before[j]
		}
		ctrTicks[mode], hopTicks[mode], pulled[mode] = ctrTicks[mode]+used[0], hopTicks[mode]+used[1], pulled[mode]+im.bytes
		c.logf("%s: node-1: containerd %.2f CPU s, nginx %.2f CPU s for %.0f MiB in %.3fs", mode, float64(used[0])/tck, float64(used[1])/tck, float64(im.bytes)/(1<<20), wall)
		return nil
	})
	if err != nil {
		return nil, err
	}
	containerd, hop := map[string]float64{}, map[string]float64{}
	for _, mode := range nodeModes {
		if pulled[mode] == 0 {
			c.logf("%s: no pull succeeded (%d FAILED)", mode, failed[mode])
			continue
		}
		gib := float64(pulled[mode]) / (1 << 30)
		containerd[mode], hop[mode] = float64(ctrTicks[mode])/tck/gib, float64(hopTicks[mode])/tck/gib
		c.logf("%s: %.3f containerd + %.3f nginx CPU s per GiB over %d pulls, %d FAILED (CLK_TCK %.0f)", mode, containerd[mode], hop[mode], rounds-failed[mode], failed[mode], tck)
	}
	total := map[string]float64{}
	for m := range containerd {
		total[m] = containerd[m] + hop[m]
	}
	out := withFailed(append(vsBaselines(name, "node-cpu-s-per-gib", "s/GiB", total),
		// The target: in-process containerd against containerd alone in nginx mode.
		newResult(name, "node-cpu-s-per-gib", "s/GiB", "nginx-containerd-only", total[lab.ModeInprocess], containerd[lab.ModeNginx])), failed)
	// The hop's own share of the node's CPU in nginx mode: here "ours" is the
	// nginx process, and the ratio is its fraction of containerd plus nginx.
	share := newResult(name, "nginx-hop-share", "s/GiB", baselineNginx, hop[lab.ModeNginx], total[lab.ModeNginx])
	share.OursFailed, share.BaselineFailed = failed[lab.ModeNginx], failed[lab.ModeNginx]
	if share.OursFailed > 0 {
		share.Ratio = 0
	}
	return append(out, share), nil
}
