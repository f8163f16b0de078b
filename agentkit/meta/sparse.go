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
func ExtentReader(f *os.File, extents []tree.Extent) io.Reader {
	rs := make([]io.Reader, len(extents))
	for i, e := range extents {
		rs[i] = io.NewSectionReader(f, e.Off, e.Len)
	}
	return io.MultiReader(rs...)
}

// copyBufs holds WriteSparse's copy buffers: a restore of many small files
// would otherwise allocate and zero a megabyte per file.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
