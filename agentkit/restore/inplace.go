package restore

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/tree"
)

// A restore over files already at the target (-existing overwrite: a
// rollback after ransomware or a mistaken change) mostly finds the
// version's content there already. Downloading every file again costs the
// vault's reads, the network and decompression for bytes the disk holds.
// So a worker first reads each regular file found at a file's name along
// the listing's chunks, hashing every chunk with the repository's key:
//
//   - when every chunk is there, the holes read as zeros and the size is
//     the version's, the file is kept: only its metadata is set, on the
//     descriptor read, and nothing is written or downloaded. It is kept
//     only where keeping the inode gives nobody a way to write it that a
//     new file would not (keepable): someone who could write the old file
//     and opened it before may still write through that descriptor.
//   - otherwise the chunks found go into the new file and only the others
//     are downloaded; the new file then replaces it, as before. Those read
//     once the file is known to be replaced go in as they are read and
//     checked; those found before are copied at the end, each read again
//     and checked (repeats.go: the file may change meanwhile). Where the
//     filesystem has reflinks a large file's new file starts as a clone
//     of it, and only what differs is written (finishClone).
//
// Each such file is one job (never cut into parts), so one worker reads
// it once. A file that holds none of the version's content (encrypted
// whole) costs that read on top of the download, as restic's default
// --overwrite always does.

// closedDone is the done channel of a file found at the target: complete.
var closedDone = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// thereFile is a regular file found at a file's name, opened for reuse.
type thereFile struct {
	fd      int  // -1: none could be opened
	noatime bool // opened with O_NOATIME: reading it keeps its atime
}

// openThere opens what is at f's name for reading, without following a
// symlink or blocking.
func openThere(f *fileJob) thereFile {
	// O_NONBLOCK: a FIFO put at the name since the walker saw a file
	// there does not block the open; what is opened must be a regular
	// file (reuse checks). O_NOATIME (for the file's owner and root):
	// reading it leaves its times as they were, so a kept file whose
	// times are the version's needs none set.
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat(f.dir.fd, f.name, flags|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = unix.Openat(f.dir.fd, f.name, flags, 0)
		if err != nil {
			return thereFile{fd: -1}
		}
		return thereFile{fd: fd}
	}
	if err != nil {
		return thereFile{fd: -1}
	}
	return thereFile{fd: fd, noatime: true}
}

// readAhead is how many small files found at the target a worker opens
// at once and has the kernel start reading (reuseThere): one after another,
// each cold read waited for the disk alone (docs/performance.md, item 84).
const readAhead = 16

// reuseThere reads the files found at the names of the job's files that
// had one (inplace.go) and returns the files still to write: the kept ones
// are done. The files there are opened readAhead at a time, and when a
// job has several the kernel is asked to start reading them all before
// the first is read, so their cold reads reach the disk together instead
// of one after another.
func (w *fileWriter) reuseThere(files []fileJob) []fileJob {
	out := files[:0] // written at or before the file being read
	var ahead []thereFile
	for i, f := range files {
		if !f.existing {
			out = append(out, f)
			continue
		}
		if len(ahead) == 0 {
			w.ahead = openAhead(files[i:], w.ahead[:0])
			ahead = w.ahead
		}
		t := ahead[0]
		ahead = ahead[1:]
		if !w.reuse(&f, t) {
			out = append(out, f)
		}
	}
	return out
}

// openAhead opens what is at the names of the first readAhead existing
// files of files (the first of which is one), appending them to to, and
// advises the kernel to read them when there are several.
func openAhead(files []fileJob, to []thereFile) []thereFile {
	var sizes [readAhead]int64
	for _, f := range files {
		if len(to) == readAhead {
			break
		}
		if f.existing {
			sizes[len(to)] = f.node.Size
			to = append(to, openThere(&f))
		}
	}
	if len(to) > 1 {
		for i, t := range to {
			if t.fd >= 0 {
				// Advice: a filesystem that ignores it reads as before.
				// The file's size as the version has it: what is read.
				_ = unix.Fadvise(t.fd, 0, sizes[i], unix.FADV_WILLNEED)
			}
		}
	}
	return to
}

// reuse reads the regular file at f's name (t, which it closes): it
// returns true when the file was kept (f is done), else adds the chunks
// found there to f's copies.
func (w *fileWriter) reuse(f *fileJob, t thereFile) bool {
	r := w.r
	if t.fd < 0 {
		return false
	}
	fd, noatime := t.fd, t.noatime
	defer unix.Close(fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS, &stx); err != nil || stx.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	n := f.node
	ext := fileExtents(n)
	// A sparse file's extents are asked for ahead of the reads, range by
	// range, with the kernel's own read-ahead off, as backups read them
	// (meta.ExtentReader): cold extents read one after another were slow,
	// and the kernel's read-ahead can fill holes with pages of zeros
	// (docs/performance.md, items 68 and 87). Other large files: the
	// kernel reads further ahead (a small file is read in one call).
	readahead, sparse := unix.FADV_SEQUENTIAL, n.Sparse && len(ext) > 1
	if sparse {
		readahead = unix.FADV_RANDOM
	}
	if stx.Size > smallFile || sparse {
		_ = unix.Fadvise(fd, 0, 0, readahead)
	}
	size := int64(stx.Size)
	var found []copyOp
	all := true
	var total int64 // the chunks' bytes
	// search: the rest of the file is cut as backups cut files (findMoved)
	// instead of read at the chunks' offsets, which after an insertion
	// would read and hash the rest of the file in vain first.
	search := !n.Sparse && r.gear != nil
	planned := len(f.copies)
	isPlanned := func(idx int) bool {
		_, dup := slices.BinarySearchFunc(f.copies[:planned], idx, func(o copyOp, idx int) int { return cmp.Compare(o.idx, idx) })
		return dup
	}
	// Once the file there is known to be replaced (a chunk missing) and
	// to hold some of the version's content (a chunk found), the new file
	// is made and the chunks read after that are written into it as they
	// are read, and kept there when they check: not read again to be
	// copied. (A chunk that does not check is downloaded over what was
	// written. A file holding none of the version's content, as when
	// encrypted whole, is not written twice.)
	tried := false
	// A large file there is first cloned into the new file where the
	// filesystem shares blocks between files (reflinks: XFS, btrfs): the
	// clone is read and checked instead, the chunks found stay where they
	// are, and only the others are written: no second copy of the file's
	// blocks, and the rename over the old file stays (finishClone).
	var clone *made
	rd := fd // what is read
	if stx.Size > smallFile && !f.dir.noClone.Load() {
		if m, err := w.create(*f); err == nil {
			if err := unix.IoctlFileClone(m.fd, fd); err == nil {
				tried, f.pre = true, &m
				clone, rd = &m, m.fd
				_ = unix.Fadvise(rd, 0, 0, readahead)
			} else {
				(&openFile{fileJob: *f, made: m}).remove()
				f.dir.noClone.Store(true) // not tried again in this directory
			}
		}
	}
	into := func() int {
		if !tried {
			tried = true
			if m, err := w.create(*f); err == nil {
				f.pre = &m
			}
		}
		if f.pre == nil {
			return -1
		}
		return f.pre.fd
	}
	var adv meta.ExtentAdvisor
	var spread extCursor // where the last chunk spanning extents began
	if sparse {
		adv = meta.NewExtentAdvisor(rd, ext)
		adv.Advise(0)
		if testHookSparseRead != nil {
			testHookSparseRead(n.Path, rd)
		}
	}
	for i, off := range chunkOffsets(n, 0, len(n.Chunks)) {
		if err := r.ctx.Err(); err != nil {
			if f.pre != nil {
				f.preErr = err // a clone not cleared is never named
			}
			return false
		}
		c := n.Chunks[i]
		if sparse {
			adv.Advise(total)
		}
		total += int64(c.Len)
		if c.Len == 0 {
			all = all && w.h.Sum(nil) == c.ID
			continue
		}
		if off < 0 {
			// Straddles extents (a sparse file's data is chunked as one
			// stream): checked piece by piece, so that a file holding
			// all of the version is kept; when the file is replaced it
			// is downloaded (a copy reads one range).
			all = all && w.holdsSpread(rd, ext, &spread, total-int64(c.Len), c, size)
			continue
		}
		dst := -1
		if !all && len(found) > 0 {
			if isPlanned(i) {
				continue // copied or allocated as the plan says
			}
			if clone == nil {
				dst = into()
			}
		}
		if off+int64(c.Len) > size || !w.holds(rd, off, c, dst) {
			if dst >= 0 {
				// What was written is not the chunk: cleared, so that
				// its download finds the range as in a new file (a
				// download of zeros is an allocation, which would keep
				// it).
				if err := clearRange(dst, off, int64(c.Len)); err != nil && f.preErr == nil {
					f.preErr = fmt.Errorf("clear %d bytes at %d of the new file: %w", c.Len, off, err)
				}
			}
			all = false
			if search && len(found) > 0 {
				// Part of the file is the version's (not encrypted
				// whole, say): search from here.
				break
			}
			continue
		}
		op := copyOp{idx: i, off: off, from: srcRef{off: off}}
		if dst >= 0 || clone != nil {
			op.from.f = writtenThere
		}
		found = append(found, op)
	}
	if all && size == n.Size && total == dataLen(ext) && r.keepable(fd, &stx, n) && w.holesZero(rd, ext, size) {
		if clone != nil {
			(&openFile{fileJob: *f, made: *clone}).remove()
			f.pre = nil
		}
		have := &stx
		if !noatime {
			have = nil // its atime may have moved since
		}
		w.keep(f, fd, have, stx.Nlink > 1)
		return true
	}
	if len(found) == 0 {
		if clone != nil {
			w.finishClone(f, clone, size)
		}
		return false
	}
	if len(found) < len(n.Chunks) && search {
		// The chunks the search finds are written into the new file as
		// they are checked.
		var dst *made
		if into() >= 0 {
			dst = f.pre
		}
		found = w.findMoved(fd, n, found, dst, isPlanned)
	}
	// The chunks found are copied from the file there, unless the plan
	// already copies them (zeros, repeats within the version).
	there := &srcFile{done: closedDone, ok: true, dir: f.dir, name: f.name, there: true}
	for _, c := range found {
		if isPlanned(c.idx) {
			continue
		}
		if c.from.f != writtenThere {
			c.from.f = there
		}
		c.from.len = n.Chunks[c.idx].Len
		f.copies = append(f.copies, c)
	}
	slices.SortFunc(f.copies, func(a, b copyOp) int { return cmp.Compare(a.idx, b.idx) })
	if clone != nil {
		w.finishClone(f, clone, size)
	}
	if testHookReused != nil {
		testHookReused(n.Path)
	}
	return false
}

// finishClone makes the clone of the file there (size bytes) hold only
// what f's copies say was found in it (writtenThere), zeros elsewhere, and
// f's size: what the downloads and the plan's copies and allocations then
// write finds the range as in a new file, and the version's holes are
// holes. A clone in which nothing was found is emptied whole.
func (w *fileWriter) finishClone(f *fileJob, clone *made, size int64) {
	n := f.node
	var err error
	fail := func(what string, e error) {
		if e != nil && err == nil {
			err = fmt.Errorf("%s the new file made as a clone of the file there: %w", what, e)
		}
	}
	var pos int64
	for _, c := range f.copies {
		if c.from.f != writtenThere {
			continue
		}
		if c.off > pos {
			fail("clear", clearRange(clone.fd, pos, c.off-pos))
		}
		pos = max(pos, c.off+int64(c.from.len))
	}
	if pos == 0 {
		fail("empty", unix.Ftruncate(clone.fd, 0))
	} else if end := max(size, n.Size); end > pos {
		fail("clear", clearRange(clone.fd, pos, end-pos))
	}
	fail("size", unix.Ftruncate(clone.fd, n.Size))
	if err != nil && f.preErr == nil {
		f.preErr = err
	}
}

// testHookReused runs once a file's chunks found at the target are known,
// before any is copied.
var testHookReused func(path []byte)

// testHookSparseRead runs when the reads of a sparse file found at the
// target (fd) have been asked for, before the first.
var testHookSparseRead func(path []byte, fd int)

// findMoved looks for the chunks of n not found in place in the file fd
// (found: those that were, by index) elsewhere in it, cutting it as a
// backup cuts files: after bytes inserted or removed, content-defined
// boundaries fall in step again a chunk later, so only the chunks around
// the change are downloaded. Only for a file part of which was found in
// place (an insertion, an edit): one that holds none of the version's
// content at its offsets, as when encrypted whole, is not read again.
// Only a file without holes (n's chunks follow each other from offset 0)
// is searched.
//
// A chunk found is written into dst (when not nil) at its places as it is
// checked, its copy marked written (writtenThere), unless the plan
// already copies it there (planned).
func (w *fileWriter) findMoved(fd int, n *tree.Node, found []copyOp, dst *made, planned func(idx int) bool) []copyOp {
	type place struct {
		idx int
		off int64
	}
	want := map[[32]byte][]place{}
	// at: the chunks found in place, by offset; from: where the first
	// chunk not found starts.
	at := make(map[int64]uint32, len(found))
	from := int64(-1)
	var off int64
	k := 0
	for i, c := range n.Chunks {
		if k < len(found) && found[k].idx == i {
			at[off] = c.Len
			k++
		} else if c.Len > 0 {
			want[c.ID] = append(want[c.ID], place{i, off})
			if from < 0 {
				from = off
			}
		}
		off += int64(c.Len)
	}
	if from < 0 {
		return found
	}
	// The chunker's buffer (8 MiB) is shared by the workers: few files
	// are searched, and each buffer is fresh pages to fault in.
	buf, _ := w.r.cuts.Get().(*[]byte)
	if buf == nil {
		b := make([]byte, 2*chunker.MaxSize)
		buf = &b
	}
	defer w.r.cuts.Put(buf)
	// The cut starts where the first chunk not found starts, a boundary
	// of the version's chunks that the file there shares (content
	// before it was all found in place): what moved after an insertion
	// moved forward. A chunk cut where a chunk found in place lies is
	// that chunk: not hashed again.
	// The file there may be far larger than the version's (an attacker
	// or a mistake can make it a terabyte of holes): content moved
	// forward by at most the version's size is searched.
	ck := chunker.New(w.r.gear, &fdReader{fd: fd, off: from, end: 2*off + chunker.MaxSize}, *buf)
	src := from
	for len(want) > 0 && w.r.ctx.Err() == nil {
		b, err := ck.Next()
		if err != nil {
			break // the end, or a read error: what is not found is downloaded
		}
		if l, ok := at[src]; ok && l == uint32(len(b)) {
			src += int64(len(b))
			continue
		}
		id := w.h.Sum(b)
		if ps, ok := want[id]; ok {
			delete(want, id)
			for _, p := range ps {
				if n.Chunks[p.idx].Len != uint32(len(b)) {
					continue
				}
				c := copyOp{idx: p.idx, off: p.off, from: srcRef{off: src}}
				// n has no holes: its content's offset is the file's.
				if dst != nil && !planned(p.idx) && pwriteAll(dst.fd, b, p.off) == nil {
					c.from.f = writtenThere
				}
				found = append(found, c)
			}
		}
		src += int64(len(b))
	}
	return found
}

// fdReader reads a file with pread from off up to end, leaving the
// descriptor's offset alone.
type fdReader struct {
	fd       int
	off, end int64
}

func (r *fdReader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.end-r.off)]
	for {
		n, err := unix.Pread(r.fd, p, r.off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		r.off += int64(n)
		return n, nil
	}
}

// holds reports whether the file fd holds chunk c at off; it writes what
// it reads into dst at the same place when dst is not -1.
func (w *fileWriter) holds(fd int, off int64, c tree.ChunkRef, dst int) bool {
	w.h.Reset()
	for left := int64(c.Len); left > 0; {
		p := w.pieceOf(left)
		if preadAll(fd, p, off) != nil {
			return false
		}
		if dst >= 0 && pwriteAll(dst, p, off) != nil {
			return false
		}
		w.h.Write(p)
		off += int64(len(p))
		left -= int64(len(p))
	}
	return w.h.ID() == c.ID
}

// extCursor is a place in a file's extents: extent i, whose data starts
// data bytes into the file's data. Chunks are checked in order, so the
// cursor only moves forward: O(chunks + extents) for the whole file.
type extCursor struct {
	i    int
	data int64
}

// holdsSpread reports whether fd (size bytes) holds the chunk c whose
// data starts start bytes into the version's data, laid out over the
// extents ext: read and hashed range by range. cur is at or before the
// chunk's first extent and is moved to it.
func (w *fileWriter) holdsSpread(fd int, ext []tree.Extent, cur *extCursor, start int64, c tree.ChunkRef, size int64) bool {
	for cur.i < len(ext) && start >= cur.data+ext[cur.i].Len {
		cur.data += ext[cur.i].Len
		cur.i++
	}
	w.h.Reset()
	left := int64(c.Len)
	edata := cur.data // data bytes before extent e
	for _, e := range ext[cur.i:] {
		if left == 0 {
			break
		}
		off := e.Off + start - edata
		k := min(left, edata+e.Len-start)
		if off+k > size {
			return false
		}
		for k > 0 {
			p := w.pieceOf(k)
			if preadAll(fd, p, off) != nil {
				return false
			}
			w.h.Write(p)
			off += int64(len(p))
			k -= int64(len(p))
			start += int64(len(p))
			left -= int64(len(p))
		}
		edata += e.Len
	}
	return left == 0 && w.h.ID() == c.ID
}

// holesZero reports whether the file fd, size bytes, reads as zeros
// outside the extents ext (ascending): where the version has holes. Only
// the data the filesystem reports there (SEEK_DATA) is read.
func (w *fileWriter) holesZero(fd int, ext []tree.Extent, size int64) bool {
	var from int64
	for _, e := range ext {
		if e.Off < from || !w.zeroRange(fd, from, e.Off) {
			return false
		}
		from = e.Off + e.Len
	}
	return w.zeroRange(fd, from, size)
}

// zeroRange reports whether bytes [from, to) of fd read as zeros.
func (w *fileWriter) zeroRange(fd int, from, to int64) bool {
	for from < to {
		d, err := unix.Seek(fd, from, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO:
			return true // no data after from
		case err != nil:
			d = from // no SEEK_DATA here: read it all
		case d >= to:
			return true
		}
		e, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || e > to {
			e = to
		}
		for d < e {
			p := w.pieceOf(e - d)
			if preadAll(fd, p, d) != nil || !chunker.IsZero(p) {
				return false
			}
			d += int64(len(p))
		}
		from = e
	}
	return true
}

// keepable reports whether the file found at the target (fd, stx) may stay
// as n's inode: its only name, not immutable nor append-only, and nobody
// may write it who could not write n as restored (its owner is n's, group
// and others have write permission only where n gives it, and any access
// ACL is n's own). The content was checked before the metadata is set, and
// whoever could write the file may have it open: they keep that access.
func (r *restorer) keepable(fd int, stx *unix.Statx_t, n *tree.Node) bool {
	// A file with several names is kept only where the version gives it
	// as many: once its links are made, a name the version does not give
	// it sends it to a file of its own (unshareKept).
	if (stx.Nlink != 1 && stx.Nlink != n.Nlink) || stx.Attributes&stx.Attributes_mask&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) != 0 {
		return false
	}
	uid, gid := meta.Owner(n, r.o.Meta)
	if r.o.Meta.SkipOwner {
		uid, gid = r.euid, r.egid // a new file's, as created
	}
	switch {
	case stx.Uid != uid:
		return false
	case stx.Mode&0o020 != 0 && (n.Mode&0o020 == 0 || stx.Gid != gid):
		return false
	case stx.Mode&0o002 != 0 && n.Mode&0o002 == 0:
		return false
	}
	var acl []byte
	for _, x := range n.Xattrs {
		if x.Name == meta.XattrACLAccess {
			acl = x.Value
		}
	}
	buf := make([]byte, len(acl)+1) // one byte more: a longer ACL is not n's
	k, err := unix.Fgetxattr(fd, meta.XattrACLAccess, buf)
	switch {
	case err == unix.ENODATA || err == unix.ENOTSUP:
		return true
	case err != nil:
		return false // ERANGE: longer than n's
	}
	return bytes.Equal(buf[:k], acl)
}

// keep completes f, found at the target with its content: its metadata is
// set on the descriptor read, fd, where it differs from what the file had
// (have, unless nil).
func (w *fileWriter) keep(f *fileJob, fd int, have *unix.Statx_t, named bool) {
	r := w.r
	n := f.node
	defer f.dir.wg.Done()
	opts := r.o.Meta
	opts.Have = have
	if n.Nlink > 1 {
		opts.SkipFlags = true // links come later; an immutable file cannot be linked
		r.linkable(f.dir, f.name, fd, n, named)
	}
	if err := meta.ApplyFD(fd, n, opts); err != nil {
		r.problem("%s: metadata: %v", n.Path, err)
	}
	if f.src != nil { // later copies of its chunks may read it (repeats.go)
		f.src.ok, f.src.dir, f.src.name = true, f.dir, f.name
		close(f.src.done)
	}
	atomic.AddInt64(&r.stats.Files, 1)
	atomic.AddInt64(&r.stats.Kept, 1)
	atomic.AddInt64(&r.stats.Bytes, dataLen(fileExtents(n)))
}
