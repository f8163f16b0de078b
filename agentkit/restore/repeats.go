package restore

import (
	"fmt"
	"iter"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// A chunk that recurs in a version (the same block in two images, a file
// copied into several directories, a block repeated within a file) is
// downloaded once per restore: its first place is written from the
// download, and every later place is copied from there once that file is
// complete. The walker decides which places copy and from where, as it
// hands the files to the workers (plan), so a source is always in a job
// queued earlier: a worker waiting for one waits for a job already taken
// by a worker, never for one behind itself.
//
// Memory stays bounded: the walker remembers the first place of at most
// maxSources chunks (about 100 bytes each), and forgets them all when that
// many are known; the copies hold no chunk in memory beyond the one being
// copied. A copy from another file reads the file back by its name
// beneath the target and checks the bytes read against the chunk's id,
// since whoever may write that file or its directory by their restored
// modes could have changed or replaced it meanwhile; a copy within the
// file being written (not yet under its name) is copied in the kernel.
// Whatever fails (the first file was not restored, or is no longer what
// was written) downloads the chunk after all.
const maxSources = 1 << 17

// srcFile is a restored file whose chunks later files may copy. done is
// closed once it is complete (or failed); then ok says whether it was
// given its name in dir. (Its inode is not kept: that would cost an fstat
// of every file restored, and what is read from it is checked anyway.)
type srcFile struct {
	done chan struct{}
	ok   bool
	dir  *dirEntry
	name string
	// there: the file found at the target, which the one restored
	// replaces (inplace.go).
	there bool
}

// writtenThere is the source of the chunks written into a file while the
// file found at its name was read (inplace.go, findMoved): in place
// already, checked as they were written.
var writtenThere = &srcFile{done: closedDone, ok: true, there: true}

// rel is the file's name beneath the target.
func (sf *srcFile) rel() string {
	if len(sf.dir.path) == 0 {
		return sf.name
	}
	return string(sf.dir.path) + "/" + sf.name
}

// srcRef is where a chunk was first placed: in file f, in the job that
// writes its chunks from index part on, at offset off.
type srcRef struct {
	f    *srcFile
	part int
	off  int64
	len  uint32
}

// copyOp is one place of a file's content copied instead of downloaded:
// chunk idx of the node, at offset off; from nothing (from.f nil) when the
// chunk is zeros, which are allocated.
type copyOp struct {
	idx  int
	off  int64
	from srcRef
}

// plan decides, for the chunks of f about to be queued, which are copied
// from an earlier place and which the first places of later copies are.
// Only a chunk lying within one extent is either.
func (r *restorer) plan(f *fileJob) {
	if f.src == nil {
		f.src = &srcFile{done: make(chan struct{})}
	}
	n := f.node
	for i, off := range chunkOffsets(n, f.from, f.end()) {
		c := n.Chunks[i]
		if c.Len == 0 || off < 0 {
			continue // empty, or straddles extents (or lies beyond them): downloaded
		}
		if r.zeros.is(c) {
			// Allocated once the file's downloads are written; never
			// a source (zeros.go).
			f.copies = append(f.copies, copyOp{idx: i, off: off})
			continue
		}
		ref, ok := r.srcs[c.ID]
		switch {
		case !ok:
			if len(r.srcs) >= maxSources {
				clear(r.srcs)
			}
			r.srcs[c.ID] = srcRef{f: f.src, part: f.from, off: off, len: c.Len}
		case ref.len != c.Len:
			// The listing gives two lengths for one id: downloaded, and
			// checked as usual.
		case ref.f == f.src && ref.part != f.from:
			// Another part of the same file, written meanwhile by another
			// worker: not waited for.
		default:
			f.copies = append(f.copies, copyOp{idx: i, off: off, from: ref})
		}
	}
}

// chunkOffsets yields the index of each chunk of n in [from, end) and the
// offset in the file where its content goes: in one extent, or -1 when it
// straddles extents or lies beyond them.
func chunkOffsets(n *tree.Node, from, end int) iter.Seq2[int, int64] {
	return func(yield func(int, int64) bool) {
		ext := fileExtents(n)
		ei := 0
		var edata, pos int64 // data bytes before extent ei, and before the chunk
		for i, c := range n.Chunks[:end] {
			start := pos
			pos += int64(c.Len)
			if i < from {
				continue
			}
			for ei < len(ext) && start >= edata+ext[ei].Len {
				edata += ext[ei].Len
				ei++
			}
			off := int64(-1)
			if ei < len(ext) && pos <= edata+ext[ei].Len {
				off = ext[ei].Off + start - edata
			}
			if !yield(i, off) {
				return
			}
		}
	}
}

// end is the index after the last chunk f writes.
func (f *fileJob) end() int {
	if f.part != nil {
		return f.to
	}
	return len(f.node.Chunks)
}

// skipCopies moves o past the copied chunks that come next in its order.
func (o *openFile) skipCopies() {
	for o.ci < len(o.copies) && o.copies[o.ci].idx == o.next {
		ln := int64(o.node.Chunks[o.next].Len)
		for ln > 0 && o.ei < len(o.ext) {
			k := min(ln, o.ext[o.ei].Len-o.eoff)
			ln -= k
			o.eoff += k
			if o.eoff == o.ext[o.ei].Len {
				o.ei, o.eoff = o.ei+1, 0
			}
		}
		o.next++
		o.ci++
	}
}

// copyChunks writes o's copied chunks once its downloaded ones are.
func (w *fileWriter) copyChunks(o *openFile) error {
	for _, c := range o.copies {
		want := o.node.Chunks[c.idx]
		var err error
		if c.from.f == writtenThere {
			atomic.AddInt64(&w.r.stats.Bytes, int64(want.Len))
			atomic.AddInt64(&w.r.stats.Reused, int64(want.Len))
			continue
		}
		if c.from.f == nil || w.r.zeros.is(want) {
			err = allocate(o.fd, c.off, int64(want.Len))
		} else if c.from.f == o.src {
			err = copyRange(o.fd, c.from.off, o.fd, c.off, int64(want.Len))
		} else {
			err = w.copyFrom(o, c, want)
		}
		if err != nil {
			if err = w.fetchOne(o, c, want); err != nil {
				return err
			}
			continue
		}
		atomic.AddInt64(&w.r.stats.Bytes, int64(want.Len))
		if c.from.f != nil && c.from.f.there {
			atomic.AddInt64(&w.r.stats.Reused, int64(want.Len))
		} else {
			atomic.AddInt64(&w.r.stats.Copied, 1)
		}
	}
	return nil
}

// copiesReady reports whether every copy of o can be made without
// waiting: from memory, within o, or from a file already complete.
func (w *fileWriter) copiesReady(o *openFile) bool {
	for _, c := range o.copies {
		if c.from.f == nil || c.from.f == o.src || w.r.mem.has(o.node.Chunks[c.idx].ID) {
			continue
		}
		select {
		case <-c.from.f.done:
		default:
			return false
		}
	}
	return true
}

// copyFrom copies chunk want from the file restored earlier that c names,
// checking what it reads: whatever has that name now (another file, a
// hard link to one, the file changed) gives its bytes only if they are
// the chunk's, so the copy never takes anything but the chunk's content.
func (w *fileWriter) copyFrom(o *openFile, c copyOp, want tree.ChunkRef) error {
	if buf, ok := w.r.mem.get(want.ID, int(want.Len), w.buf); ok {
		w.buf = buf
		return pwriteAll(o.fd, buf, c.off)
	}
	sf := c.from.f
	select {
	case <-sf.done:
	case <-w.r.ctx.Done():
		return w.r.ctx.Err()
	}
	if !sf.ok {
		return fmt.Errorf("the first place of chunk %x was not restored", want.ID[:8])
	}
	if w.srcF != sf {
		w.closeSrc()
		// O_NONBLOCK: a FIFO put there meanwhile does not block the open.
		fd, err := openBeneath(w.r.root, sf.rel(), unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return fmt.Errorf("%q is no longer a regular file", sf.rel())
		}
		w.srcF, w.srcFD = sf, fd
	}
	w.buf = growTo(w.buf, int(want.Len))
	if err := preadAll(w.srcFD, w.buf, c.from.off); err != nil {
		return err
	}
	if w.h.Sum(w.buf) != want.ID {
		return fmt.Errorf("%q changed since it was restored", sf.rel())
	}
	return pwriteAll(o.fd, w.buf, c.off)
}

// closeSrc closes the file the worker copied from last.
func (w *fileWriter) closeSrc() {
	if w.srcF != nil {
		unix.Close(w.srcFD)
		w.srcF, w.srcFD = nil, -1
	}
}

// fetchOne downloads chunk want for the place c after all.
func (w *fileWriter) fetchOne(o *openFile, c copyOp, want tree.ChunkRef) error {
	got := false
	var werr error
	err := w.r.o.Source.GetChunks(w.r.ctx, [][32]byte{want.ID}, func(fr *wire.Frame) error {
		if got {
			return nil
		}
		got = true
		data, err := w.check(fr, want)
		if err == nil {
			err = pwriteAll(o.fd, data, c.off)
		}
		if err == nil {
			atomic.AddInt64(&w.r.stats.Bytes, int64(len(data)))
		}
		werr = err
		return nil
	})
	if err == nil && !got {
		err = &ChunkError{want.ID, "never arrived"}
	}
	if err != nil {
		return err
	}
	return werr
}

// copyRange copies n bytes within or between files in the kernel, or
// through memory where the filesystem cannot.
func copyRange(src int, soff int64, dst int, doff int64, n int64) error {
	for n > 0 {
		k, err := unix.CopyFileRange(src, &soff, dst, &doff, int(n), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			break
		}
		n -= int64(k)
	}
	if n == 0 {
		return nil
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		if err := preadAll(src, b, soff); err != nil {
			return err
		}
		if err := pwriteAll(dst, b, doff); err != nil {
			return err
		}
		soff, doff, n = soff+int64(len(b)), doff+int64(len(b)), n-int64(len(b))
	}
	return nil
}

func preadAll(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("read at %d: the file ends", off)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// growTo returns b resliced to n bytes, or a new buffer of n bytes with
// room to spare (wire.Room) when b is too small.
func growTo(b []byte, n int) []byte {
	return wire.Room(b, n)[:n]
}

// The content of small chunks downloaded in this run is kept in memory
// (memBytes in all, the oldest forgotten first), so a later place of one is
// written from there: no open, read and hash of the file written first, no
// wait for it to be complete. Trees of many small files repeat whole files
// (a licence, an empty module, a vendored copy): each copy would cost five
// system calls more than the write. The content was checked against its id
// when downloaded; memory is not a place anybody else may change.
//
// The ring starts at memStart and doubles, up to memBytes, each time it
// comes round after a lap in which copies asked for a small chunk at least
// once per memAskBytes put: its memory is fresh pages, which cost more than
// the system calls they save when few chunks recur (a restore of the
// benchmark's current tree put 16.9 MB there for 90 hits: 4,096 first
// touches of pages, about 0.09 s of CPU on this machine kind,
// docs/performance.md item 44).
var (
	memChunkMax = 64 << 10 // larger chunks are copied from the file
	memBytes    = 16 << 20
	memStart    = 1 << 20
	memAskBytes = 32 << 10
)

// memChunks is a ring of chunk contents: each new chunk goes after the
// last one, overwriting the oldest, which are forgotten first.
type memChunks struct {
	mu    sync.Mutex
	buf   []byte
	limit int // the ring's size now (see memStart)
	// put and asked count the bytes put and the small chunks copies
	// asked for since the ring last came round.
	put, asked int
	pos        int // where the next chunk goes
	m          map[[32]byte]memRef
	fifo       []memEntry // the chunks in buf, oldest first, from fifo[head]
	head       int
}

type memRef struct{ off, len int }

type memEntry struct {
	id [32]byte
	memRef
}

// keep keeps a copy of data, the checked content of chunk id, when small.
func (c *memChunks) keep(id [32]byte, data []byte) {
	n := len(data)
	if n == 0 || n > memChunkMax || n > memBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; ok {
		return
	}
	if c.m == nil {
		c.m = map[[32]byte]memRef{}
		c.limit = min(memStart, memBytes)
	}
	if c.pos+n > c.limit {
		// Come round: grow if the last lap's copies asked for kept
		// chunks often enough, else wrap.
		if c.limit < memBytes && c.asked*memAskBytes >= c.put {
			c.limit = min(2*c.limit, memBytes)
		}
		c.put, c.asked = 0, 0
	}
	if c.pos+n > c.limit {
		// Wrap: the chunks after pos, the oldest, are forgotten now.
		for c.head < len(c.fifo) && c.fifo[c.head].off >= c.pos {
			c.forget()
		}
		c.pos = 0
	}
	// Forget the chunks the new one overwrites.
	for c.head < len(c.fifo) && c.fifo[c.head].off < c.pos+n && c.fifo[c.head].off >= c.pos {
		c.forget()
	}
	if len(c.buf) < c.limit {
		// The buffer follows the ring's size. One of memBytes from the
		// start is zeroed whole when the allocator reuses the heap's
		// pages for it (0.07 s in one restore's CPU profile at make
		// bench's scale, for a ring that stayed at memStart; ten
		// alternating restores could not tell the two apart).
		c.buf = append(c.buf, make([]byte, c.limit-len(c.buf))...)
	}
	copy(c.buf[c.pos:], data)
	ref := memRef{c.pos, n}
	c.m[id] = ref
	if c.head > 0 && c.head >= len(c.fifo)/2 {
		c.fifo = append(c.fifo[:0], c.fifo[c.head:]...)
		c.head = 0
	}
	c.fifo = append(c.fifo, memEntry{id, ref})
	c.pos += n
	c.put += n
}

// forget drops the oldest chunk.
func (c *memChunks) forget() {
	delete(c.m, c.fifo[c.head].id)
	c.head++
}

// has reports whether the content of chunk id is kept.
func (c *memChunks) has(id [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[id]
	return ok
}

// get copies the content of chunk id, n bytes, into buf when it is kept.
func (c *memChunks) get(id [32]byte, n int, buf []byte) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n <= memChunkMax {
		c.asked++
	}
	ref, ok := c.m[id]
	if !ok || ref.len != n {
		return buf, false
	}
	buf = growTo(buf, n)
	copy(buf, c.buf[ref.off:ref.off+n])
	return buf, true
}
