package backup

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/chunker"
	"vaultnode/internal/keys"
	"vaultnode/internal/tree"
	"vaultnode/internal/wire"
)

type reader struct {
	gear    *chunker.Gear
	hasher  *keys.Hasher
	up      *uploader
	stats   *Stats
	retries int
	buf     []byte
	// zeroIDs are the ids of chunks of zeros by length in chunker.ZeroUnit
	// units (index: units less one), once one was read.
	zeroIDs [chunker.MaxSize / chunker.ZeroUnit]*keys.ID
	// uncut counts the chunks cutKnown took at a previous version's
	// boundaries without looking for one, aside the files it left to
	// cutAside (tests).
	uncut, aside int
}

// read fills it.node's chunks from its open file. A file that changes while
// it is read is read again, up to the retry limit, then recorded as
// inconsistent: never a silently torn copy.
func (r *reader) read(ctx context.Context, it *item) error {
	defer close(it.done)
	defer it.closeFile()
	n := &it.node
	atomic.AddInt64(&r.stats.FilesRead, 1)
	for attempt := 0; ; attempt++ {
		var before tree.Node
		var allocated int64
		var err error
		if attempt == 0 && it.before != nil {
			// Taken through fd after it was opened, before any read.
			before, allocated = meta.FromStatx(it.before), int64(it.before.Blocks)*512
		} else if before, allocated, err = fstat(it.fd); err != nil {
			return r.unreadable(n, err)
		}
		n.Size, n.Mtime, n.Ctime = before.Size, before.Mtime, before.Ctime
		err = r.readOnce(ctx, it, allocated)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return r.unreadable(n, err)
		}
		after, _, err := fstat(it.fd)
		if err != nil {
			return r.unreadable(n, err)
		}
		if after.Size == before.Size && after.Mtime == before.Mtime && after.Ctime == before.Ctime {
			return nil
		}
		if attempt >= r.retries {
			atomic.AddInt64(&r.stats.Inconsistent, 1)
			n.Chunks, n.Extents, n.Sparse = nil, nil, false
			n.Status, n.Err = tree.StatusInconsistent, fmt.Sprintf("kept changing while read (%d attempts); retried next run", attempt+1)
			return nil
		}
		if _, err := unix.Seek(it.fd, 0, io.SeekStart); err != nil {
			return r.unreadable(n, err)
		}
	}
}

// closeFile closes the item's open file.
func (it *item) closeFile() {
	if it.file != nil {
		it.file.Close()
	} else {
		unix.Close(it.fd)
	}
}

// fdReader reads a regular file's descriptor directly.
type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(int(f), p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// readPiece is the most a large file's reader asks of one read. The
// chunker refills its 8 MiB buffer until a largest chunk's worth is there:
// in one read of all its free room, the bytes it then cut and hashed had
// left the processor's caches, and the gear hash took twice as long
// (incremental backups of changed images, 14 alternating runs: median
// 0.339 s against 0.351 s, agent CPU 7 % less; 1 MiB alike, 4 MiB no gain;
// docs/performance.md, "Chunker, frames, readers' buffers").
const readPiece = 2 << 20

// pieces reads at most readPiece bytes at a time from r.
type pieces struct{ r io.Reader }

func (p pieces) Read(b []byte) (int, error) {
	if len(b) > readPiece {
		b = b[:readPiece]
	}
	return p.r.Read(b)
}

func (r *reader) unreadable(n *tree.Node, err error) error {
	atomic.AddInt64(&r.stats.Unreadable, 1)
	n.Chunks, n.Extents, n.Sparse = nil, nil, false
	n.Status, n.Err = tree.StatusUnreadable, err.Error()
	return nil
}

// fstat describes an open file: its node fields and allocated bytes.
func fstat(fd int) (tree.Node, int64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BASIC_STATS, &stx); err != nil {
		return tree.Node{}, 0, fmt.Errorf("stat: %w", err)
	}
	return meta.FromStatx(&stx), int64(stx.Blocks) * 512, nil
}

func (r *reader) readOnce(ctx context.Context, it *item, allocated int64) error {
	n := &it.node
	n.Chunks = n.Chunks[:0]
	n.Extents, n.Sparse = nil, false
	var src io.Reader = fdReader(it.fd)
	if allocated < n.Size {
		// Fewer blocks than bytes: look for holes. An *os.File only
		// here: making one costs two system calls (fcntl, epoll_ctl).
		if it.file == nil {
			it.file = os.NewFile(uintptr(it.fd), string(n.Path))
		}
		ext, sparse, err := meta.DataExtents(it.file, n.Size)
		if err != nil {
			return err
		}
		if sparse {
			n.Extents, n.Sparse = ext, true
			src = meta.ExtentReader(it.file, ext)
		}
	}
	limit := n.Size
	if n.Sparse {
		limit = 0
		for _, e := range n.Extents {
			limit += e.Len
		}
	}
	// Read no more than the size stat reported, so a growing file is seen
	// as changed by the second stat rather than read past its size.
	lr := io.LimitReader(pieces{src}, limit)
	var next func() ([]byte, error)
	if limit <= chunker.MinSize && int64(len(r.buf)) > limit {
		// A small file is one chunk (the chunker never cuts below
		// MinSize): read it straight into the buffer. The small-file
		// readers have buffers of this size only.
		done := false
		next = func() ([]byte, error) {
			if done {
				return nil, io.EOF
			}
			done = true
			m, err := io.ReadFull(lr, r.buf[:limit])
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = nil // it shrank: see total below
			}
			if err != nil {
				return nil, err
			}
			if m == 0 {
				return nil, io.EOF
			}
			return r.buf[:m], nil
		}
	} else {
		c := chunker.New(r.gear, lr, r.buf)
		if it.known != nil && len(it.known.refs) > 1 {
			// (A previous version of one chunk has no ends to cut at:
			// take checks the chunks against it.)
			return r.cutKnown(ctx, it, c, limit)
		}
		if limit >= hashAsideMin {
			return r.cutAside(ctx, it, c, limit)
		}
		next = c.Next
	}
	var total int64
	for {
		b, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		total += int64(len(b))
		if err := r.take(ctx, it, b, r.sum(b)); err != nil {
			return err
		}
	}
	return r.readTotal(n, total, limit)
}

// take adds chunk b of it's file, whose id is id, to the node and hands it
// to the uploader unless the vault has it.
func (r *reader) take(ctx context.Context, it *item, b []byte, id keys.ID) error {
	it.node.Chunks = append(it.node.Chunks, tree.ChunkRef{ID: id, Len: uint32(len(b))})
	atomic.AddInt64(&r.stats.BytesRead, int64(len(b)))
	if it.known.has(id) {
		atomic.AddInt64(&r.stats.ChunksReused, 1)
		return nil
	}
	return r.up.add(ctx, wire.FrameData, id, b)
}

// cutKnown reads a changed file whose previous version had several chunks.
// Where the content is still theirs it cuts where they ended without
// looking for boundaries: the chunk of the previous version's length is
// hashed, and if its id is the one recorded, the rolling hash (which
// starts afresh at each chunk, and stopped at its first boundary when that
// chunk was cut) has no boundary in it before its end; the chunker then
// checks what else decides the end: the hash at that end, and its rule
// for runs of zeros, which looks up to chunker.ZeroUnit bytes past it
// (a run of zeros there that grew or shrank moves the end). Only the
// previous version's last chunk is not taken so: the end of the file cut
// it. On a mismatch the chunker looks for the boundary as usual (the hash
// is kept when it ends at the same place, as an edit in place leaves it),
// and the known chunks are taken again from the next one the chunker makes
// that is among them. The chunks are the ones a plain pass makes: an
// appended log or an image with a few blocks changed costs its reading and
// hashing, not the search for boundaries in what did not change
// (docs/performance.md, items 77, 79 and 80).
func (r *reader) cutKnown(ctx context.Context, it *item, c *chunker.Chunker, limit int64) error {
	kc := newKnownCut(c, it.known, r.sum)
	var total int64
	for {
		if kc.strange >= unknownRun && limit-total >= hashAsideMin {
			// Little here is the previous version's any more (new content,
			// or a change in every chunk): the search for boundaries and
			// the hashing on two goroutines.
			r.aside++
			return r.cutAsideFrom(ctx, it, c, limit, total)
		}
		b, id, uncut, err := kc.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if uncut {
			r.uncut++
		}
		total += int64(len(b))
		if err := r.take(ctx, it, b, id); err != nil {
			return err
		}
	}
	return r.readTotal(&it.node, total, limit)
}

// knownCut cuts a stream whose previous version's chunks are known, as
// cutKnown says.
type knownCut struct {
	c    *chunker.Chunker
	k    *knownChunks
	sum  func([]byte) keys.ID
	refs []tree.ChunkRef // the previous chunks but the last
	// want is the index of the previous chunk expected next (len(refs):
	// none); strange counts the chunks in a row the chunker had to cut,
	// not taken at a previous chunk's end.
	want, strange int
}

// newKnownCut cuts c knowing the chunks k (nil: none, so that every chunk
// is the chunker's).
func newKnownCut(c *chunker.Chunker, k *knownChunks, sum func([]byte) keys.ID) *knownCut {
	kc := &knownCut{c: c, k: k, sum: sum}
	if k != nil {
		kc.refs = k.refs[:len(k.refs)-1]
	}
	return kc
}

// next returns the next chunk and its id, and whether it was taken at a
// previous chunk's end; io.EOF at the end.
func (kc *knownCut) next() (b []byte, id keys.ID, uncut bool, err error) {
	var (
		missID keys.ID // the id of the expected length's bytes, not the one expected
		missN  int
		missAt int
	)
	if kc.want < len(kc.refs) {
		want, at := kc.refs[kc.want], kc.want
		kc.want = len(kc.refs)
		if want.Len > 0 && int(want.Len) <= chunker.MaxSize {
			k, ends, err := kc.c.NextKnown(int(want.Len))
			switch {
			case err == nil:
				if id = kc.sum(k); id == want.ID && ends {
					kc.want, kc.strange = at+1, 0
					return k, id, true, nil
				}
				missID, missN, missAt = id, len(k), at
				kc.c.Unread(len(k))
			case err != io.ErrUnexpectedEOF:
				return nil, id, false, err
			}
		}
	}
	if b, err = kc.c.Next(); err != nil {
		return nil, id, false, err
	}
	if len(b) == missN {
		// The same bytes, changed within: the boundary after them is the
		// previous one's again.
		id, kc.want = missID, missAt+1
	} else {
		id = kc.sum(b)
		if i, ok := kc.k.first(id); ok {
			kc.want = i + 1
		}
	}
	kc.want = min(kc.want, len(kc.refs))
	kc.strange++
	return b, id, false, nil
}

// sum returns the id of chunk b. A chunk of zeros (whole chunker.ZeroUnit
// units, as the chunker cuts zero runs: preallocated files, the empty space
// of disk images) is hashed once per reader and length: checking that a
// chunk is zeros stops at its first byte that is not.
func (r *reader) sum(b []byte) keys.ID {
	if len(b) == 0 || len(b)%chunker.ZeroUnit != 0 || len(b) > chunker.MaxSize || !chunker.IsZero(b) {
		return r.hasher.Sum(b)
	}
	z := &r.zeroIDs[len(b)/chunker.ZeroUnit-1]
	if *z == nil {
		id := r.hasher.Sum(b)
		*z = &id
	}
	return **z
}

// unknownRun is how many chunks in a row cutKnown has the chunker cut
// (none of them where a previous chunk ended) before it leaves the rest of
// a large file to cutAside: a file rewritten whole, or changed in every
// chunk, keeps both cores busy.
const unknownRun = 4

// hashAsideMin is the size from which a file's chunks are hashed (and
// handed to the uploader) on a goroutine of their own while the reader
// reads and cuts the next ones.
const hashAsideMin = 2 * chunker.MaxSize

// cutAside reads and cuts a large file while another goroutine hashes its
// chunks in order, so one large file (a changed image in an incremental, a
// database dump) keeps two cores busy rather than one. The chunks stay in
// the chunker's buffer until hashed: it waits for them before it moves
// its buffer (Chunker.Hold).
func (r *reader) cutAside(ctx context.Context, it *item, c *chunker.Chunker, limit int64) error {
	return r.cutAsideFrom(ctx, it, c, limit, 0)
}

// cutAsideFrom is cutAside for the rest of a file of which taken bytes were
// taken already.
func (r *reader) cutAsideFrom(ctx context.Context, it *item, c *chunker.Chunker, limit, taken int64) error {
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
		herr   error
		total  = taken
	)
	chunks := make(chan []byte, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range chunks {
			if herr == nil {
				total += int64(len(b))
				if herr = r.take(ctx, it, b, r.sum(b)); herr != nil {
					failed.Store(true)
				}
			}
			wg.Done()
		}
	}()
	c.Hold(wg.Wait)
	var err error
	for !failed.Load() {
		var b []byte
		b, err = c.Next()
		if err != nil {
			break
		}
		wg.Add(1)
		chunks <- b
	}
	close(chunks)
	<-done
	switch {
	case herr != nil:
		return herr
	case err != nil && err != io.EOF:
		return fmt.Errorf("read: %w", err)
	}
	return r.readTotal(&it.node, total, limit)
}

// readTotal checks what was read of a file against its size.
func (r *reader) readTotal(n *tree.Node, total, limit int64) error {
	if total != limit {
		// The file shrank while read: the stat after will differ; make
		// the node consistent with what was read until then.
		if n.Sparse {
			return fmt.Errorf("read: sparse file shrank while read")
		}
		n.Size = total
	}
	return nil
}

// smallBatch is how many waiting small files a reader takes at once. It
// asks the kernel to read them all (POSIX_FADV_WILLNEED) before it reads
// the first: the disk gets a queue of neighbouring reads it can merge,
// where each reader alone would wait for one file after another while
// holding one of the runtime's few processors in the system call.
const smallBatch = 16

// readBatch is what a reader has taken and not yet read.
type readBatch struct{ items []*item }

// take makes it, and up to most-1 more files already waiting in from, the
// batch, and starts the kernel's reads of them when there are several.
func (b *readBatch) take(it *item, from <-chan *item, most int) {
	b.items = append(b.items[:0], it)
	for more := true; more && len(b.items) < most; {
		select {
		case next, ok := <-from:
			if ok {
				b.items = append(b.items, next)
			} else {
				more = false
			}
		default:
			more = false
		}
	}
	if len(b.items) == 1 {
		return // read at once: advice would only cost a system call
	}
	for _, it := range b.items {
		// Advice: a filesystem that ignores it reads as before.
		_ = unix.Fadvise(it.fd, 0, it.node.Size, unix.FADV_WILLNEED)
	}
}

// read reads the batch in turn; after an error it closes the files it did
// not read.
func (b *readBatch) read(ctx context.Context, r *reader) error {
	defer func() { b.items = b.items[:0] }()
	for i, it := range b.items {
		if err := r.read(ctx, it); err != nil {
			for _, rest := range b.items[i+1:] {
				rest.closeFile()
			}
			return err
		}
	}
	return nil
}
