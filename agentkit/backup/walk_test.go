package backup

import (
	"bytes"
	"container/heap"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/agentkit/selection"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// walkOnce walks root with prev as the previous listing, recorded by a
// synchronization that began at started, and returns each node and
// whether the walker asked for its content to be read.
func walkOnce(t *testing.T, root string, prev []tree.Node, started time.Time) (map[string]tree.Node, map[string]bool) {
	t.Helper()
	var buf bytes.Buffer
	tw, err := tree.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range prev {
		if err := tw.Write(&prev[i]); err != nil {
			t.Fatal(err)
		}
	}
	pr, err := tree.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	order, work := make(chan []*item, 100), make(chan *item, 100)
	w := &walker{ctx: context.Background(), sel: sel, cfg: wire.Config{Paths: []string{root}}, prev: pr, prevStarted: started,
		order: order, work: work, stats: &Stats{}, links: map[[2]uint64][]byte{}, log: zap.NewNop(), spill: t.TempDir()}
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	close(order)
	close(work)
	nodes, read := map[string]tree.Node{}, map[string]bool{}
	for batch := range order {
		for _, it := range batch {
			nodes[string(it.node.Path)] = it.node
		}
	}
	for it := range work {
		read[string(it.node.Path)] = true
		it.file.Close()
	}
	return nodes, read
}

// An object that looks unchanged keeps its recorded content and metadata
// without being read, unless it was recorded in the same timestamp tick as
// the synchronization read it: then it may have changed again unseen, and
// it is read again.
func TestWalkReusesOnlyObjectsNotRacy(t *testing.T) {
	root := t.TempDir()
	f := filepath.Join(root, "f")
	if err := os.WriteFile(f, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(f, "user.now", []byte("new"), 0); err != nil {
		t.Skipf("no user xattrs on %s: %v", root, err)
	}
	dir, err := meta.Lstat(unix.AT_FDCWD, root)
	if err != nil {
		t.Fatal(err)
	}
	dir.Path = []byte(root[1:])
	file, err := meta.Lstat(unix.AT_FDCWD, f)
	if err != nil {
		t.Fatal(err)
	}
	file.Path = []byte(root[1:] + "/f")
	// What the previous synchronization recorded: the same size, times and
	// inode, with other content and other xattrs.
	old := file
	old.Chunks = []tree.ChunkRef{{ID: [32]byte{1}, Len: 5}}
	old.Xattrs = []tree.Xattr{{Name: "user.then", Value: []byte("old")}}
	ctime := time.Unix(file.Ctime.Sec, file.Ctime.Nsec)

	nodes, read := walkOnce(t, root, []tree.Node{dir, old}, ctime.Add(time.Hour))
	got := nodes[string(file.Path)]
	if read[string(file.Path)] || len(got.Chunks) != 1 || got.Chunks[0] != old.Chunks[0] {
		t.Errorf("recorded long before the last synchronization: read %v, chunks %v; want the recorded chunks, unread", read[string(file.Path)], got.Chunks)
	}
	if len(got.Xattrs) != 1 || got.Xattrs[0].Name != "user.then" {
		t.Errorf("recorded long before the last synchronization: xattrs %v, want the recorded ones", got.Xattrs)
	}

	nodes, read = walkOnce(t, root, []tree.Node{dir, old}, ctime.Add(time.Millisecond))
	got = nodes[string(file.Path)]
	if !read[string(file.Path)] || len(got.Chunks) != 0 {
		t.Errorf("changed in the tick the last synchronization began: read %v, chunks %v; want it read again", read[string(file.Path)], got.Chunks)
	}
	if len(got.Xattrs) != 1 || got.Xattrs[0].Name != "user.now" {
		t.Errorf("changed in the tick the last synchronization began: xattrs %v, want the file's own", got.Xattrs)
	}
}

// The walker uses the stats the read-ahead took instead of calling statx
// again, only for the directory inode they were taken in, and stats again
// an entry replaced since.
func TestWalkUsesReadAheadStats(t *testing.T) {
	root := t.TempDir()
	d := filepath.Join(root, "d")
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := func(name string) unix.Statx_t {
		var stx unix.Statx_t
		if err := meta.Statx(unix.AT_FDCWD, filepath.Join(d, name), &stx); err != nil {
			t.Fatal(err)
		}
		return stx
	}
	for _, name := range []string{"a", "b", "old-b"} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := stat("a")
	a.Mode = unix.S_IFREG | 0o600 // what only the read-ahead's stat says
	// In a map's order: sortedAhead sorts them.
	ents := map[string]unix.Statx_t{"a": a, "b": stat("old-b")}
	if err := os.Remove(filepath.Join(d, "old-b")); err != nil {
		t.Fatal(err)
	}
	dst := stat(".")
	dirPath := root[1:] + "/d"
	whole := false // the read-ahead's listing is the whole directory
	walk := func(ino uint64) map[string]tree.Node {
		sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		p := &prefetcher{}
		var names []string
		var stats []unix.Statx_t
		for name, stx := range ents {
			names, stats = append(names, name), append(stats, stx)
		}
		p.keep(&readAhead{at: []byte(dirPath), dev: unix.Mkdev(dst.Dev_major, dst.Dev_minor), ino: ino, dirAhead: sortedAhead(names, stats, whole)})
		order, work := make(chan []*item, 100), make(chan *item, 100)
		w := &walker{ctx: context.Background(), sel: sel, cfg: wire.Config{Paths: []string{root}},
			order: order, work: work, stats: &Stats{}, links: map[[2]uint64][]byte{}, log: zap.NewNop(), spill: t.TempDir(), pf: p}
		if err := w.run(); err != nil {
			t.Fatal(err)
		}
		close(order)
		close(work)
		for it := range work {
			unix.Close(it.fd)
		}
		nodes := map[string]tree.Node{}
		for batch := range order {
			for _, it := range batch {
				nodes[string(it.node.Path)] = it.node
			}
		}
		if p.kept != 0 || len(p.known) != 0 {
			t.Errorf("the walker left %d stats of %d directories behind", p.kept, len(p.known))
		}
		return nodes
	}
	nodes := walk(dst.Ino)
	if got := nodes[dirPath+"/a"]; got.Mode != 0o600 {
		t.Errorf("a: mode %o, want the read-ahead's 600 (statx called again)", got.Mode)
	}
	if got, want := nodes[dirPath+"/b"], stat("b"); got.Ino != want.Ino || got.Status != tree.StatusOK || got.Err != "" {
		t.Errorf("b, replaced since the read-ahead: inode %d status %d %q; want inode %d, read cleanly", got.Ino, got.Status, got.Err, want.Ino)
	}
	// Stats taken in another directory inode of that name are not used.
	nodes = walk(dst.Ino + 1)
	if got := nodes[dirPath+"/a"]; got.Mode != 0o644 {
		t.Errorf("a, read ahead in another directory: mode %o, want its own 644", got.Mode)
	}

	// A directory read ahead whole is not listed again: c, made since, is
	// seen next time (as if made just after the listing); in another
	// directory inode of that name the walker lists it itself.
	if err := os.WriteFile(filepath.Join(d, "c"), []byte("c"), 0o644); err != nil {
		t.Fatal(err)
	}
	whole = true
	if nodes = walk(dst.Ino); nodes[dirPath+"/a"].Mode != 0o600 || nodes[dirPath+"/b"].Type != tree.TypeFile {
		t.Errorf("read ahead whole: a %+v b %+v, want both from the read-ahead", nodes[dirPath+"/a"], nodes[dirPath+"/b"])
	}
	if _, ok := nodes[dirPath+"/c"]; ok {
		t.Errorf("read ahead whole without c: the walker listed the directory again")
	}
	if nodes = walk(dst.Ino + 1); nodes[dirPath+"/c"].Type != tree.TypeFile {
		t.Errorf("read ahead in another directory: c missing, the walker used the other one's names")
	}
	// A vault's data directory read ahead whole is still recorded alone.
	if err := os.WriteFile(filepath.Join(d, VaultMarker), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ents[VaultMarker] = stat(VaultMarker)
	if nodes = walk(dst.Ino); len(nodes) != 2 || nodes[dirPath].Type != tree.TypeDir {
		t.Errorf("a vault's directory read ahead whole: recorded %d objects, want the root and it, nothing in it", len(nodes))
	}
}

// The stats of a directory read ahead, given in listing order, are sorted
// with their names; the walker, asking for a superset of them in byte
// order, finds each with its own stat and no other.
func TestDirAheadFind(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	all := map[string]bool{}
	for len(all) < 3000 {
		b := make([]byte, 1+rng.IntN(12))
		for i := range b {
			b[i] = byte(1 + rng.IntN(255))
			if b[i] == '/' {
				b[i] = '.'
			}
		}
		all[string(b)] = true
	}
	var names []string
	var stats []unix.Statx_t
	asked := slices.Sorted(maps.Keys(all))
	for i, name := range asked {
		if i%3 != 0 { // a third were not stat'ed ahead
			names = append(names, name)
			stats = append(stats, unix.Statx_t{Ino: uint64(i), Size: uint64(len(name))})
		}
	}
	check := func(d dirAhead) {
		t.Helper()
		if !slices.IsSorted(d.names) || len(d.stats) != len(d.names) {
			t.Fatalf("sortedAhead: %d names sorted %v, %d stats", len(d.names), slices.IsSorted(d.names), len(d.stats))
		}
		at := 0
		for i, name := range asked {
			stx, ok := d.find(name, &at)
			if ok != (i%3 != 0) || ok && (stx.Ino != uint64(i) || stx.Size != uint64(len(name))) {
				t.Fatalf("find(%q): %v %+v; want found %v with inode %d", name, ok, stx, i%3 != 0, i)
			}
			if d.has(name) != ok {
				t.Fatalf("has(%q) = %v, find says %v", name, !ok, ok)
			}
		}
	}
	check(sortedAhead(names, stats, false)) // listed in order already
	rng.Shuffle(len(names), func(i, j int) {
		names[i], names[j] = names[j], names[i]
		stats[i], stats[j] = stats[j], stats[i]
	})
	check(sortedAhead(names, stats, false))
}

// Stats of a directory the walker has entered already are not kept, unless
// it waits for them; those of directories it went past are dropped, in
// tree order, the next time a reader looks for work. Stats kept again for
// the same directory replace the first.
func TestReadAheadKeep(t *testing.T) {
	p := &prefetcher{}
	ents := func(path string, n int) *readAhead {
		ra := &readAhead{at: []byte(path)}
		for i := range n {
			ra.names = append(ra.names, string(rune(0x100+i)))
			ra.stats = append(ra.stats, unix.Statx_t{})
		}
		return ra
	}
	p.keep(ents("r/b", 1))
	p.keep(ents("r/b/x", 2))
	p.keep(ents("r/d", 3))
	p.keep(ents("r/d", 4)) // read again: replaces the first
	if p.kept != 2+3+5 {
		t.Fatalf("kept %d stats, want 10", p.kept)
	}
	p.take([]byte("r/c"), 0, 0)
	p.keep(ents("r/a", 1)) // behind the walker
	p.keep(ents("r/c", 1)) // entered
	if len(p.known) != 3 {
		t.Fatalf("kept %v, want r/b, r/b/x and r/d", p.known)
	}
	p.keep(ents("r/e", prefetchKept))
	p.mu.Lock()
	p.dropPassed()
	p.mu.Unlock()
	_, b := p.known["r/b"]
	_, bx := p.known["r/b/x"]
	if b || bx || len(p.known) != 2 || p.kept != 5+prefetchKept+1 {
		t.Fatalf("kept %d stats in %d directories, want r/d's 5 and r/e's %d", p.kept, len(p.known), prefetchKept+1)
	}
	if len(p.byOrder) != 3 { // r/d twice (one of them dropped when it is first), r/e
		t.Fatalf("%d stats in tree order, want 3", len(p.byOrder))
	}
	p.take([]byte("r/d"), 0, 0) // dev and ino differ: not handed over, but gone
	p.take([]byte("r/f"), 0, 0)
	p.mu.Lock()
	p.dropPassed()
	p.mu.Unlock()
	if len(p.known) != 0 || p.kept != 0 || len(p.byOrder) != 0 {
		t.Fatalf("after the walker passed everything: %d directories, %d stats, %d in order", len(p.known), p.kept, len(p.byOrder))
	}
}

// Readers take the pending directory nearest to the walker first, start
// none while prefetchKept stats wait for the walker, except the one the
// walker waits for, and the walker waits for a directory being read
// instead of reading it again.
func TestReadAheadOrderAndWait(t *testing.T) {
	p := &prefetcher{reading: map[string]bool{}}
	p.cond = sync.NewCond(&p.mu)
	for _, d := range []string{"r/b/x", "r/a", "r/b", "r/c"} {
		heap.Push(&p.pending, prefetchDir{path: d, at: []byte(d)})
	}
	p.mu.Lock()
	for _, want := range []string{"r/a", "r/b"} {
		d, ok := p.next()
		if !ok || d.path != want {
			t.Fatalf("next: %q, %v; want %q", d.path, ok, want)
		}
	}
	p.busy++ // a reader is at r/b/x's sibling: next must not end the prefetch
	p.kept = prefetchKept
	p.waiting, p.walkerAt = "r/c", []byte("r/c")
	if d, ok := p.next(); !ok || d.path != "r/c" {
		// The walker went past r/b/x and waits for r/c; stats are full.
		t.Fatalf("next with the stats full: %q, %v; want r/c", d.path, ok)
	}
	p.waiting, p.kept, p.busy = "", 0, 0
	p.reading["r/d"] = true
	p.mu.Unlock()

	got := make(chan dirAhead)
	go func() { got <- p.take([]byte("r/d"), 1, 2) }()
	p.mu.Lock()
	for p.waiting != "r/d" {
		p.cond.Wait()
	}
	delete(p.reading, "r/d")
	p.keep(&readAhead{at: []byte("r/d"), dev: 1, ino: 2, dirAhead: dirAhead{names: []string{"f"}, stats: []unix.Statx_t{{Ino: 7}}}})
	p.cond.Broadcast()
	p.mu.Unlock()
	if ents := <-got; len(ents.stats) != 1 || ents.stats[0].Ino != 7 {
		t.Fatalf("take of a directory being read: %v, want the reader's stats", ents)
	}
}

// A walk of many directories with the read-ahead running records every
// object once, in tree order, and leaves no stats behind (run with -race).
func TestWalkWithReadAhead(t *testing.T) {
	root := t.TempDir()
	want := 0
	for i := range 60 {
		for j := range 5 {
			d := filepath.Join(root, fmt.Sprintf("d%02d", i), fmt.Sprintf("s%d", j))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			for k := range 4 {
				if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", k)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want += 5
		}
		want++
	}
	// A directory wider than the read-ahead keeps, its names spilled in
	// runs: the reader stats its subdirectories, the walker the rest a
	// window ahead (statAhead). Each file's size tells its stat from
	// another's.
	defer func(n int) { spillAt = n }(spillAt)
	spillAt = 700
	wide := filepath.Join(root, "wide")
	sizes := map[string]int64{}
	if err := os.MkdirAll(wide, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range prefetchDirKept + 1500 {
		name := fmt.Sprintf("w%05d", (i*7919)%100000)
		if err := os.WriteFile(filepath.Join(wide, name), make([]byte, i%13), 0o644); err != nil {
			t.Fatal(err)
		}
		sizes[name] = int64(i % 13)
		want++
		if i%1000 == 999 {
			sub := filepath.Join(wide, fmt.Sprintf("sub%d", i))
			if err := os.MkdirAll(filepath.Join(sub, "deeper"), 0o755); err != nil {
				t.Fatal(err)
			}
			want += 2
		}
	}
	want++ // wide
	want++ // the root
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	order, work := make(chan []*item, 2*want), make(chan *item, 2*want)
	w := &walker{ctx: context.Background(), sel: sel, cfg: wire.Config{Paths: []string{root}},
		order: order, work: work, stats: &Stats{}, links: map[[2]uint64][]byte{}, log: zap.NewNop(), spill: t.TempDir()}
	if err := w.run(); err != nil {
		t.Fatal(err)
	}
	close(order)
	close(work)
	var last []byte
	got := 0
	for batch := range order {
		for _, it := range batch {
			if got > 0 && tree.Compare(last, it.node.Path) >= 0 {
				t.Fatalf("%s after %s: out of tree order", it.node.Path, last)
			}
			last = it.node.Path
			got++
			if size, ok := sizes[filepath.Base(string(it.node.Path))]; ok && (it.node.Size != size || it.node.Status != tree.StatusOK) {
				t.Fatalf("%s: size %d status %d, want %d: another entry's stat", it.node.Path, it.node.Size, it.node.Status, size)
			}
		}
	}
	for it := range work {
		unix.Close(it.fd)
	}
	if got != want {
		t.Errorf("recorded %d objects, want %d", got, want)
	}
	if w.pf.kept != 0 || len(w.pf.known) != 0 {
		t.Errorf("the walk left %d stats of %d directories behind", w.pf.kept, len(w.pf.known))
	}
}

// A pseudo filesystem mounted in the tree is left out even where the
// walker has already learnt its device, and the real directories around
// it are walked: the walker asks each device's type once.
func TestWalkSkipsPseudoFilesystems(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	root := t.TempDir()
	for _, d := range []string{"a", "p1", "p2", "z/p3", "z/y"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// p1 and z/p3 are the same sysfs (one superblock per network
	// namespace): z/p3 is found by its device alone. p2 is proc.
	for _, m := range []struct{ dir, fs string }{{"p1", "sysfs"}, {"p2", "proc"}, {"z/p3", "sysfs"}} {
		dir := filepath.Join(root, m.dir)
		if err := unix.Mount(m.fs, dir, m.fs, unix.MS_RDONLY, ""); err != nil {
			t.Skipf("mount %s: %v", m.fs, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	}
	sel, err := selection.New(selection.Options{StatePath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// A walker that went into sysfs or proc would read on for long: the
	// channels are drained as it goes and a deadline ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	order, work := make(chan []*item), make(chan *item)
	w := &walker{ctx: ctx, sel: sel, cfg: wire.Config{Paths: []string{root}, CrossMounts: true},
		order: order, work: work, stats: &Stats{}, links: map[[2]uint64][]byte{}, log: zap.NewNop(), spill: t.TempDir()}
	var got []string
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for batch := range order {
			for _, it := range batch {
				if len(got) < 100 {
					got = append(got, strings.TrimPrefix(string(it.node.Path), root[1:]))
				}
			}
		}
	}()
	go func() {
		for it := range work {
			it.closeFile()
		}
	}()
	err = w.run()
	close(order)
	close(work)
	<-drained
	if err != nil {
		t.Fatalf("walk: %v (walked %q)", err, got)
	}
	want := []string{"", "/a", "/z", "/z/y"}
	if !slices.Equal(got, want) {
		t.Fatalf("walked %q, want %q", got, want)
	}
	if len(w.pseudo) != 3 { // the tree's device, sysfs's and proc's
		t.Fatalf("asked %d devices' type, want 3: %v", len(w.pseudo), w.pseudo)
	}
}

// statAhead yields every name of a directory in order, each with its own
// stat except those skipped, and stops cleanly when closed midway.
func TestStatAhead(t *testing.T) {
	dir := t.TempDir()
	const n = 3*statAheadWindow + 17
	for i := range n {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), make([]byte, i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	open := func() (*os.File, *names) {
		d, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		ns, err := readNames(d, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d, ns
	}
	d, ns := open()
	skip := func(name string) bool { return strings.HasSuffix(name, "5") }
	s := startStatAhead(int(d.Fd()), ns, skip)
	for i := range n {
		name, stx, ok, err := s.next()
		if err != nil || !ok || name != fmt.Sprintf("f%04d", i) {
			t.Fatalf("next: %q %v %v, want f%04d", name, ok, err, i)
		}
		if skip(name) != (stx == nil) || stx != nil && stx.Size != uint64(i) {
			t.Fatalf("%s: stat %+v, want size %d (or none, skipped: %v)", name, stx, i, skip(name))
		}
	}
	if name, _, ok, err := s.next(); ok || err != nil {
		t.Fatalf("after the last name: %q %v %v", name, ok, err)
	}
	s.close()
	ns.close()
	d.Close()

	d, ns = open() // closed after one name: the stats ahead stop
	s = startStatAhead(int(d.Fd()), ns, func(string) bool { return false })
	if _, _, ok, err := s.next(); !ok || err != nil {
		t.Fatalf("first name: %v %v", ok, err)
	}
	s.close()
	ns.close()
	d.Close()
}

// Subdirectories found while the pending queue is full wait in the
// overflow and are all read in the end, in tree order as the queue
// empties; past the overflow's bound they are left to the walker.
func TestReadAheadOverflow(t *testing.T) {
	p := &prefetcher{reading: map[string]bool{}}
	p.cond = sync.NewCond(&p.mu)
	dirs := func(parent string, n int) []prefetchDir {
		var ds []prefetchDir
		for i := range n {
			path := fmt.Sprintf("%s/%06d", parent, i)
			ds = append(ds, prefetchDir{path: path, at: []byte(path)})
		}
		return ds
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queue(dirs("r/a", prefetchPending+100)) // 100 over
	p.queue(dirs("r/b", prefetchOverflow))    // all but 100 fit
	if len(p.pending) != prefetchPending || p.overflowed != prefetchOverflow || len(p.overflow) != 2 {
		t.Fatalf("pending %d, overflow %d in %d; want %d and %d in 2", len(p.pending), p.overflowed, len(p.overflow), prefetchPending, prefetchOverflow)
	}
	var last []byte
	read := 0
	for {
		// As readers would, each read adding nothing: the last one's
		// end leaves nothing pending and nothing to add.
		d, ok := p.next()
		if !ok {
			break
		}
		if last != nil && tree.Compare(last, d.at) >= 0 {
			t.Fatalf("%s after %s: out of tree order", d.at, last)
		}
		last = d.at
		read++
	}
	if want := prefetchPending + prefetchOverflow; read != want || p.overflowed != 0 || len(p.overflow) != 0 {
		t.Fatalf("read %d directories, want %d; %d left in the overflow", read, want, p.overflowed)
	}
}
