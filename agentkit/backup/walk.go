package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/selection"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// VaultMarker is the file a vault keeps at the top of its data directory;
// a directory holding it is never backed up.
const VaultMarker = ".vaultnode-vault"

// item is one node on its way to the listing.
type item struct {
	node tree.Node
	// fd is open for reading when the content must be read; the reader
	// closes it (through file when it made one).
	fd   int
	file *os.File
	// before, when set, is the file through fd before anything was read.
	before *unix.Statx_t
	// known holds the chunks of the file's previous version (a committed
	// version's, so the vault has them): a chunk read again that is among
	// them is neither copied nor offered to the vault. An edit in a large
	// file then costs the reading and hashing, not a lack query and a copy
	// of every chunk; and the reader cuts where those chunks ended without
	// looking for boundaries while the content is theirs (cutKnown).
	known *knownChunks
	done  chan struct{} // closed when node is final
}

var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

type walker struct {
	ctx  context.Context
	sel  *selection.Selection
	cfg  wire.Config
	prev *tree.Reader
	// The listing cache prev reads (its path, directory and tag: when its
	// synchronization started), the directories this walk records for the
	// next one's index, and the renamed directory being walked (renamed.go).
	prevPath, prevDir string
	prevTag           int64
	dirs              *dirRecorder
	index             map[dirKey][]byte
	indexLoaded       bool
	ren               *renamed
	renOpened         int
	// prevStarted is when the synchronization that recorded prev began:
	// its nodes are reused only when not racy (see trusted).
	prevStarted time.Time
	pcur        *tree.Node
	order       chan<- []*item
	batch       []*item // for order, sent when orderBatch long or at the end
	work        chan<- *item
	stats       *Stats
	links       map[[2]uint64][]byte // (dev, ino) of multi-link files -> first path
	log         *zap.Logger
	// spill holds the sorted runs of very wide directories.
	spill string
	// sourceOf, when set, maps a configured root to the directory actually
	// read (a snapshot of it); paths are recorded as the root's.
	sourceOf func(root string) string
	// pf reads ahead of the walk and hands over the stats it took.
	pf *prefetcher
	// pseudo holds, by device, the pseudo filesystem's name or "" for
	// any other: a filesystem's type is its device's, so each device's
	// first directory is asked and the rest are not (an open and a
	// statfs a directory: a fifth of a no-change backup's CPU on a tree
	// of small directories; docs/performance.md, "Real trees").
	pseudo map[uint64]string
}

// roots returns the configured paths cleaned, sorted in tree order, with
// any path inside another dropped.
func roots(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, path.Clean(p))
	}
	sort.Slice(out, func(i, j int) bool { return tree.Compare([]byte(rel(out[i])), []byte(rel(out[j]))) < 0 })
	var kept []string
	for _, p := range out {
		inside := false
		for _, k := range kept {
			if k == "/" || p == k || strings.HasPrefix(p, k+"/") {
				inside = true
			}
		}
		if !inside {
			kept = append(kept, p)
		}
	}
	return kept
}

func rel(abs string) string {
	if abs == "/" {
		return "."
	}
	return strings.TrimPrefix(abs, "/")
}

func (w *walker) run() error {
	if w.prev != nil {
		w.advance()
	}
	rs := roots(w.cfg.Paths)
	ahead := make([]prefetchDir, len(rs))
	for i, root := range rs {
		ahead[i] = prefetchDir{src: w.source(root), abs: root}
	}
	if w.pf == nil { // tests hand one over
		var changedSince time.Time // all read: no previous listing
		if w.prev != nil {
			// files changed since are read again; the others keep what was recorded
			changedSince = w.prevStarted.Add(-racyCoarse)
		}
		pf, stop := startPrefetch(w.ctx, w.sel, ahead, changedSince)
		defer stop()
		w.pf = pf
	}
	for i, root := range rs {
		src := ahead[i].src
		n, err := meta.Lstat(unix.AT_FDCWD, src)
		n.Path = []byte(rel(root))
		if err != nil && n.Type == 0 {
			if errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("selected path %s does not exist: fix the configuration", root)
			}
			n.Type = tree.TypeDir
			n.Status, n.Err = tree.StatusUnreadable, err.Error()
			if err := w.emit(n); err != nil {
				return err
			}
			continue
		}
		if err := w.visit(unix.AT_FDCWD, src, root, n, n.Dev, w.sel.IncludesPath(root)); err != nil {
			return err
		}
	}
	if err := w.catchUp(nil); err != nil {
		return err
	}
	return w.flush()
}

// Racy objects. An object changed again in the same timestamp tick in which
// a synchronization read it keeps the ctime it was read with ("racy" in
// git's words), so its size, mtime, ctime and inode can match the record
// while its content or metadata do not. The object was read at or after
// the synchronization began, so its recorded ctime is then no earlier than
// that start less one tick; such objects are read again, once. On
// filesystems with sub-second timestamps a tick is one of the kernel's
// clock ticks (the resolution of CLOCK_REALTIME_COARSE, 1/HZ: 4 ms on
// Debian); on those without it is up to 2 s (FAT). The price is small:
// only objects changed in the moments before a synchronization are read
// twice.
var racyFine = sync.OnceValue(func() time.Duration {
	var res unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_REALTIME_COARSE, &res); err != nil || res.Sec != 0 || res.Nsec <= 0 {
		return 20 * time.Millisecond
	}
	return 2 * time.Duration(res.Nsec) // two ticks, for the coarse clock's own lag
})

const racyCoarse = 2 * time.Second

// trusted reports whether prev, recorded by the previous synchronization,
// may stand for an object that still looks the same.
func (w *walker) trusted(prev *tree.Node) bool {
	if prev == nil {
		return false
	}
	margin := racyFine()
	if prev.Ctime.Nsec == 0 {
		margin = racyCoarse
	}
	return time.Unix(prev.Ctime.Sec, prev.Ctime.Nsec).Before(w.prevStarted.Add(-margin))
}

// source is the directory read for a configured root: the root itself, or
// the same directory in a read-only snapshot.
func (w *walker) source(root string) string {
	if w.sourceOf != nil {
		return w.sourceOf(root)
	}
	return root
}

// advance moves to the next node of the previous listing.
func (w *walker) advance() {
	n, err := w.prev.Next()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			w.log.Warn("listing cache unreadable past this point", zap.Error(err))
		}
		w.pcur, w.prev = nil, nil
		return
	}
	w.pcur = n
}

// catchUp records as deleted every previous node before p (all when p is nil)
// and returns the previous node at p, if any.
func (w *walker) catchUp(p []byte) error {
	for w.pcur != nil && (p == nil || tree.Compare(w.pcur.Path, p) < 0) {
		if w.pcur.Type != tree.TypeDeleted {
			atomic.AddInt64(&w.stats.Deleted, 1)
			if err := w.send(&item{node: tree.Node{Path: w.pcur.Path, Type: tree.TypeDeleted}, done: closedDone}, false); err != nil {
				return err
			}
		}
		w.advance()
	}
	return nil
}

// previous returns the object recorded at p, if any, and moves past it.
func (w *walker) previous(p []byte) (*tree.Node, error) {
	n, err := w.peek(p)
	if n != nil {
		w.advance()
	}
	return n, err
}

// peek is previous without moving past p: the object recorded at p, if
// any, stays the one the next previous(p) returns.
func (w *walker) peek(p []byte) (*tree.Node, error) {
	if err := w.catchUp(p); err != nil {
		return nil, err
	}
	if w.pcur != nil && bytes.Equal(w.pcur.Path, p) {
		return w.pcur, nil
	}
	return nil, nil
}

func (w *walker) send(it *item, read bool) error {
	w.batch = append(w.batch, it)
	if len(w.batch) >= orderBatch {
		if err := w.flush(); err != nil {
			if read {
				it.closeFile()
			}
			return err
		}
	}
	if read {
		select {
		case w.work <- it:
		case <-w.ctx.Done():
			it.closeFile()
			return w.ctx.Err()
		}
	}
	return nil
}

// flush sends the nodes batched for the listing writer.
func (w *walker) flush() error {
	if len(w.batch) == 0 {
		return nil
	}
	select {
	case w.order <- w.batch:
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
	w.batch = make([]*item, 0, orderBatch)
	return nil
}

// emit sends a node that needs no reading (after the previous listing's
// nodes that sort before it).
func (w *walker) emit(n tree.Node) error {
	prev, err := w.previous(n.Path)
	if err != nil {
		return err
	}
	keepAtime(&n, w.previousOf(prev, n.Path))
	return w.send(&item{node: n, done: closedDone}, false)
}

// keepAtime keeps the previous atime of an object that did not otherwise
// change: reading a file or listing a directory moves its atime, and
// recording every read would make each synchronization rewrite the listing.
// The atime recorded is the one of the object's last change.
func keepAtime(n, prev *tree.Node) {
	if prev != nil && prev.Type == n.Type && prev.Mtime == n.Mtime && prev.Ctime == n.Ctime && prev.Ino == n.Ino {
		n.Atime = prev.Atime
	}
}

// visit records the object name (relative to dirfd) and, for a directory,
// everything below it.
func (w *walker) visit(dirfd int, name, abs string, n tree.Node, rootDev uint64, included bool) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	switch n.Type {
	case tree.TypeDir:
		return w.visitDir(dirfd, name, abs, n, rootDev, included)
	case tree.TypeFile:
		return w.visitFile(dirfd, name, n, nil)
	default:
		return w.emit(n)
	}
}

// visitFile records a regular file, reading it when needed through op
// (left open by LstatOpen; visitFile closes it) or a descriptor of its own.
func (w *walker) visitFile(dirfd int, name string, n tree.Node, op *meta.Opened) error {
	keep := false
	defer func() {
		if op != nil && !keep {
			unix.Close(op.FD)
		}
	}()
	atomic.AddInt64(&w.stats.Files, 1)
	atomic.AddInt64(&w.stats.Bytes, n.Size)
	prev, err := w.previous(n.Path)
	if err != nil {
		return err
	}
	prev = w.previousOf(prev, n.Path)
	if n.Nlink > 1 {
		key := [2]uint64{n.Dev, n.Ino}
		if first, ok := w.links[key]; ok {
			n.LinkTo = first
			return w.send(&item{node: n, done: closedDone}, false)
		}
		w.links[key] = n.Path
	}
	if w.trusted(prev) && tree.Unchanged(prev, &n) && prev.Status == tree.StatusOK && prev.LinkTo == nil {
		n.Chunks, n.Extents, n.Sparse = prev.Chunks, prev.Extents, prev.Sparse
		keepAtime(&n, prev)
		return w.send(&item{node: n, done: closedDone}, false)
	}
	if n.Size == 0 {
		return w.send(&item{node: n, done: closedDone}, false) // nothing to read
	}
	known := newKnownChunks(prev)
	if op != nil {
		keep = true
		return w.send(&item{node: n, fd: op.FD, before: &op.Stat, known: known, done: make(chan struct{})}, true)
	}
	fd, err := openFile(dirfd, name)
	if err != nil {
		atomic.AddInt64(&w.stats.Unreadable, 1)
		n.Status, n.Err = tree.StatusUnreadable, err.Error()
		return w.send(&item{node: n, done: closedDone}, false)
	}
	return w.send(&item{node: n, fd: fd, known: known, done: make(chan struct{})}, true)
}

// knownChunks are the chunks of a file's previous version, in order, and
// where each first occurs.
type knownChunks struct {
	refs []tree.ChunkRef
	// at is nil for a few chunks (knownScan at most): first looks through
	// refs, and a file of one chunk costs no map.
	at map[[32]byte]int
}

// knownScan is the most chunks first looks through without a map.
const knownScan = 8

// newKnownChunks returns the chunks of a file's previous version; nil when
// it has none. It copies them: prev may be reused by its reader. A file of
// one chunk is read again when only its times or owner changed (touch,
// chown -R, a copy that did not keep them): its chunk is then the previous
// one, which goes neither to the uploader's copy nor to a lack query.
func newKnownChunks(prev *tree.Node) *knownChunks {
	if prev == nil || prev.Type != tree.TypeFile || prev.Status != tree.StatusOK || prev.LinkTo != nil || len(prev.Chunks) == 0 {
		return nil
	}
	k := &knownChunks{refs: slices.Clone(prev.Chunks)}
	if len(k.refs) <= knownScan {
		return k
	}
	k.at = make(map[[32]byte]int, len(k.refs))
	for i, c := range k.refs {
		if _, ok := k.at[c.ID]; !ok {
			k.at[c.ID] = i
		}
	}
	return k
}

// has says whether id is one of the chunks (none of a nil k).
func (k *knownChunks) has(id [32]byte) bool {
	_, ok := k.first(id)
	return ok
}

// first returns the first place of chunk id, if it is one of them (none
// of a nil k).
func (k *knownChunks) first(id [32]byte) (int, bool) {
	if k == nil {
		return 0, false
	}
	if k.at == nil {
		for i, c := range k.refs {
			if c.ID == id {
				return i, true
			}
		}
		return 0, false
	}
	i, ok := k.at[id]
	return i, ok
}

func openFile(dirfd int, name string) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return -1, fmt.Errorf("open: %w", err)
	}
	return fd, nil
}

// openDir opens a directory for reading its entries. O_NOATIME: reading
// it must not change the atime just recorded, or the next synchronization
// sees a change that is ours (only the owner or root may ask for that).
func openDir(dirfd int, name string) (int, error) {
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, name, dirFlags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, dirFlags, 0)
	}
	return fd, err
}

func (w *walker) visitDir(dirfd int, name, abs string, n tree.Node, rootDev uint64, included bool) error {
	atomic.AddInt64(&w.stats.Dirs, 1)
	if n.Dev != rootDev && !w.cfg.CrossMounts {
		n.MountPoint = true
		return w.emit(n)
	}
	fd, err := openDir(dirfd, name)
	if err != nil {
		atomic.AddInt64(&w.stats.Unreadable, 1)
		n.Status, n.Err = tree.StatusUnreadable, "open directory: "+err.Error()
		return w.emit(n)
	}
	d := os.NewFile(uintptr(fd), abs)
	defer d.Close()
	var ahead dirAhead
	if w.pf != nil {
		ahead = w.pf.take(n.Path, n.Dev, n.Ino)
	}
	var names *names
	if ahead.whole {
		// Read ahead whole: the same directory (dev, ino), listed and
		// stat'ed moments ago, as if read now.
		names = namesOf(ahead.names)
	} else if names, err = readNames(d, w.spill); err != nil { // bytewise order, as tree order wants
		atomic.AddInt64(&w.stats.Unreadable, 1)
		n.Status, n.Err = tree.StatusUnreadable, "read directory: "+err.Error()
		return w.emit(n)
	}
	defer names.close()
	if err := w.emit(n); err != nil {
		return err
	}
	w.dirs.add(&n)
	if !ahead.whole || ahead.has(VaultMarker) {
		var st unix.Stat_t
		if unix.Fstatat(fd, VaultMarker, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			return nil // this directory is a vault's data: only the directory itself is recorded
		}
	}
	var wide *statAhead
	if !ahead.whole && names.more(len(ahead.names)+statAheadMin) {
		wide = startStatAhead(fd, names, ahead.has)
		defer wide.close() // before names and d are closed
	}
	at := 0 // where ahead.find looks on from
	for {
		var child string
		var stx *unix.Statx_t
		var ok bool
		if wide != nil {
			child, stx, ok, err = wide.next()
		} else {
			child, ok, err = names.next()
		}
		if err != nil {
			return fmt.Errorf("read directory %s: %w", abs, err)
		}
		if !ok {
			return nil
		}
		cabs := abs + "/" + child
		if abs == "/" {
			cabs = "/" + child
		}
		if ex, _ := w.sel.Excluded(cabs); ex {
			continue
		}
		cpath := append(append(bytes.Clone(n.Path), '/'), child...)
		if string(n.Path) == "." {
			cpath = []byte(child)
		}
		prev, err := w.peek(cpath)
		if err != nil {
			return err
		}
		prev = w.previousOf(prev, cpath)
		if !w.trusted(prev) {
			prev = nil
		}
		var cn tree.Node
		var op *meta.Opened
		if stx == nil {
			stx, _ = ahead.find(child, &at)
		}
		if stx != nil {
			cn, op, err = meta.LstatOpenFrom(fd, child, prev, stx)
			if err != nil {
				// Changed or replaced since it was read ahead: stat it now.
				if op != nil {
					unix.Close(op.FD)
				}
				cn, op, err = meta.LstatOpen(fd, child, prev)
			}
		} else {
			cn, op, err = meta.LstatOpen(fd, child, prev)
		}
		if cn.Type == 0 {
			if errors.Is(err, unix.ENOENT) {
				continue // vanished since the directory was read
			}
			atomic.AddInt64(&w.stats.Unreadable, 1)
			cn = tree.Node{Path: cpath, Type: tree.TypeFile, Status: tree.StatusUnreadable, Err: fmt.Sprint(err)}
			if err := w.emit(cn); err != nil {
				return err
			}
			continue
		}
		cn.Path = cpath
		if err != nil {
			w.log.Debug("metadata partly unreadable", zap.String("path", cabs), zap.Error(err))
		}
		cinc := included || (w.sel.HasIncludes() && w.sel.IncludesPath(cabs))
		if cn.Type == tree.TypeDir {
			if w.sel.Auto() && w.pseudoFS(fd, child, cn.Dev) != "" {
				continue
			}
		} else if !w.sel.Included(cabs, cinc) {
			if op != nil {
				unix.Close(op.FD)
			}
			continue
		}
		if cn.Type == tree.TypeFile {
			if err := w.ctx.Err(); err != nil {
				if op != nil {
					unix.Close(op.FD)
				}
				return err
			}
			err = w.visitFile(fd, child, cn, op)
		} else {
			started := prev == nil && cn.Type == tree.TypeDir && w.startRenamed(&cn)
			err = w.visit(fd, child, cabs, cn, rootDev, cinc)
			if started {
				w.endRenamed()
			}
		}
		if err != nil {
			return err
		}
	}
}

// pseudoFS names the pseudo filesystem of the directory name in dirfd,
// on device dev, or "".
func (w *walker) pseudoFS(dirfd int, name string, dev uint64) string {
	if pfs, ok := w.pseudo[dev]; ok {
		return pfs
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_PATH, 0)
	if err != nil {
		return "" // asked again at the device's next directory
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Dev != dev {
		return selection.PseudoFS(fd) // replaced since its stat: not remembered
	}
	if w.pseudo == nil {
		w.pseudo = map[uint64]string{}
	}
	w.pseudo[dev] = selection.PseudoFS(fd)
	return w.pseudo[dev]
}
