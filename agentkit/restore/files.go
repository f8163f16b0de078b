package restore

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

// Regular files are written straight from the download stream: each chunk
// is checked and written where it belongs as its frame arrives, so a
// restore holds no chunk beyond the frame being read, and the HTTP/2
// stream's window is the read-ahead. Small files are batched: one request
// fetches the chunks of many files, which costs one round trip instead of
// one per file.
const (
	smallFile    = 1 << 20 // files up to this size share requests
	batchFiles   = 128     // files per batched request, at most
	batchBytes   = 8 << 20 // bytes per batched request, about
	idsPerFetch  = 1024    // chunks per request for one large file
	openJobSlack = 16      // jobs queued ahead of the workers
)

// fileJob is one regular file to write.
type fileJob struct {
	dir  *dirEntry
	name string
	node *tree.Node
	// fresh: nothing had the name when the policy was applied.
	fresh bool
}

// job is what a worker does at once: one large file, or a batch of small
// ones whose chunks come in one request.
type job struct {
	files []fileJob
}

// queueFile hands a file to the workers, batching small ones.
func (r *restorer) queueFile(f fileJob) {
	f.dir.wg.Add(1)
	if f.node.Size > smallFile {
		r.jobs <- &job{files: []fileJob{f}}
		return
	}
	r.batch = append(r.batch, f)
	r.batchSize += f.node.Size
	if len(r.batch) >= batchFiles || r.batchSize >= batchBytes {
		r.flushBatch()
	}
}

func (r *restorer) flushBatch() {
	if len(r.batch) == 0 {
		return
	}
	r.jobs <- &job{files: r.batch}
	r.batch, r.batchSize = nil, 0
}

// fileWriter is one worker's state.
type fileWriter struct {
	r      *restorer
	h      *keys.Hasher
	buf    []byte // decompressed chunk
	jobErr error  // the download of the current job failed
}

// open is a file being written.
type openFile struct {
	fileJob
	tmp  string // the temporary name; "" when written under its name
	fd   int
	ext  []tree.Extent // where the chunks' bytes go
	ei   int           // current extent
	eoff int64         // bytes written into it
	left int           // chunks still to come
	err  error         // the first problem; later chunks are skipped
}

// run writes the files of j.
func (w *fileWriter) run(j *job) {
	w.jobErr = nil
	var ids [][32]byte
	for _, f := range j.files {
		for _, c := range f.node.Chunks {
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
		err := w.r.o.Source.GetChunks(w.r.ctx, batch, func(fr *wire.Frame) error {
			w.chunk(cur, fr)
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
}

// start creates the file f under a temporary name beside its own; finish
// renames it onto the name once written (RENAME_NOREPLACE unless
// -existing overwrite replaces what is there), so no file is ever seen
// half-written under its name: a restore run again after a crash, with the
// default -existing skip, never keeps a partial file as if restored. (Files
// created under their own name with O_EXCL, one system call less, left
// exactly that after a crash.)
func (w *fileWriter) start(f fileJob) *openFile {
	o := &openFile{fileJob: f, fd: -1, left: len(f.node.Chunks)}
	o.ext = f.node.Extents
	if !f.node.Sparse {
		o.ext = nil
		if f.node.Size > 0 {
			o.ext = []tree.Extent{{Off: 0, Len: f.node.Size}}
		}
	}
	if w.jobErr != nil {
		o.err = w.jobErr
		return o
	}
	o.tmp = fmt.Sprintf(".%s.vaultnode-%d", truncName(f.name), time.Now().UnixNano())
	o.fd, o.err = meta.CreateFD(f.dir.fd, o.tmp, meta.Options{})
	return o
}

// chunk checks one downloaded chunk and writes it into o.
func (w *fileWriter) chunk(o *openFile, fr *wire.Frame) {
	if o.err != nil {
		return
	}
	// The frame must be the chunk asked for at this place, of the length
	// the listing says: a vault that answers another (valid) chunk would
	// otherwise put foreign content into the file.
	want := o.node.Chunks[len(o.node.Chunks)-o.left]
	if fr.ID != want.ID {
		o.err = &ChunkError{want.ID, fmt.Sprintf("the vault answered chunk %x in its place", fr.ID[:8])}
		return
	}
	var err error
	data := fr.Payload
	switch {
	case fr.Kind == wire.StatusMissing:
		err = &ChunkError{fr.ID, "missing from the vault"}
	case fr.Kind != wire.StatusOK:
		err = &ChunkError{fr.ID, "damaged on the vault: " + string(fr.Payload)}
	case fr.Flags != 0 || uint32(len(data)) != fr.PlainLen: // else checked and written as is
		w.buf, err = wire.Decompress(w.buf[:0], fr.Flags, fr.Payload, fr.PlainLen)
		data = w.buf
	}
	if err == nil && w.h.Sum(data) != fr.ID {
		err = &ChunkError{fr.ID, "content does not match its id (damaged)"}
	}
	if err == nil && uint32(len(data)) != want.Len {
		err = &ChunkError{fr.ID, fmt.Sprintf("holds %d bytes, the listing says %d", len(data), want.Len)}
	}
	if err != nil {
		var ce *ChunkError
		if !errors.As(err, &ce) {
			err = &ChunkError{fr.ID, err.Error()}
		}
		o.err = err
		return
	}
	o.err = o.write(data)
	atomic.AddInt64(&w.r.stats.Bytes, int64(len(data)))
}

// write puts the next bytes of the content where the extents say.
func (o *openFile) write(p []byte) error {
	for len(p) > 0 {
		if o.ei >= len(o.ext) {
			return fmt.Errorf("the chunks hold more than the file's %d bytes of data", dataLen(o.ext))
		}
		e := o.ext[o.ei]
		n := int(min(int64(len(p)), e.Len-o.eoff))
		if err := pwriteAll(o.fd, p[:n], e.Off+o.eoff); err != nil {
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

// finish completes o: size, rename into place (a temporary file),
// metadata, close; or removes the file written and reports why o could not
// be restored.
func (w *fileWriter) finish(o *openFile) {
	r := w.r
	n := o.node
	err := o.err
	if err == nil && o.left > 0 {
		err = fmt.Errorf("%d chunks never arrived", o.left)
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
	if err == nil && o.tmp != "" {
		if r.o.Existing == Overwrite {
			_ = meta.Unprotect(o.dir.fd, o.name)
		}
		if testHookBeforeRename != nil {
			testHookBeforeRename(n.Path)
		}
		err = rename(o.dir.fd, o.tmp, o.name, r.o.Existing == Overwrite)
	}
	if err != nil {
		if o.fd >= 0 {
			o.remove()
		}
		r.problem("%s: NOT RESTORED: %s", n.Path, strings.TrimPrefix(err.Error(), "restore: "))
		return
	}
	// Metadata goes on the descriptor written, never through the name,
	// which someone with access to the target could swap meanwhile.
	opts := r.o.Meta
	opts.New = o.dir.bare // a file this restore created, in a directory it made
	if n.Nlink > 1 {
		opts.SkipFlags = true // links come later; an immutable file cannot be linked
		var st unix.Stat_t
		if err := unix.Fstat(o.fd, &st); err == nil {
			rel := o.name
			if len(o.dir.path) > 0 {
				rel = string(o.dir.path) + "/" + o.name
			}
			r.mu.Lock()
			r.restored[string(n.Path)] = restoredFile{rel: rel, dev: st.Dev, ino: st.Ino, node: n}
			r.mu.Unlock()
		}
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

// rename puts the written file in place. Unless replace, a name that
// appeared since the policy was checked is not replaced (RENAME_NOREPLACE,
// where the filesystem supports it).
func rename(dirfd int, tmp, name string, replace bool) error {
	if !replace {
		err := unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_NOREPLACE)
		if err == nil || (err != unix.EINVAL && err != unix.ENOSYS) {
			if err == unix.EEXIST {
				return fmt.Errorf("%q appeared meanwhile; it was left as it is: %w", name, err)
			}
			return err
		}
	}
	return unix.Renameat(dirfd, tmp, dirfd, name)
}

// remove closes and deletes the file o could not complete: its temporary
// name, or its own name while that is still the file written (it is never
// another object put there meanwhile).
func (o *openFile) remove() {
	defer unix.Close(o.fd)
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
