package meta

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// DataExtents finds the data ranges of the first size bytes of f with
// SEEK_DATA/SEEK_HOLE, never reading holes. A file without holes gives one
// extent covering it and sparse false; an empty file gives no extent and
// sparse false; a file that is one hole gives no extent and sparse true.
// A filesystem without SEEK_DATA is treated as having no holes. The file
// offset is restored afterwards.
func DataExtents(f *os.File, size int64) (extents []tree.Extent, sparse bool, err error) {
	if size <= 0 {
		return nil, false, nil
	}
	pos, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, false, fmt.Errorf("find extents of %s: %w", f.Name(), err)
	}
	defer func() {
		if _, serr := f.Seek(pos, io.SeekStart); serr != nil && err == nil {
			err = fmt.Errorf("find extents of %s: %w", f.Name(), serr)
		}
	}()
	whole := []tree.Extent{{Off: 0, Len: size}}
	var off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole after off
		}
		if err != nil {
			if len(extents) == 0 && errors.Is(err, unix.EINVAL) {
				return whole, false, nil
			}
			return nil, false, fmt.Errorf("seek data in %s at %d: %w", f.Name(), off, err)
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, false, fmt.Errorf("seek hole in %s at %d: %w", f.Name(), data, err)
		}
		if hole > size {
			hole = size
		}
		if hole <= data { // defensive: never loop
			hole = size
		}
		extents = append(extents, tree.Extent{Off: data, Len: hole - data})
		off = hole
	}
	if len(extents) == 1 && extents[0] == whole[0] {
		return extents, false, nil
	}
	return extents, true, nil
}

// WriteSparse writes a regular file's content into f, which it first
// truncates to zero: for a sparse node the data of n.Extents in order, each
// at its offset, read one after another from data; otherwise n.Size bytes
// from data. It then sets the size to n.Size, so holes stay holes and the
// file takes no more blocks than the original. data must hold exactly the
// bytes the node's chunks hold.
func WriteSparse(f *os.File, n *tree.Node, data io.Reader) error {
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", f.Name(), err)
	}
	ext := n.Extents
	if !n.Sparse {
		ext = nil
		if n.Size > 0 {
			ext = []tree.Extent{{Off: 0, Len: n.Size}}
		}
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for _, e := range ext {
		w := io.NewOffsetWriter(f, e.Off)
		got, err := io.CopyBuffer(w, io.LimitReader(data, e.Len), buf)
		if err != nil {
			return fmt.Errorf("write %s at %d: %w", f.Name(), e.Off+got, err)
		}
		if got != e.Len {
			return fmt.Errorf("write %s extent %d+%d: content ends after %d bytes: %w", f.Name(), e.Off, e.Len, got, io.ErrUnexpectedEOF)
		}
	}
	if err := f.Truncate(n.Size); err != nil {
		return fmt.Errorf("truncate %s to %d: %w", f.Name(), n.Size, err)
	}
	return nil
}

// ExtentReader returns the content of f's extents concatenated in order,
// the byte stream a sparse node's chunks hold (WriteSparse's input).
//
// It asks the kernel to read the extents ahead of it, range by range
// (POSIX_FADV_WILLNEED, up to extentAhead bytes of data ahead). The
// kernel's own read-ahead knows nothing of holes: past the end of each
// extent it fills up to read_ahead_kb (8 MiB on some disks) of the hole
// with pages of zeros, which cost more than the reads themselves (a file
// of 20,000 extents of 4-40 KiB between holes of 4 KiB-1 MiB: 3.2-4.1 CPU
// seconds read cold, 0.22 s read this way; docs/performance.md, item 68).
func ExtentReader(f *os.File, extents []tree.Extent) io.Reader {
	return &extentReader{f: f, ext: extents, adv: NewExtentAdvisor(int(f.Fd()), extents)}
}

// extentAhead is how many bytes of data ExtentReader asks the kernel to
// read ahead of what it returned; it asks again once less than half of
// that is left, at most extentAdvise bytes of one extent per request.
const (
	extentAhead  = 4 << 20
	extentAdvise = 1 << 20
)

type extentReader struct {
	f   *os.File
	ext []tree.Extent
	i   int   // the extent being read
	off int64 // bytes of ext[i] read
	pos int64 // bytes of the stream read, or skipped where a file shrank
	adv ExtentAdvisor
}

// ExtentAdvisor asks the kernel to read a sparse file's extents ahead of a
// reader going through them in order (ExtentReader, and a restore checking
// the file at the target against the version), as POSIX_FADV_WILLNEED
// requests of at most extentAdvise bytes, up to extentAhead bytes of data
// ahead of the reader's position in the extents' concatenated data.
type ExtentAdvisor struct {
	fd    int
	ext   []tree.Extent
	ai    int   // the extent being advised
	aoff  int64 // bytes of ext[ai] advised
	apos  int64 // bytes of the data advised
	noAdv bool  // the filesystem refused advice: read without it
}

// NewExtentAdvisor advises the reads of fd's extents ext.
func NewExtentAdvisor(fd int, ext []tree.Extent) ExtentAdvisor {
	return ExtentAdvisor{fd: fd, ext: ext}
}

// Advise asks for the data after pos (bytes of the extents' data) once
// less than half of extentAhead is asked for ahead of it.
func (a *ExtentAdvisor) Advise(pos int64) {
	if a.noAdv || a.apos-pos >= extentAhead/2 {
		return
	}
	if a.apos < pos { // the reader went past what was advised (a shrunk file)
		a.ai, a.aoff, a.apos = 0, 0, 0
		for a.ai < len(a.ext) && a.apos+a.ext[a.ai].Len <= pos {
			a.apos += a.ext[a.ai].Len
			a.ai++
		}
		if a.ai < len(a.ext) {
			a.aoff = pos - a.apos
			a.apos = pos
		}
	}
	for a.ai < len(a.ext) && a.apos-pos < extentAhead {
		e := a.ext[a.ai]
		n := min(e.Len-a.aoff, extentAdvise)
		if err := unix.Fadvise(a.fd, e.Off+a.aoff, n, unix.FADV_WILLNEED); err != nil {
			a.noAdv = true
			return
		}
		a.aoff += n
		a.apos += n
		if a.aoff == e.Len {
			a.ai, a.aoff = a.ai+1, 0
		}
	}
}

func (r *extentReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.i < len(r.ext) {
		r.adv.Advise(r.pos)
		e := r.ext[r.i]
		m, err := r.f.ReadAt(p[n:n+int(min(int64(len(p)-n), e.Len-r.off))], e.Off+r.off)
		n += m
		r.off += int64(m)
		r.pos += int64(m)
		switch {
		case err == io.EOF: // the file shrank: the next extent, as io.SectionReader would
			r.pos += e.Len - r.off
			fallthrough
		case r.off == e.Len:
			r.i, r.off = r.i+1, 0
		case err != nil:
			return n, err
		}
	}
	if n == 0 && r.i >= len(r.ext) {
		return 0, io.EOF
	}
	return n, nil
}

// copyBufs holds WriteSparse's copy buffers: a restore of many small files
// would otherwise allocate and zero a megabyte per file.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
