package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/hopless/hopless/conf"
	"github.com/hopless/hopless/install/ctrconf"
	"github.com/hopless/hopless/install/hostfs"
	"github.com/hopless/hopless/install/state"
	"github.com/hopless/hopless/install/systemd"
	"github.com/hopless/hopless/internal/version"
	"github.com/hopless/hopless/nri/cri"
)

// Installer installs onto, checks and uninstalls one node.
type Installer struct {
	Root hostfs.Root
	// Mode is ModeInprocess or ModeNRI (Install only).
	Mode string
	// Config is install.toml (Install only).
	Config *conf.Install
	// SourceDir holds the binaries to install; FilesDir the files' sources.
	SourceDir, FilesDir string
	// NodeName names the node for its pins token.
	NodeName string
	// Restart, when set, restarts containerd after a change and checks that CRI
	// answers within RestartTimeout.
	Restart        systemd.Restarter
	RestartTimeout time.Duration
	// Socket is containerd's socket (a node path), for the checks.
	Socket string
	Log    *slog.Logger
	// Crash, when set, is called after each step that lands on the node; the tests
	// use it to kill the installer there.
	Crash func(step int)

	steps int
}

func (in *Installer) store() (state.Store, error) {
	d, err := in.Root.Path(state.Dir)
	if err != nil {
		return state.Store{}, err
	}
	return state.Store{Dir: d}, nil
}

func (in *Installer) step() {
	in.steps++
	if in.Crash != nil {
		in.Crash(in.steps)
	}
}

// Result says what a run did.
type Result struct {
	// Changed lists the node paths written or removed; empty means unchanged.
	Changed []string
	// Restarted says containerd was restarted and CRI answered.
	Restarted bool
}

// Install makes the node match the plan. Everything is checked before the first
// write; a second run with the same inputs changes nothing.
func (in *Installer) Install(ctx context.Context) (*Result, error) {
	st, store, err := in.loadState()
	if err != nil {
		return nil, err
	}
	// A rollback puts the state back as it was before this run.
	storeExisted, err := store.Exists()
	if err != nil {
		return nil, err
	}
	before := cloneState(st)
	if st.Installed() && st.Mode != "" && st.Mode != in.Mode {
		return nil, fmt.Errorf("the node has hopless installed in %s mode; run hopless-install uninstall before installing %s mode", st.Mode, in.Mode)
	}
	p, err := in.makePlan(ctx, st)
	if err != nil {
		return nil, err
	}
	if err := in.check(ctx, p); err != nil {
		return nil, err
	}
	// Everything has been checked; from here on, the node changes. What the state
	// needs to undo this run goes with its first save.
	if err := in.sweep(p, store); err != nil {
		return nil, err
	}
	st.Mode, st.Node, st.HostsDir, st.NRIStateDir = in.Mode, in.NodeName, p.hostsDir, p.nriState
	st.Socket, st.Unit = in.Config.Containerd.Socket, in.Config.Containerd.Unit
	prev := map[string]snapshot{}
	res := &Result{}
	for _, w := range p.files {
		changed, before, err := in.apply(st, store, w)
		if err != nil {
			return res, err
		}
		if changed {
			prev[w.Path] = before
			res.Changed = append(res.Changed, w.Path)
		}
	}
	// hopless-nri's state directory is made here, so that uninstall removes it.
	if err := in.mkdirs(st, store, p.nriState); err != nil {
		return res, err
	}
	// A file of an earlier install that this plan no longer has goes back too.
	for _, f := range slices.Clone(st.Files) {
		if p.lookup(f.Path) == nil {
			snap, err := in.snapshot(f.Path)
			if err != nil {
				return res, err
			}
			if err := in.undo(st, store, f); err != nil {
				return res, err
			}
			prev[f.Path] = snap
			res.Changed = append(res.Changed, f.Path)
		}
	}
	if !st.Complete || len(res.Changed) > 0 || st.Release != version.Version {
		st.Release = version.Version
		st.Complete, st.Updated = true, time.Now().UTC()
		if err := store.Save(st); err != nil {
			return res, err
		}
		in.step()
	}
	if in.Restart == nil || len(res.Changed) == 0 {
		return res, nil
	}
	if err := in.restartAndCheck(ctx); err != nil {
		if rbErr := in.rollback(st, store, before, storeExisted, res.Changed, prev); rbErr != nil {
			return res, fmt.Errorf("%w; rolling back failed too: %v", err, rbErr)
		}
		if err2 := in.restartAndCheck(ctx); err2 != nil {
			return res, fmt.Errorf("%w; rolled back to the files from before this run, but containerd does not answer after that either: %v", err, err2)
		}
		return res, fmt.Errorf("%w; rolled back to the files from before this run, and containerd answers again", err)
	}
	res.Restarted = true
	return res, nil
}

// loadState reads the state, taking over a state directory that a killed first
// run created before it could record it.
func (in *Installer) loadState() (*state.State, state.Store, error) {
	store, err := in.store()
	if err != nil {
		return nil, store, err
	}
	st, err := store.Load()
	if err != nil {
		return nil, store, err
	}
	if err := store.Sweep(); err != nil {
		return nil, store, err
	}
	if st.Installed() || len(st.Dirs) > 0 {
		return st, store, nil
	}
	// No state yet: the directories of the state that do not exist will be
	// created by this run; any that exist and hold nothing but the state's own
	// path are left from a run killed before its first save.
	for d := state.Dir; d != "/"; d = filepath.Dir(d) {
		rp, err := in.Root.Path(d)
		if err != nil {
			return nil, store, err
		}
		ents, err := os.ReadDir(rp)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			st.Dirs = append([]string{d}, st.Dirs...)
			continue
		case err != nil:
			return nil, store, fmt.Errorf("reading %s: %w", d, err)
		case (d == hoplessVarLib || strings.HasPrefix(d, hoplessVarLib+"/")) && ownOnly(ents, d):
			// Only hopless's own directory can be told apart: a /var/lib that
			// holds nothing but it may be the node's own.
			st.Dirs = append([]string{d}, st.Dirs...)
			continue
		}
		break
	}
	return st, store, nil
}

// hoplessVarLib is hopless's directory under /var/lib, which only hopless makes.
const hoplessVarLib = "/var/lib/hopless"

// ownOnly reports whether the entries of dir d are only the state's own path:
// nothing, the next directory on the way to the state, or, in the state directory,
// the backups and staged files.
func ownOnly(ents []fs.DirEntry, d string) bool {
	if d == state.Dir {
		for _, e := range ents {
			if e.Name() != "backup" && !strings.HasPrefix(e.Name(), hostfs.TempPrefix) {
				return false
			}
		}
		return true
	}
	next := strings.TrimPrefix(state.Dir, d+"/")
	next, _, _ = strings.Cut(next, "/")
	return len(ents) == 0 || (len(ents) == 1 && ents[0].Name() == next && ents[0].IsDir())
}

// check loads what containerd and hopless will read once the plan has landed,
// with their own loaders, from a scratch copy of the planned files.
func (in *Installer) check(ctx context.Context, p *plan) error {
	scratch, err := os.MkdirTemp("", "hopless-install-check-")
	if err != nil {
		return fmt.Errorf("checking the plan: %w", err)
	}
	defer os.RemoveAll(scratch)
	mapped := map[string]string{}
	for i, w := range p.files {
		f := filepath.Join(scratch, fmt.Sprintf("%02d-%s", i, filepath.Base(w.Path)))
		if err := os.WriteFile(f, w.Data, 0o600); err != nil {
			return fmt.Errorf("checking the plan: %w", err)
		}
		if err := os.Chmod(f, w.Mode); err != nil {
			return fmt.Errorf("checking the plan: %w", err)
		}
		mapped[w.Path] = f
	}
	onNode := func(np string) string {
		if f, ok := mapped[np]; ok {
			return f
		}
		if rp, err := in.Root.Path(np); err == nil {
			return rp
		}
		return np
	}
	c := in.Config
	mainData := p.lookup(c.Containerd.Config)
	var main []byte
	if mainData != nil {
		main = mainData.Data
	} else {
		rp, err := in.Root.Path(c.Containerd.Config)
		if err != nil {
			return err
		}
		if main, err = os.ReadFile(rp); err != nil {
			return fmt.Errorf("reading %s: %w", c.Containerd.Config, err)
		}
	}
	dropIn := filepath.Join(c.Containerd.ImportsDir, DropInName)
	merged, err := ctrconf.Load(ctx, ctrconf.Candidate{Root: in.Root, ConfigPath: c.Containerd.Config, Main: main,
		DropIn: dropIn, DropInData: p.lookup(dropIn).Data})
	if err != nil {
		return fmt.Errorf("refusing to install: %w", err)
	}
	if in.Mode == ModeInprocess {
		err = ctrconf.CheckInprocess(merged, c.Containerd.Config+" with its imports")
	} else {
		err = ctrconf.CheckNRI(merged, c.Containerd.Config+" with its imports")
	}
	if err != nil {
		return fmt.Errorf("refusing to install: %w", err)
	}
	node, err := mapPaths(c.RegistryTables, onNode)
	if err != nil {
		return err
	}
	text, err := encodeTOML(map[string]any{"registry": node})
	if err != nil {
		return fmt.Errorf("checking node.toml: %w", err)
	}
	if _, err := conf.DecodeNode(NodeConfig+" (as it will be)", string(text), "/"); err != nil {
		return fmt.Errorf("refusing to install: %w", err)
	}
	for _, w := range p.files {
		if !w.nriConfig {
			continue
		}
		// The token lands with mode 0600; it is checked from its scratch copy.
		text := strings.Replace(string(w.Data), strconv.Quote(PinsToken), strconv.Quote(onNode(PinsToken)), 1)
		if _, err := conf.DecodeNRI(w.Path+" (as it will be)", text, "/"); err != nil {
			return fmt.Errorf("refusing to install: %w", err)
		}
	}
	return nil
}

// mapPaths copies the [[registry]] tables with their file paths replaced by
// where those files are now.
func mapPaths(tables []map[string]any, onNode func(string) string) ([]map[string]any, error) {
	var out []map[string]any
	for _, t := range tables {
		b, err := encodeTOML(t)
		if err != nil {
			return nil, fmt.Errorf("checking node.toml: %w", err)
		}
		cp := map[string]any{}
		if err := decodeTOML(b, &cp); err != nil {
			return nil, fmt.Errorf("checking node.toml: %w", err)
		}
		for _, sec := range []struct {
			table string
			keys  []string
		}{{"tls", []string{"ca", "cert", "key"}}, {"auth", []string{"credentials_file"}}} {
			m, ok := cp[sec.table].(map[string]any)
			if !ok {
				continue
			}
			for _, k := range sec.keys {
				if s, ok := m[k].(string); ok && filepath.IsAbs(s) {
					m[k] = onNode(s)
				}
			}
		}
		out = append(out, cp)
	}
	return out, nil
}

// snapshot is a file as it was before a run changed it.
type snapshot struct {
	existed bool
	data    []byte
	mode    fs.FileMode
}

// snapshot reads the node file p as it is now.
func (in *Installer) snapshot(p string) (snapshot, error) {
	rp, err := in.Root.Path(p)
	if err != nil {
		return snapshot{}, err
	}
	b, fi, err := hostfs.ReadFile(rp)
	if err != nil {
		return snapshot{}, err
	}
	if fi == nil {
		return snapshot{}, nil
	}
	return snapshot{existed: true, data: b, mode: fi.Mode().Perm()}, nil
}

// cloneState copies s, so that a run can put it back.
func cloneState(s *state.State) *state.State {
	c := *s
	c.Files = slices.Clone(s.Files)
	c.Dirs = slices.Clone(s.Dirs)
	return &c
}

// apply lands one planned file: the state records the file's original (and keeps
// a backup) before the file changes, and what was written after.
func (in *Installer) apply(st *state.State, store state.Store, w want) (bool, snapshot, error) {
	rp, err := in.Root.Path(w.Path)
	if err != nil {
		return false, snapshot{}, err
	}
	cur, fi, err := hostfs.ReadFile(rp)
	if err != nil {
		return false, snapshot{}, err
	}
	sum := hostfs.Sum(w.Data)
	e := st.Lookup(w.Path)
	before := snapshot{existed: fi != nil, data: cur}
	if fi != nil {
		before.mode = fi.Mode().Perm()
	}
	if fi != nil && hostfs.Sum(cur) == sum && fi.Mode().Perm() == w.Mode && e != nil && e.SHA256 == sum {
		return false, before, nil
	}
	if e == nil {
		f := state.File{Path: w.Path, Role: w.Role, Existed: fi != nil, StageDir: w.StageDir}
		if fi != nil {
			if f.Original, err = store.SaveBackup(cur); err != nil {
				return false, before, fmt.Errorf("backing up %s: %w", w.Path, err)
			}
			f.OriginalMode = uint32(fi.Mode().Perm())
		}
		st.Files = append(st.Files, f)
		st.Complete = false
		if err := store.Save(st); err != nil {
			return false, before, err
		}
		in.step()
		e = st.Lookup(w.Path)
	}
	if err := in.mkdirs(st, store, filepath.Dir(w.Path)); err != nil {
		return false, before, err
	}
	stage := ""
	if w.StageDir != "" {
		if err := in.mkdirs(st, store, w.StageDir); err != nil {
			return false, before, err
		}
		if stage, err = in.Root.Path(w.StageDir); err != nil {
			return false, before, err
		}
	}
	if err := hostfs.WriteFile(rp, w.Data, w.Mode, stage); err != nil {
		return false, before, fmt.Errorf("installing %s: %w", w.Path, err)
	}
	in.step()
	e.SHA256, e.Mode, e.Role = sum, uint32(w.Mode), w.Role
	st.Complete = false
	if err := store.Save(st); err != nil {
		return false, before, err
	}
	in.step()
	in.Log.Info("installed", "path", w.Path, "role", w.Role, "sha256", sum[:12])
	return true, before, nil
}

// mkdirs creates the node directory d and its missing parents, each recorded
// before it is made.
func (in *Installer) mkdirs(st *state.State, store state.Store, d string) error {
	var missing []string
	for p := d; p != "/"; p = filepath.Dir(p) {
		rp, err := in.Root.Path(p)
		if err != nil {
			return err
		}
		if _, err := os.Lstat(rp); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("looking at %s: %w", p, err)
		}
		missing = append([]string{p}, missing...)
	}
	if len(missing) == 0 {
		return nil
	}
	for _, m := range missing {
		if !slices.Contains(st.Dirs, m) {
			st.Dirs = append(st.Dirs, m)
		}
	}
	if err := store.Save(st); err != nil {
		return err
	}
	in.step()
	for _, m := range missing {
		rp, err := in.Root.Path(m)
		if err != nil {
			return err
		}
		if err := os.Mkdir(rp, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating %s: %w", m, err)
		}
	}
	return nil
}

// sweep removes staged files that a killed run left beside the planned files.
func (in *Installer) sweep(p *plan, store state.Store) error {
	dirs := map[string]bool{}
	for _, w := range p.files {
		dirs[filepath.Dir(w.Path)] = true
		if w.StageDir != "" {
			dirs[w.StageDir] = true
		}
	}
	for d := range dirs {
		rp, err := in.Root.Path(d)
		if err != nil {
			return err
		}
		if err := hostfs.Sweep(rp); err != nil {
			return err
		}
	}
	return store.Sweep()
}

// undo puts one recorded file back as it was before the first install and drops
// its entry.
func (in *Installer) undo(st *state.State, store state.Store, f state.File) error {
	rp, err := in.Root.Path(f.Path)
	if err != nil {
		return err
	}
	if f.Existed {
		b, err := store.Backup(f.Original)
		if err != nil {
			return err
		}
		stage, err := in.stageDir(&f)
		if err != nil {
			return err
		}
		if err := hostfs.WriteFile(rp, b, fs.FileMode(f.OriginalMode), stage); err != nil {
			return fmt.Errorf("restoring %s: %w", f.Path, err)
		}
	} else if err := os.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", f.Path, err)
	}
	in.step()
	st.Files = slices.DeleteFunc(st.Files, func(x state.File) bool { return x.Path == f.Path })
	if err := store.Save(st); err != nil {
		return err
	}
	in.step()
	in.Log.Info("restored", "path", f.Path, "existed", f.Existed)
	return nil
}

// restartAndCheck restarts containerd and waits for CRI to answer Status.
func (in *Installer) restartAndCheck(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, in.RestartTimeout)
	defer cancel()
	in.Log.Info("restarting containerd", "how", in.Restart.String())
	if err := in.Restart.Restart(rctx); err != nil {
		return fmt.Errorf("restarting containerd: %w", err)
	}
	sock, err := in.Root.Path(in.Socket)
	if err != nil {
		return err
	}
	var last error
	for {
		last = criReady(rctx, sock)
		if last == nil {
			in.Log.Info("containerd answers CRI status", "socket", in.Socket)
			return nil
		}
		select {
		case <-rctx.Done():
			return fmt.Errorf("containerd did not answer CRI status on %s within %s after the restart: %v", in.Socket, in.RestartTimeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func criReady(ctx context.Context, sock string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := cri.Dial(cctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.RuntimeReady(cctx)
}

// stageDir is where the recorded file f is staged before its rename: beside it
// (""), or its own StageDir.
func (in *Installer) stageDir(f *state.File) (string, error) {
	if f == nil || f.StageDir == "" {
		return "", nil
	}
	return in.Root.Path(f.StageDir)
}

// rollback puts the node back as it was before this run: the files the run
// changed (newest first) as they were, the directories it made removed, and the
// state as it was, or none when the run found none. The caller restarts
// containerd again.
func (in *Installer) rollback(st *state.State, store state.Store, before *state.State, storeExisted bool, changed []string, prev map[string]snapshot) error {
	in.Log.Error("containerd did not come back; rolling back this run's changes")
	for i := len(changed) - 1; i >= 0; i-- {
		p := changed[i]
		s := prev[p]
		rp, err := in.Root.Path(p)
		if err != nil {
			return err
		}
		if s.existed {
			e := st.Lookup(p)
			if e == nil {
				e = before.Lookup(p)
			}
			stage, err := in.stageDir(e)
			if err != nil {
				return err
			}
			if err := hostfs.WriteFile(rp, s.data, s.mode, stage); err != nil {
				return fmt.Errorf("rolling back %s: %w", p, err)
			}
		} else if err := os.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rolling back %s: %w", p, err)
		}
		in.Log.Info("rolled back", "path", p, "existed", s.existed)
	}
	// The directories this run made, deepest first; one that something else has
	// written into since stays, and stays recorded for uninstall.
	restored := cloneState(before)
	left := map[string]bool{}
	for i := len(st.Dirs) - 1; i >= 0; i-- {
		d := st.Dirs[i]
		if slices.Contains(before.Dirs, d) {
			continue
		}
		rp, err := in.Root.Path(d)
		if err != nil {
			return err
		}
		if err := os.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			in.Log.Warn("left a directory the installer created, as it is not empty", "dir", d, "err", err)
			left[d] = true
		}
	}
	for _, d := range st.Dirs {
		if left[d] {
			restored.Dirs = append(restored.Dirs, d)
		}
	}
	if !storeExisted && len(left) == 0 && slices.Contains(before.Dirs, state.Dir) {
		// The run found no state: it leaves none, nor the directories it made
		// for it.
		if err := store.Remove(); err != nil {
			return err
		}
		for i := len(before.Dirs) - 1; i >= 0; i-- {
			if before.Dirs[i] == state.Dir {
				continue
			}
			rp, err := in.Root.Path(before.Dirs[i])
			if err != nil {
				return err
			}
			if err := os.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
				in.Log.Warn("left a directory the installer created, as it is not empty", "dir", before.Dirs[i], "err", err)
			}
		}
		return nil
	}
	*st = *restored
	return store.Save(st)
}

// Uninstall restores every file the installer replaced, removes those it
// created and the directories it made, and then its state. With a restarter,
// containerd restarts once the files are back, before the hosts.toml files that
// hopless-nri wrote are handed back, so that a pre-installed plugin is gone by
// then; without one, stop the plugin first.
func (in *Installer) Uninstall(ctx context.Context) (*Result, error) {
	st, store, err := in.loadState()
	if err != nil {
		return nil, err
	}
	exists, err := store.Exists()
	if err != nil {
		return nil, err
	}
	res := &Result{}
	if !exists && len(st.Dirs) == 0 {
		return res, nil
	}
	restartFirst := in.Restart != nil && len(st.Files) > 0
	if !restartFirst {
		if err := in.restoreHosts(st); err != nil {
			return res, err
		}
	}
	for i := len(st.Files) - 1; i >= 0; i-- {
		f := st.Files[i]
		if err := in.undo(st, store, f); err != nil {
			return res, err
		}
		res.Changed = append(res.Changed, f.Path)
	}
	if restartFirst {
		if err := in.restartAndCheck(ctx); err != nil {
			return res, err
		}
		res.Restarted = true
		if err := in.restoreHosts(st); err != nil {
			return res, err
		}
	}
	return res, in.removeDirs(st, store, res)
}

// removeDirs removes the directories the installer made, hopless-nri's state
// directory with its contents, and the state. The directories of the state itself
// go last, after the state: a run killed in between leaves them holding nothing
// else, and loadState claims them.
func (in *Installer) removeDirs(st *state.State, store state.Store, res *Result) error {
	var chain, others []string
	for _, d := range st.Dirs {
		if d == state.Dir || strings.HasPrefix(state.Dir, d+"/") {
			chain = append(chain, d)
		} else {
			others = append(others, d)
		}
	}
	remove := func(dirs []string) error {
		for i := len(dirs) - 1; i >= 0; i-- {
			rp, err := in.Root.Path(dirs[i])
			if err != nil {
				return err
			}
			if dirs[i] == st.NRIStateDir {
				// The plugin's own files; what it replaced is back in place by now.
				err = os.RemoveAll(rp)
			} else {
				err = os.Remove(rp)
			}
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				in.Log.Warn("left a directory the installer created, as it is not empty", "dir", dirs[i], "err", err)
			default:
				res.Changed = append(res.Changed, dirs[i])
				in.step()
			}
		}
		return nil
	}
	if err := remove(others); err != nil {
		return err
	}
	if err := store.Remove(); err != nil {
		return err
	}
	in.step()
	return remove(slices.DeleteFunc(chain, func(d string) bool { return d == state.Dir }))
}

func decodeTOML(b []byte, v any) error {
	_, err := toml.Decode(string(b), v)
	return err
}
