package transfer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/hopless/hopless/conf"
)

// Results of a reload, the result label of hopless_plugin_config_reloads_total.
const (
	ReloadOK    = "ok"
	ReloadError = "error"
)

// ReloadStatus is the outcome of the last reload that found a changed file.
type ReloadStatus struct {
	// Time is when it ran; zero before the first.
	Time time.Time
	// Result is ReloadOK or ReloadError; empty before the first.
	Result string
	// Err says what was kept and why; nil when Result is ReloadOK.
	Err error
	// Files are the watched files that had changed.
	Files []string
}

// reloader is the state of Reload.
type reloader struct {
	mu sync.Mutex // serializes reloads; guards seen and desired
	// seen is the stat of every watched file as the last reload saw it.
	seen map[string]fileStat
	// desired are the registries as last loaded, some maybe not built (bad files).
	desired []conf.Registry

	statusMu sync.Mutex
	last     ReloadStatus
}

// fileStat is what tells a changed file: a new inode (a file replaced by rename, or
// a Kubernetes secret's symlink swapped), a new size or mtime, or a new mode (a
// credentials file made private). A missing file is the zero fileStat.
type fileStat struct {
	exists bool
	ino    uint64
	size   int64
	mtime  int64
	mode   fs.FileMode
}

func statFile(p string) fileStat {
	fi, err := os.Stat(p)
	if err != nil {
		return fileStat{}
	}
	return fileStat{exists: true, ino: inode(fi), size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
}

func statFiles(paths []string) map[string]fileStat {
	m := make(map[string]fileStat, len(paths))
	for _, p := range paths {
		m[p] = statFile(p)
	}
	return m
}

// files are the files that r's settings are read from.
func files(r conf.Registry) []string {
	var out []string
	for _, p := range []string{r.TLS.CA, r.TLS.Cert, r.TLS.Key, r.Auth.CredentialsFile} {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// registryFiles are the files of rs, each once.
func registryFiles(rs []conf.Registry) []string {
	var out []string
	for _, r := range rs {
		out = append(out, files(r)...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// watch starts the goroutine that calls Reload every interval, until Close.
func (h *Hosts) watch(ctx context.Context, interval time.Duration) {
	// The plugin's context carries the logger; Close, not containerd's context,
	// ends the watch.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_, _ = h.Reload(ctx)
			}
		}
	}()
	var once sync.Once
	h.stopWatch = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// Reload checks the watched files, and if any changed, loads the configuration
// again and applies it: a host whose settings or files changed gets a new
// RoundTripper (requests in flight finish on the old one, which is closed after its
// last body), a host that appeared is added and one that disappeared is removed. A
// host whose new settings fail to build keeps its old ones, and a configuration that
// fails to load keeps everything; the error names the file and the field, and is
// logged once. It reports whether anything had changed.
func (h *Hosts) Reload(ctx context.Context) (bool, error) {
	h.reload.mu.Lock()
	defer h.reload.mu.Unlock()
	if h.reload.seen == nil {
		h.reload.seen = map[string]fileStat{}
	}
	now := statFiles(h.watched())
	changed := map[string]bool{}
	for p, s := range now {
		if old, ok := h.reload.seen[p]; !ok || old != s {
			changed[p] = true
		}
	}
	if len(changed) == 0 {
		return false, nil
	}
	// The new stats are recorded whatever the outcome: a bad file is reported once,
	// and tried again when it changes again.
	maps.Copy(h.reload.seen, now)
	err := h.apply(ctx, changed)
	// Forget the files that are no longer watched.
	keep := h.watched()
	maps.DeleteFunc(h.reload.seen, func(p string, _ fileStat) bool { return !slices.Contains(keep, p) })

	st := ReloadStatus{Time: time.Now(), Result: ReloadOK, Err: err, Files: slices.Sorted(maps.Keys(changed))}
	if err != nil {
		st.Result = ReloadError
		log.G(ctx).WithError(err).WithField("files", st.Files).Error("hopless reload failed; what failed keeps its previous settings")
	}
	h.cfg.Metrics.reloaded(st.Result)
	h.reload.statusMu.Lock()
	h.reload.last = st
	h.reload.statusMu.Unlock()
	return true, err
}

// LastReload reports the last reload that found a changed file.
func (h *Hosts) LastReload() ReloadStatus {
	h.reload.statusMu.Lock()
	defer h.reload.statusMu.Unlock()
	return h.reload.last
}

// watched are the files whose change means a reload: the extra files (node_config),
// and those of the hosts as built and as last loaded.
func (h *Hosts) watched() []string {
	all := slices.Clone(h.cfg.Files)
	all = append(all, registryFiles(h.reload.desired)...)
	h.mu.RLock()
	for _, x := range h.byHost {
		all = append(all, files(x.config())...)
	}
	h.mu.RUnlock()
	slices.Sort(all)
	return slices.Compact(all)
}

// apply loads the configuration and rebuilds what changed.
func (h *Hosts) apply(ctx context.Context, changed map[string]bool) error {
	node, err := h.cfg.Load()
	if err != nil {
		return fmt.Errorf("reloading: %w", err)
	}
	h.reload.desired = node.Registries
	// Files that a new host refers to are stat'ed before build reads them.
	for _, p := range registryFiles(node.Registries) {
		if _, ok := h.reload.seen[p]; !ok {
			h.reload.seen[p] = statFile(p)
		}
	}
	var errs []error
	want := map[string]bool{}
	for _, r := range node.Registries {
		key := strings.ToLower(r.Host)
		want[key] = true
		x := h.lookup(key)
		if x != nil && reflect.DeepEqual(x.config(), r) && !slices.ContainsFunc(files(r), func(p string) bool { return changed[p] }) {
			continue
		}
		g, err := h.build(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("registry %s: %w", r.Host, err))
			continue
		}
		fields := log.Fields{"host": r.Host, "endpoints": len(r.Endpoints), "fallback": r.Fallback}
		if x == nil {
			h.mu.Lock()
			h.byHost[key] = newHost(r.Host, g)
			h.mu.Unlock()
			log.G(ctx).WithFields(fields).Info("hopless serves image host (reloaded)")
			continue
		}
		x.cur.Swap(g).retire()
		log.G(ctx).WithFields(fields).Info("hopless image host reloaded")
	}
	var removed []*host
	h.mu.Lock()
	for key, x := range h.byHost {
		if !want[key] {
			delete(h.byHost, key)
			removed = append(removed, x)
		}
	}
	h.mu.Unlock()
	for _, x := range removed {
		x.cur.Load().retire()
		log.G(ctx).WithField("host", x.name).Info("hopless no longer serves image host (reloaded)")
	}
	return errors.Join(errs...)
}
