package backup

import (
	"container/heap"
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/selection"
	"vaultnode/internal/tree"
)

// Prefetch tuning. The walker reads a tree one directory at a time, in
// tree order, so on a cold cache it would wait for one directory block or
// inode table block after another. Readers running ahead of it, each in a
// different directory, keep several of those reads in flight and hand the
// walker each directory's stats (docs/performance.md, "The walker's second
// statx" and "Read-ahead in tree order"): on this machine's virtual disk a
// cold stat of 50,000 files in 512 directories takes 0.94 s from one
// thread, 0.40 s from four and 0.28 s from sixteen.
const (
	prefetchReaders = 8
	// prefetchPending bounds the directories waiting to be read ahead.
	// Subdirectories found when the queue is full wait apart, up to
	// prefetchOverflow of them, and join the queue as it empties; past
	// that a subtree is simply read cold (docs/performance.md, item 66).
	prefetchPending  = 16384
	prefetchOverflow = 32768
	// prefetchKept bounds the stats kept for the walker (256 bytes each):
	// a reader starts no directory while that many wait for the walker,
	// unless the walker waits for that very directory.
	prefetchKept = 4096
	// prefetchDirKept bounds the stats kept of one directory; the walker
	// stats the rest of a wider one itself, several at once (statAhead),
	// and the reader stats only its subdirectories past that bound.
	prefetchDirKept = 1024
)

// readAhead is what the prefetcher learnt of one directory: the statx of
// each entry (asked for meta.StatxMask), which the walker uses instead of
// calling statx again (docs/performance.md, "The walker's second statx").
// The walker takes it only for the same directory inode.
type readAhead struct {
	at       []byte // the directory's path, as recorded: its place in tree order
	dev, ino uint64
	dirAhead
}

// cost is what a read-ahead counts against prefetchKept: its stats, and
// one for the directory itself so that empty ones are bounded too.
func (ra *readAhead) cost() int { return len(ra.stats) + 1 }

// dirAhead is what take hands the walker of one directory: the entries
// stat'ed, in byte order, each with its stat. They are slices, not a map:
// a map's values of 256 bytes are each allocated apart, and the walker
// asks for the names in byte order anyway, so it finds each one by moving
// a cursor (docs/performance.md, item 64).
type dirAhead struct {
	names []string
	stats []unix.Statx_t // in the order listed
	// order[i] is the index in stats of names[i]'s; nil when they are in
	// the same order.
	order []int32
	// whole: names are all the directory's entries, every one of them
	// stat'ed; the walker lists the directory no second time
	// (docs/performance.md, "The walker's names from the read-ahead").
	whole bool
}

// sortedAhead returns the entries stat'ed, names[i] with stats[i] in the
// order listed, with the names sorted (bytewise, as tree order wants).
// The stats stay where they are.
func sortedAhead(names []string, stats []unix.Statx_t, whole bool) dirAhead {
	d := dirAhead{names: names, stats: stats, whole: whole}
	if slices.IsSorted(names) {
		return d
	}
	d.order = make([]int32, len(names))
	for i := range d.order {
		d.order[i] = int32(i)
	}
	slices.SortFunc(d.order, func(a, b int32) int { return strings.Compare(names[a], names[b]) })
	d.names = make([]string, len(names))
	for i, j := range d.order {
		d.names[i] = names[j]
	}
	return d
}

// find returns the stat of name, if it was read ahead. Asked in byte
// order, it looks on from where the last call stopped (*at, 0 at first).
func (d *dirAhead) find(name string, at *int) (*unix.Statx_t, bool) {
	i := *at
	for i < len(d.names) && d.names[i] < name {
		i++
	}
	*at = i
	if i == len(d.names) || d.names[i] != name {
		return nil, false
	}
	if d.order != nil {
		return &d.stats[d.order[i]], true
	}
	return &d.stats[i], true
}

// has reports whether name was read ahead, wherever it falls.
func (d *dirAhead) has(name string) bool {
	_, ok := slices.BinarySearch(d.names, name)
	return ok
}

// prefetcher reads directories and stats their entries for the walker,
// nearest to the walker first (in tree order), waiting when prefetchKept
// stats wait for it. It never opens files, follows the walker's
// exclusions, stays on the filesystem of the root it started from (other
// filesystems are read cold, and pseudo-filesystems never) and stops when
// the walk ends.
type prefetcher struct {
	ctx context.Context
	sel *selection.Selection
	// changedSince: of the files and symlinks changed since then (zero:
	// all), the blocks the walker will read besides their inodes are
	// read ahead by blockAhead: extended attributes that have a block of
	// their own (xattrBlock), symlink targets kept in a block.
	changedSince time.Time
	blockAhead   func(dirfd int, path, name string, link bool)

	mu      sync.Mutex
	cond    *sync.Cond
	pending pendingDirs // by tree order: the walker's next directory first
	reading map[string]bool
	busy    int
	done    bool

	// known holds the stats of directories read ahead, by path (as
	// recorded: relative to the root set), until the walker takes them;
	// kept counts their cost. walkerAt is the directory the walker
	// entered last: it walks in tree order, so a directory before it will
	// not be asked for. waiting is the directory the walker waits for
	// ("" none): being read, or pending.
	known    map[string]*readAhead
	kept     int
	walkerAt []byte
	waiting  string
	// byOrder holds what known holds, nearest to the walker first, so
	// that the stats it has gone past are found at the front; an entry
	// known no longer holds (taken, or kept again) is dropped when it
	// reaches the front.
	byOrder keptDirs
	// overflow holds, in tree order within each, the subdirectories found
	// while pending was full (overflowed counts them all): they join
	// pending as it empties.
	overflow   [][]prefetchDir
	overflowed int
}

// take hands the walker, as it enters the directory at path (dev, ino),
// the stats read ahead in it, or nil. When a reader is reading that
// directory, or will next, it waits for it rather than stat the entries
// again itself.
func (p *prefetcher) take(path []byte, dev, ino uint64) dirAhead {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.walkerAt = append(p.walkerAt[:0], path...)
	if p.cond != nil {
		p.waiting = string(path)
		p.dropPassed()
		for !p.done && (p.reading[p.waiting] || (len(p.pending) > 0 && p.pending[0].path == p.waiting)) {
			p.cond.Broadcast()
			p.cond.Wait()
		}
		p.waiting = ""
		defer p.cond.Broadcast() // room for the readers
	}
	ra := p.known[string(path)]
	if ra == nil {
		return dirAhead{}
	}
	delete(p.known, string(path))
	p.kept -= ra.cost()
	if ra.dev != dev || ra.ino != ino {
		return dirAhead{} // another directory now has that name
	}
	return ra.dirAhead
}

// dropPassed forgets the pending directories and the stats the walker
// has gone past (directories it skipped). p.mu is held. Both are ordered
// (docs/performance.md, "Real trees"): every reader
// calls this each time it looks for work, and a scan of all the stats
// kept took a tenth of an initial backup's CPU on a tree of small
// directories.
func (p *prefetcher) dropPassed() {
	if p.walkerAt == nil {
		return
	}
	for len(p.pending) > 0 && p.pending[0].path != p.waiting && tree.Compare(p.pending[0].at, p.walkerAt) <= 0 {
		heap.Pop(&p.pending)
	}
	for len(p.byOrder) > 0 {
		ra := p.byOrder[0]
		live := p.known[string(ra.at)] == ra
		if live && (string(ra.at) == p.waiting || tree.Compare(ra.at, p.walkerAt) > 0) {
			return
		}
		heap.Pop(&p.byOrder)
		if live {
			delete(p.known, string(ra.at))
			p.kept -= ra.cost()
		}
	}
}

// keep stores a directory's stats for the walker unless the walker has
// entered it already and does not wait for it. p.mu is held.
func (p *prefetcher) keep(ra *readAhead) {
	path := string(ra.at)
	if path != p.waiting && p.walkerAt != nil && tree.Compare(ra.at, p.walkerAt) <= 0 {
		return
	}
	if p.known == nil {
		p.known = map[string]*readAhead{}
	}
	if old := p.known[path]; old != nil {
		p.kept -= old.cost()
	}
	p.known[path] = ra
	p.kept += ra.cost()
	heap.Push(&p.byOrder, ra)
}

type prefetchDir struct {
	src  string // where it is read (a snapshot's copy of the tree, or the tree)
	abs  string // the path the selection sees
	path string // as recorded: rel(abs)
	at   []byte // path, compared without a copy each time
	dev  uint64 // the device of its root; 0 for a root, learnt when read
}

// pendingDirs is a heap of directories by tree order of their paths.
type pendingDirs []prefetchDir

func (h pendingDirs) Len() int           { return len(h) }
func (h pendingDirs) Less(i, j int) bool { return tree.Compare(h[i].at, h[j].at) < 0 }
func (h pendingDirs) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *pendingDirs) Push(x any)        { *h = append(*h, x.(prefetchDir)) }
func (h *pendingDirs) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// keptDirs is a heap of the stats read ahead by tree order of their
// directories.
type keptDirs []*readAhead

func (h keptDirs) Len() int           { return len(h) }
func (h keptDirs) Less(i, j int) bool { return tree.Compare(h[i].at, h[j].at) < 0 }
func (h keptDirs) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *keptDirs) Push(x any)        { *h = append(*h, x.(*readAhead)) }
func (h *keptDirs) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return x
}

// startPrefetch reads ahead under each root (src is read, abs selects) and
// returns the function that stops the readers and waits for them. The
// walker reads the extended attributes and symlink targets of objects
// changed since changedSince (zero: of all): their blocks are read ahead
// too.
func startPrefetch(ctx context.Context, sel *selection.Selection, roots []prefetchDir, changedSince time.Time) (p *prefetcher, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	p = &prefetcher{ctx: ctx, sel: sel, reading: map[string]bool{}, changedSince: changedSince, blockAhead: readBlock}
	for _, r := range roots {
		r.path = rel(r.abs)
		r.at = []byte(r.path)
		heap.Push(&p.pending, r)
	}
	p.cond = sync.NewCond(&p.mu)
	var wg sync.WaitGroup
	for range prefetchReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.reader()
		}()
	}
	go func() {
		<-ctx.Done()
		p.mu.Lock()
		p.done = true
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	return p, func() {
		cancel()
		wg.Wait()
	}
}

// next waits for the next directory to read; false when there is none
// left or the walk ended. p.mu is held.
func (p *prefetcher) next() (prefetchDir, bool) {
	for {
		if p.done {
			return prefetchDir{}, false
		}
		p.dropPassed()
		p.refill()
		if len(p.pending) > 0 && (p.kept < prefetchKept || p.pending[0].path == p.waiting) {
			return heap.Pop(&p.pending).(prefetchDir), true
		}
		if len(p.pending) == 0 && p.busy == 0 {
			// Nothing pending and no reader can add more.
			p.done = true
			p.cond.Broadcast()
			return prefetchDir{}, false
		}
		p.cond.Wait()
	}
}

func (p *prefetcher) reader() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		d, ok := p.next()
		if !ok {
			return
		}
		p.busy++
		p.reading[d.path] = true
		p.mu.Unlock()

		ra, subs := p.read(d)

		p.mu.Lock()
		p.busy--
		delete(p.reading, d.path)
		if ra != nil {
			p.keep(ra)
		}
		p.queue(subs)
		p.cond.Broadcast()
	}
}

// queue adds subs, a directory's subdirectories in tree order, to the
// directories pending; those past prefetchPending wait in the overflow,
// those past prefetchOverflow are left to the walker. p.mu is held.
func (p *prefetcher) queue(subs []prefetchDir) {
	n := min(len(subs), max(0, prefetchPending-len(p.pending)))
	for _, s := range subs[:n] {
		heap.Push(&p.pending, s)
	}
	rest := subs[n:min(len(subs), n+prefetchOverflow-p.overflowed)]
	if len(rest) > 0 {
		p.overflow = append(p.overflow, slices.Clone(rest)) // not the queued ones' array
		p.overflowed += len(rest)
	}
}

// refill moves directories from the overflow to pending once pending is
// half empty, the first found first. p.mu is held.
func (p *prefetcher) refill() {
	for len(p.overflow) > 0 && len(p.pending) <= prefetchPending/2 {
		first := p.overflow[0]
		n := min(len(first), prefetchPending-len(p.pending))
		for _, s := range first[:n] {
			heap.Push(&p.pending, s)
		}
		p.overflowed -= n
		clear(first[:n]) // their paths are pending's now
		if n == len(first) {
			p.overflow[0] = nil
			p.overflow = p.overflow[1:]
		} else {
			p.overflow[0] = first[n:]
		}
	}
}

// xattrBlock reports whether a regular file has more blocks than its data
// fills: on ext4 and XFS, most often a block of extended attributes (and
// ACLs) that did not fit in the inode. The walker reads a file's
// attributes (flistxattr, getxattr) when it records it: for files whose
// attributes have a block of their own, that is one cold read of the disk
// after another, 4.2 of 8.4 s of an initial backup of 40,000 small files
// with three attributes each (docs/performance.md, item 69). Readers list
// them ahead, several directories at once; files without such a block
// (most; and every file on btrfs, which keeps attributes beside the
// inode) cost nothing more. A large file's extent tree blocks look alike
// and cost one system call that reads nothing.
func xattrBlock(stx *unix.Statx_t) bool {
	if stx.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	bs := uint64(stx.Blksize)
	if bs == 0 {
		bs = 4096
	}
	return stx.Blocks*512 > (stx.Size+bs-1)/bs*bs
}

// readBlock reads the names of a file's extended attributes, or a
// symlink's target, for nothing but to have their block read. Symlinks of
// up to 59 bytes (ext4) keep their target in the inode; longer ones in a
// block, read cold one after another by the walker before this: 0.96 of
// 2.46 sampled s of an initial backup of 100,000 symlinks, about half of
// them long (docs/performance.md, item 70).
func readBlock(dirfd int, path, name string, link bool) {
	if link {
		var b [1]byte
		unix.Readlinkat(dirfd, name, b[:])
		return
	}
	unix.Llistxattr(path, nil)
}

func statxCtime(stx *unix.Statx_t) time.Time {
	return time.Unix(stx.Ctime.Sec, int64(stx.Ctime.Nsec))
}

// read lists d, stats each entry and returns the stats for the walker
// (nil when d could not be read to its end) and the subdirectories the
// walker will enter.
func (p *prefetcher) read(d prefetchDir) (*readAhead, []prefetchDir) {
	fd, err := openDir(unix.AT_FDCWD, d.src)
	if err != nil {
		return nil, nil
	}
	f := os.NewFile(uintptr(fd), d.src)
	defer f.Close()
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return nil, nil
	}
	if d.dev == 0 {
		d.dev = st.Dev
	}
	var subs []prefetchDir
	var names []string
	var stats []unix.Statx_t
	complete := true // every entry listed is in names
	for {
		ents, err := f.ReadDir(256)
		if n := min(len(ents), prefetchDirKept-len(names)); n > 0 {
			names, stats = slices.Grow(names, n), slices.Grow(stats, n) // most directories: one allocation each
		}
		for _, e := range ents {
			if p.ctx.Err() != nil {
				return nil, nil
			}
			if len(names) >= prefetchDirKept && !e.IsDir() {
				// Not kept: the walker stats the rest of a wide
				// directory itself, several at once (statAhead).
				complete = false
				continue
			}
			var stx unix.Statx_t
			if meta.Statx(fd, e.Name(), &stx) != nil {
				complete = false
				continue
			}
			if len(names) < prefetchDirKept {
				names = append(names, e.Name())
				stats = append(stats, stx)
			} else {
				complete = false
			}
			if !e.IsDir() {
				// Brings the blocks into the cache for the walker,
				// which reads each object's in turn.
				link := stx.Mode&unix.S_IFMT == unix.S_IFLNK && stx.Blocks > 0
				if (link || xattrBlock(&stx)) && !statxCtime(&stx).Before(p.changedSince) {
					p.blockAhead(fd, d.src+"/"+e.Name(), e.Name(), link)
				}
				continue
			}
			abs := d.abs + "/" + e.Name()
			if d.abs == "/" {
				abs = "/" + e.Name()
			}
			if unix.Mkdev(stx.Dev_major, stx.Dev_minor) != d.dev {
				continue
			}
			if ex, _ := p.sel.Excluded(abs); ex {
				continue
			}
			path := rel(abs)
			subs = append(subs, prefetchDir{src: d.src + "/" + e.Name(), abs: abs, path: path, at: []byte(path), dev: d.dev})
		}
		if err != nil || len(ents) == 0 {
			// The first subdirectories in tree order are the ones the
			// walker enters soonest: they are kept when not all fit.
			slices.SortFunc(subs, func(a, b prefetchDir) int { return tree.Compare(a.at, b.at) })
			if errors.Is(err, io.EOF) || (err == nil && len(ents) == 0) {
				return &readAhead{at: d.at, dev: st.Dev, ino: st.Ino, dirAhead: sortedAhead(names, stats, complete)}, subs
			}
			return nil, subs // unreadable: the walker reports it
		}
	}
}
