package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Regular files are written straight from the download stream: each chunk
// is checked and written where it belongs as its frame arrives, so a
// restore holds no chunk beyond the frame being read, and the HTTP/2
// stream's window is the read-ahead. Small files are batched: one request
// fetches the chunks of many files, which costs one round trip instead of
// one per file. A large file is cut into parts of about partBytes, each
// its own job, so several workers fetch and write one file at once (at
// their offsets): a restore that ends with one large file does not end at
// the speed of one download.
const (
	smallFile    = 1 << 20 // files up to this size share requests
	batchFiles   = 128     // files per batched request, at most
	batchBytes   = 8 << 20 // bytes per batched request, about
	idsPerFetch  = 1024    // chunks per request for one large file
	partBytes    = 8 << 20 // bytes of a large file's part, about
	openJobSlack = 16      // jobs queued ahead of the workers
	maxPending   = 64      // files a worker keeps open waiting for their copies' sources
)

// fileJob is one regular file to write.
type fileJob struct {
	dir  *dirEntry
	name string
	node *tree.Node
	// fresh: nothing had the name when the policy was applied; existing:
	// a regular file had it, which the job reads first (inplace.go).
	fresh, existing bool
	// part, when not nil: this job writes only chunks [from, to) of the
	// file, which other jobs write the rest of.
	part     *sharedFile
	from, to int
	// src is the file's place as others' copies see it (repeats.go);
	// copies are its chunks copied from an earlier place, in order.
	src    *srcFile
	copies []copyOp
	// pre: the file, made before the job wrote to it (inplace.go);
	// preErr: what makes it unfit (a range it could not clear).
	pre    *made
	preErr error
}

// sharedFile is a large file written by several jobs (parts): the first
// to start creates it, the last to finish completes it.
type sharedFile struct {
	once sync.Once
	made
	err  error // creating it
	mu   sync.Mutex
	perr error        // the first problem of any part
	left atomic.Int32 // parts not finished yet
	src  *srcFile
}

// made is a file created for writing (create): its descriptor, and how it
// gets its name once written (giveName).
type made struct {
	tmp     string // the temporary name; "" when unnamed or under its name
	anon    bool   // unnamed (O_TMPFILE) until giveName
	modeSet bool   // created with its node's mode (meta.Options.ModeSet)
	fd      int
}

// job is what a worker does at once: one large file, or a batch of small
// ones whose chunks come in one request.
type job struct {
	files []fileJob
	// others are symlinks, FIFOs and device nodes to make in directories
	// the restore made: alone on the walk's goroutine, 100,000 symlinks
	// took 2.3 s (docs/performance.md, item 73).
	others []fileJob
}

// othersBatch is how many other objects a job makes.
const othersBatch = 256

// queueOther hands the workers an object that is not a file or directory,
// to make in a directory the restore made.
func (r *restorer) queueOther(f fileJob) {
	f.dir.wg.Add(1)
	r.others = append(r.others, f)
	if len(r.others) >= othersBatch {
		r.flushOthers()
	}
}

func (r *restorer) flushOthers() {
	if len(r.others) > 0 {
		r.jobs <- &job{others: r.others}
		r.others = nil
	}
}

// queueFile hands a file to the workers, batching small ones and cutting
// large ones into parts.
func (r *restorer) queueFile(f fileJob) {
	f.dir.wg.Add(1)
	if f.node.Size > smallFile {
		parts := cutParts(f.node)
		if len(parts) < 2 || f.existing { // one job reads what is there (inplace.go)
			r.plan(&f)
			r.jobs <- &job{files: []fileJob{f}}
			return
		}
		sf := &sharedFile{made: made{fd: -1}, src: &srcFile{done: make(chan struct{})}}
		sf.left.Store(int32(len(parts)))
		for _, p := range parts {
			pf := f
			pf.part, pf.from, pf.to, pf.src = sf, p[0], p[1], sf.src
			r.plan(&pf)
			r.jobs <- &job{files: []fileJob{pf}}
		}
		return
	}
	r.batch = append(r.batch, f)
	r.batchSize += f.node.Size
	if len(r.batch) >= batchFiles || r.batchSize >= batchBytes {
		r.flushBatch()
	}
}

// cutParts returns the chunk ranges of n's parts: about partBytes each,
// or one range when its chunks do not hold exactly the bytes its extents
// say (the single job then reports that).
func cutParts(n *tree.Node) [][2]int {
	var total, part int64
	from := 0
	var parts [][2]int
	for i, c := range n.Chunks {
		total += int64(c.Len)
		part += int64(c.Len)
		if part >= partBytes || i == len(n.Chunks)-1 {
			parts = append(parts, [2]int{from, i + 1})
			from, part = i+1, 0
		}
	}
	if total != dataLen(fileExtents(n)) {
		return [][2]int{{0, len(n.Chunks)}}
	}
	return parts
}

// fileExtents are where the content of n goes in the file.
func fileExtents(n *tree.Node) []tree.Extent {
	if n.Sparse {
		return n.Extents
	}
	if n.Size > 0 {
		return []tree.Extent{{Off: 0, Len: n.Size}}
	}
	return nil
}

func (r *restorer) flushBatch() {
	r.flushOthers() // they wait no longer than the files beside them
	if len(r.batch) == 0 {
		return
	}
	for i := range r.batch {
		r.plan(&r.batch[i])
	}
	r.jobs <- &job{files: r.batch}
	r.batch, r.batchSize = nil, 0
}

// fileWriter is one worker's state.
type fileWriter struct {
	r *restorer
	h *keys.Hasher
	// buf holds a decompressed chunk, or one read back for a copy
	// (repeats.go): never both at once, so one buffer of a chunk's size a
	// worker (each is fresh memory, dear to touch: docs/performance.md,
	// item 40).
	buf    []byte
	piece  []byte      // a piece of a large stored chunk (chunkStream) or of a file at the target (inplace.go): pieceOf
	ahead  []thereFile // files at the target opened ahead of their reading (reuseThere)
	jobErr error       // the download of the current job failed
	// The file copied from last (repeats.go), open while the job runs.
	srcF  *srcFile
	srcFD int
	// pending are files of the current job written but for copies from
	// files not complete yet: finished at the end of the job (final), so
	// the worker goes on with the next files meanwhile instead of waiting.
	pending []*openFile
	final   bool
}

// open is a file being written.
type openFile struct {
	fileJob
	made
	ext  []tree.Extent // where the chunks' bytes go
	ei   int           // current extent
	eoff int64         // bytes written into it
	next int           // the chunk that comes next
	ci   int           // copies[ci] is the next copied chunk
	left int           // chunks still to download
	err  error         // the first problem; later chunks are skipped
}

// trimmed prints an error without the "restore: " its message may begin
// with, which the problem's own words make redundant, and keeps it for
// errors.Is (problem looks for a full filesystem).
type trimmed struct{ err error }

func (e trimmed) Error() string { return strings.TrimPrefix(e.err.Error(), "restore: ") }
func (e trimmed) Unwrap() error { return e.err }

// run writes the files of j.
func (w *fileWriter) run(j *job) {
	for _, f := range j.others {
		if err := w.r.makeOther(f.dir, f.name, f.node); err != nil {
			w.r.problem("%s: %v", f.node.Path, err)
		}
		f.dir.wg.Done()
	}
	w.jobErr = nil
	defer w.closeSrc()
	j.files = w.reuseThere(j.files)
	var ids [][32]byte
	for _, f := range j.files {
		ci := 0
		for i, c := range chunksOf(f) {
			if ci < len(f.copies) && f.copies[ci].idx == f.from+i {
				ci++
				continue
			}
			ids = append(ids, c.ID)
		}
	}
	next := 0 // files[next] is the next file to open
	var cur *openFile
	// advance finishes the current file and opens the next one that has
	// chunks still to come, finishing empty ones on the way.
	advance := func() {
		if cur != nil {
			w.finish(cur)
			cur = nil
		}
		for next < len(j.files) {
			f := w.start(j.files[next])
			next++
			if f.left > 0 {
				cur = f
				return
			}
			w.finish(f)
		}
	}
	advance()
	for i := 0; i < len(ids) && cur != nil; i += idsPerFetch {
		batch := ids[i:min(i+idsPerFetch, len(ids))]
		err := w.get(batch, func(fr *wire.Frame, body io.Reader) error {
			if body != nil {
				if err := w.chunkStream(cur, fr, body); err != nil {
					return err
				}
			} else {
				w.chunk(cur, fr)
			}
			cur.left--
			if cur.left == 0 {
				advance()
			}
			return nil
		})
		if err != nil { // the connection failed: nothing more comes
			w.jobErr = err
			for cur != nil {
				if cur.err == nil {
					cur.err = err
				}
				cur.left = 0
				advance()
			}
		}
	}
	for cur != nil || next < len(j.files) {
		advance()
	}
	// The files whose copies had to wait for files other workers write,
	// which had the rest of this job's time to complete.
	w.final = true
	for _, o := range w.pending {
		w.finish(o)
	}
	clear(w.pending)
	w.pending, w.final = w.pending[:0], false
}

// start creates the file f unnamed, or under a temporary name beside its
// own (anon.go); finish gives it its name once written (never replacing
// what is there unless -existing overwrite), so no file is ever seen
// half-written under its name: a restore run again after a crash, with the
// default -existing skip, never keeps a partial file as if restored. (Files
// created under their own name with O_EXCL left exactly that after a
// crash.)
//
// A part of a large file writes into the file the first part to start
// created, from where its first chunk's content goes.
func (w *fileWriter) start(f fileJob) *openFile {
	o := &openFile{fileJob: f, made: made{fd: -1}, left: len(chunksOf(f)) - len(f.copies), next: f.from, ext: fileExtents(f.node)}
	if f.pre != nil {
		o.made, o.err = *f.pre, f.preErr
		if o.err == nil {
			o.err = w.jobErr
		}
		return o
	}
	if w.jobErr != nil {
		o.err = w.jobErr
		return o
	}
	if sf := f.part; sf != nil {
		sf.once.Do(func() { sf.made, sf.err = w.create(f) })
		o.made, o.err = sf.made, sf.err
		o.seek(f.node.Chunks[:f.from])
		return o
	}
	o.made, o.err = w.create(f)
	return o
}

// chunksOf are the chunks job f writes.
func chunksOf(f fileJob) []tree.ChunkRef {
	if f.part != nil {
		return f.node.Chunks[f.from:f.to]
	}
	return f.node.Chunks
}

// seek places o where the content after chunks goes.
func (o *openFile) seek(chunks []tree.ChunkRef) {
	var skip int64
	for _, c := range chunks {
		skip += int64(c.Len)
	}
	for o.ei < len(o.ext) && skip >= o.ext[o.ei].Len {
		skip -= o.ext[o.ei].Len
		o.ei++
	}
	o.eoff = skip
}

// chunk checks one downloaded chunk and writes it into o.
func (w *fileWriter) chunk(o *openFile, fr *wire.Frame) {
	if o.err != nil {
		return
	}
	o.skipCopies()
	want := o.node.Chunks[o.next]
	o.next++
	data, err := w.check(fr, want)
	if err != nil {
		o.err = err
		return
	}
	if chunker.IsZero(data) {
		w.r.zeros.found(fr.ID)
	}
	w.r.mem.keep(fr.ID, data)
	o.err = o.write(data)
	atomic.AddInt64(&w.r.stats.Bytes, int64(len(data)))
}

// streamSource is a Source that hands a large stored chunk over as it
// arrives (agentkit/client.Client).
type streamSource interface {
	GetChunksStream(ctx context.Context, ids [][32]byte, stream int, fn func(f *wire.Frame, body io.Reader) error) error
}

// streamPiece is how much of a large stored chunk a worker holds at once
// (chunkStream); stored chunks smaller than that, or than what memChunks
// keeps, come whole.
const streamPiece = 256 << 10

// get downloads the chunks ids, the large stored ones in pieces where the
// source can.
func (w *fileWriter) get(ids [][32]byte, fn func(fr *wire.Frame, body io.Reader) error) error {
	if s, ok := w.r.o.Source.(streamSource); ok {
		return s.GetChunksStream(w.r.ctx, ids, max(streamPiece, memChunkMax+1), fn)
	}
	return w.r.o.Source.GetChunks(w.r.ctx, ids, func(fr *wire.Frame) error { return fn(fr, nil) })
}

// chunkStream writes a large stored chunk into o as it arrives, a piece
// at a time, hashing each piece, so a worker holds no buffer of the
// chunk's size: on this machine kind fresh memory costs 11-20 µs a page
// at its first touch, and the download readers' buffers grown to the
// largest chunk (4 MiB) were a thousand pages each (docs/performance.md,
// item 55). The content
// is checked against its id once written: a chunk that does not match
// fails its file, which is then removed (finish), never named, like any
// file that failed. It returns only the download's errors (the reader
// skips what is left of a chunk not read to its end).
func (w *fileWriter) chunkStream(o *openFile, fr *wire.Frame, body io.Reader) error {
	if o.err != nil {
		return nil
	}
	o.skipCopies()
	want := o.node.Chunks[o.next]
	o.next++
	switch {
	case fr.ID != want.ID:
		o.err = errSubstituted(want.ID, fr.ID)
		return nil
	case fr.PlainLen != want.Len:
		o.err = errLength(fr.ID, fr.PlainLen, want.Len)
		return nil
	}
	w.h.Reset()
	for left := int(fr.PlainLen); left > 0; {
		p := w.pieceOf(int64(left))
		if _, err := io.ReadFull(body, p); err != nil {
			return err
		}
		w.h.Write(p)
		if o.err = o.write(p); o.err != nil {
			return nil
		}
		left -= len(p)
	}
	if w.h.ID() != fr.ID {
		o.err = errDamaged(fr.ID)
		return nil
	}
	atomic.AddInt64(&w.r.stats.Bytes, int64(fr.PlainLen))
	return nil
}

// pieceOf is the worker's piece buffer (made at its first use), up to n
// bytes of it.
func (w *fileWriter) pieceOf(n int64) []byte {
	if len(w.piece) == 0 {
		w.piece = make([]byte, streamPiece)
	}
	return w.piece[:min(n, int64(len(w.piece)))]
}

// check returns the content of the chunk want, which fr must hold.
func (w *fileWriter) check(fr *wire.Frame, want tree.ChunkRef) ([]byte, error) {
	// The frame must be the chunk asked for at this place, of the length
	// the listing says: a vault that answers another (valid) chunk would
	// otherwise put foreign content into the file.
	if fr.ID != want.ID {
		return nil, errSubstituted(want.ID, fr.ID)
	}
	var err error
	data := fr.Payload
	switch {
	case fr.Kind == wire.StatusMissing:
		err = errMissing(fr.ID)
	case fr.Kind != wire.StatusOK:
		err = errVault(fr.ID, fr.Payload)
	case fr.Flags != 0 || uint32(len(data)) != fr.PlainLen: // else checked and written as is
		// Room for the plaintext first (growTo's headroom), so the
		// decoder does not grow the buffer by appending.
		w.buf, err = wire.Decompress(wire.Room(w.buf, int(fr.PlainLen)), fr.Flags, fr.Payload, fr.PlainLen)
		data = w.buf
	}
	if err == nil && w.h.Sum(data) != fr.ID {
		err = errDamaged(fr.ID)
	}
	if err == nil && uint32(len(data)) != want.Len {
		err = errLength(fr.ID, uint32(len(data)), want.Len)
	}
	if err != nil {
		var ce *ChunkError
		if !errors.As(err, &ce) {
			err = &ChunkError{fr.ID, err.Error()}
		}
		return nil, err
	}
	return data, nil
}

// write puts the next bytes of the content where the extents say.
func (o *openFile) write(p []byte) error {
	for len(p) > 0 {
		if o.ei >= len(o.ext) {
			return fmt.Errorf("the chunks hold more than the file's %d bytes of data", dataLen(o.ext))
		}
		e := o.ext[o.ei]
		n := int(min(int64(len(p)), e.Len-o.eoff))
		put := pwriteAll
		if n >= zeroPieceMin && chunker.IsZero(p[:n]) {
			put = allocateLike
		}
		if err := put(o.fd, p[:n], e.Off+o.eoff); err != nil {
			return fmt.Errorf("write at %d: %w", e.Off+o.eoff, err)
		}
		p = p[n:]
		o.eoff += int64(n)
		if o.eoff == e.Len {
			o.ei, o.eoff = o.ei+1, 0
		}
	}
	return nil
}

func pwriteAll(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// dataEnd is where the last extent ends: the size a new file has once
// they are written.
func dataEnd(ext []tree.Extent) int64 {
	var end int64
	for _, e := range ext {
		end = max(end, e.Off+e.Len)
	}
	return end
}

func dataLen(ext []tree.Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Len
	}
	return n
}

// finish completes o: size, name (giveName),
// metadata, close; or removes the file written and reports why o could not
// be restored.
//
// A part of a large file only notes its problem, unless it is the last
// part to finish: that one completes the file for all.
func (w *fileWriter) finish(o *openFile) {
	r := w.r
	n := o.node
	err := o.err
	if err == nil && o.left > 0 {
		err = fmt.Errorf("%d chunks never arrived", o.left)
	}
	if err == nil && len(o.copies) > 0 {
		o.skipCopies()
		if !w.final && len(w.pending) < maxPending && !w.copiesReady(o) {
			w.pending = append(w.pending, o) // finished at the end of the job
			return
		}
		err = w.copyChunks(o)
	}
	if sf := o.part; sf != nil {
		sf.mu.Lock()
		if sf.perr == nil {
			sf.perr = err
		}
		err = sf.perr
		sf.mu.Unlock()
		if sf.left.Add(-1) > 0 {
			return
		}
		// The parts wrote every chunk, which hold the file's data
		// exactly (cutParts).
		o.made = sf.made
		o.ei, o.eoff = len(o.ext), 0
	}
	if err == nil && (o.ei < len(o.ext)) {
		err = fmt.Errorf("content ends after %d of %d bytes of data: %w", written(o), dataLen(o.ext), io.ErrUnexpectedEOF)
	}
	// The file was created empty: its size needs setting only when it
	// ends in a hole.
	if err == nil && dataEnd(o.ext) < n.Size {
		if err = unix.Ftruncate(o.fd, n.Size); err != nil {
			err = fmt.Errorf("set size %d: %w", n.Size, err)
		}
	}
	defer o.dir.wg.Done()
	// Later copies of its chunks wait for the file (repeats.go).
	published := o.src == nil
	defer func() {
		if !published {
			close(o.src.done)
		}
	}()
	if err == nil && (o.tmp != "" || o.anon) {
		if testHookBeforeRename != nil {
			testHookBeforeRename(n.Path, o.fd)
		}
		err = w.giveName(o)
	}
	if err != nil {
		if o.fd >= 0 {
			o.remove()
		}
		r.problem("%s: NOT RESTORED: %v", n.Path, trimmed{err})
		return
	}
	// Metadata goes on the descriptor written, never through the name,
	// which someone with access to the target could swap meanwhile.
	opts := r.o.Meta
	opts.New = o.dir.bare // a file this restore created, in a directory it made
	opts.ModeSet = o.modeSet
	if o.src != nil {
		o.src.ok, o.src.dir, o.src.name = true, o.dir, o.name
		close(o.src.done)
		published = true
	}
	if n.Nlink > 1 {
		opts.SkipFlags = true // links come later; an immutable file cannot be linked
		r.linkable(o.dir, o.name, o.fd, n, false)
	}
	if err := meta.ApplyFD(o.fd, n, opts); err != nil {
		r.problem("%s: metadata: %v", n.Path, err)
	}
	if err := unix.Close(o.fd); err != nil {
		r.problem("%s: close: %v", n.Path, err)
		return
	}
	atomic.AddInt64(&r.stats.Files, 1)
}

// linkable records the file n, written or kept as fd under name in dir,
// as one hard links may point at (makeLinks); named: kept with several
// names there.
func (r *restorer) linkable(dir *dirEntry, name string, fd int, n *tree.Node, named bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return
	}
	rel := name
	if len(dir.path) > 0 {
		rel = string(dir.path) + "/" + name
	}
	r.mu.Lock()
	r.restored[string(n.Path)] = restoredFile{rel: rel, dev: st.Dev, ino: st.Ino, node: n, named: named}
	r.mu.Unlock()
}

// rename puts the written file in place. Unless replace, a name that
// appeared since the policy was checked is not replaced (RENAME_NOREPLACE,
// where the filesystem supports it).
func rename(dirfd int, tmp, name string, replace bool) error {
	if !replace {
		err := unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_NOREPLACE)
		if err == nil || (err != unix.EINVAL && err != unix.ENOSYS) {
			return err
		}
	}
	return unix.Renameat(dirfd, tmp, dirfd, name)
}

// remove closes and deletes the file o could not complete: nothing to
// delete when it is unnamed, else its temporary name, or its own name
// while that is still the file written (it is never another object put
// there meanwhile).
func (o *openFile) remove() {
	defer unix.Close(o.fd)
	if o.anon {
		return
	}
	if o.tmp != "" {
		unix.Unlinkat(o.dir.fd, o.tmp, 0)
		return
	}
	var mine, there unix.Stat_t
	if unix.Fstat(o.fd, &mine) == nil && unix.Fstatat(o.dir.fd, o.name, &there, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		mine.Dev == there.Dev && mine.Ino == there.Ino {
		unix.Unlinkat(o.dir.fd, o.name, 0)
	}
}

func written(o *openFile) int64 {
	var n int64
	for _, e := range o.ext[:o.ei] {
		n += e.Len
	}
	return n + o.eoff
}
