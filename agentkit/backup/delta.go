package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/selection"
	"vaultnode/internal/chunker"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Changes are what continuous capture reported: paths that changed
// (created, written, renamed from or to, deleted) and directories whose
// whole subtree must be read again.
type Changes struct {
	Paths  []string
	Rescan []string
}

// JournalVault is what a continuous delta needs of the vault.
type JournalVault interface {
	Vault
	Journal(ctx context.Context, session string, j wire.JournalCommit) (*wire.Journal, error)
}

// DeltaResult is a recorded journal entry.
type DeltaResult struct {
	Journal  *wire.Journal
	Stats    Stats
	Problems []string
	Duration time.Duration
}

// Delta records the current state of the changed paths as a journal entry
// on top of the configuration's last version: changed objects with their
// content, vanished ones as deleted. Deletions inside rescanned directories
// that the kernel did not report are found by the next checkpoint (a full
// synchronization).
func Delta(ctx context.Context, o Options, jv JournalVault, ch Changes, when time.Time) (*DeltaResult, error) {
	o.defaults(2)
	gear, err := chunker.NewGear(o.GearKey)
	if err != nil {
		return nil, err
	}
	sel, err := selection.New(selection.Options{Include: o.Config.Include, Exclude: o.Config.Exclude,
		NoAuto: o.Config.NoAutoExclude, StatePath: o.State.Path})
	if err != nil {
		return nil, err
	}
	targets := deltaTargets(roots(o.Config.Paths), sel, ch)
	stats := &Stats{Start: time.Now()}
	if len(targets) == 0 {
		return &DeltaResult{Stats: *stats}, nil
	}
	sess, err := o.Vault.Open(ctx, o.Config.Name)
	if err != nil {
		return nil, fmt.Errorf("open session: %w", err)
	}
	defer func() {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		o.Vault.Abort(actx, sess.ID)
		cancel()
	}()
	produce := func(ctx context.Context, up *uploader, order chan<- []*item, work chan<- *item) error {
		w := &walker{ctx: ctx, sel: sel, cfg: o.Config, order: order, work: work, stats: stats,
			links: map[[2]uint64][]byte{}, log: o.Log, spill: filepath.Join(o.State.Path, "tmp")}
		for _, t := range targets {
			if err := w.deltaTarget(t); err != nil {
				return err
			}
		}
		return w.flush()
	}
	opened := func(context.Context) (string, error) { return sess.ID, nil }
	listing, problems, err := pipeline(ctx, o, opened, gear, stats, nil, produce)
	if err != nil {
		return nil, err
	}
	j, err := jv.Journal(ctx, sess.ID, wire.JournalCommit{Listing: listing, Time: when})
	if err != nil {
		return nil, fmt.Errorf("record journal entry: %w", err)
	}
	return &DeltaResult{Journal: j, Stats: stats.Snapshot(), Problems: problems, Duration: time.Since(stats.Start)}, nil
}

type deltaTarget struct {
	abs    string
	root   string // the configured root it lies under
	rescan bool
}

// deltaTargets keeps the changes under the roots and selected, in tree
// order, without duplicates and without paths a rescan covers.
func deltaTargets(roots []string, sel *selection.Selection, ch Changes) []deltaTarget {
	var ts []deltaTarget
	add := func(p string, rescan bool) {
		p = path.Clean(p)
		for _, r := range roots {
			if p == r || strings.HasPrefix(p, r+"/") || r == "/" {
				if ex, _ := sel.ExcludedPath(p); ex {
					return
				}
				ts = append(ts, deltaTarget{abs: p, root: r, rescan: rescan})
				return
			}
		}
	}
	for _, p := range ch.Rescan {
		add(p, true)
	}
	for _, p := range ch.Paths {
		add(p, false)
	}
	sort.SliceStable(ts, func(i, j int) bool {
		c := tree.Compare([]byte(rel(ts[i].abs)), []byte(rel(ts[j].abs)))
		if c == 0 {
			return ts[i].rescan && !ts[j].rescan
		}
		return c < 0
	})
	var out []deltaTarget
	var cover string // the last rescan directory
	for _, t := range ts {
		if len(out) > 0 && out[len(out)-1].abs == t.abs {
			continue
		}
		if cover != "" && (t.abs == cover || strings.HasPrefix(t.abs, cover+"/") || cover == "/") {
			continue
		}
		if t.rescan {
			cover = t.abs
		}
		out = append(out, t)
	}
	return out
}

// deltaTarget records one changed path (and, for a rescan, its subtree).
func (w *walker) deltaTarget(t deltaTarget) error {
	n, err := meta.Lstat(unix.AT_FDCWD, t.abs)
	n.Path = []byte(rel(t.abs))
	if n.Type == 0 {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			atomic.AddInt64(&w.stats.Deleted, 1)
			return w.send(&item{node: tree.Node{Path: n.Path, Type: tree.TypeDeleted}, done: closedDone}, false)
		}
		atomic.AddInt64(&w.stats.Unreadable, 1)
		n.Type, n.Status, n.Err = tree.TypeFile, tree.StatusUnreadable, fmt.Sprint(err)
		return w.emit(n)
	}
	var rootDev uint64
	if rn, err := meta.Lstat(unix.AT_FDCWD, t.root); err == nil {
		rootDev = rn.Dev
	}
	switch {
	case n.Type == tree.TypeDir && t.rescan:
		return w.visit(unix.AT_FDCWD, t.abs, t.abs, n, rootDev, w.sel.IncludesPath(t.abs))
	case n.Type == tree.TypeDir:
		atomic.AddInt64(&w.stats.Dirs, 1)
		if n.Dev != rootDev && !w.cfg.CrossMounts {
			n.MountPoint = true
		}
		return w.emit(n)
	case n.Type == tree.TypeFile:
		if !w.sel.Included(t.abs, false) {
			return nil
		}
		dir, name := path.Split(t.abs)
		dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			atomic.AddInt64(&w.stats.Unreadable, 1)
			n.Status, n.Err = tree.StatusUnreadable, "open directory: "+err.Error()
			return w.emit(n)
		}
		defer unix.Close(dfd)
		return w.visitFile(dfd, name, n, nil)
	default:
		return w.emit(n)
	}
}
