package corpus

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// Entry is what a tree comparison looks at for one path.
type Entry struct {
	Path   string      // slash-separated, relative to the root
	Mode   fs.FileMode // type and permission bits
	Size   int64       // regular files only
	Mtime  time.Time   // regular files only
	Link   string      // symlink target
	Digest [32]byte    // regular files only; holes and zero blocks hash alike
}

const hashBlock = 1 << 20

// zeroBlock is compared against, never written.
var zeroBlock = make([]byte, hashBlock)

// Manifest lists every entry under dir (the root excluded) in lexical order
// with a digest of each regular file. Directory times are left out: restoring
// a tree rarely needs them and writing into a directory changes them.
func Manifest(dir string) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := Entry{Path: filepath.ToSlash(rel), Mode: info.Mode() & (fs.ModeType | fs.ModePerm)}
		switch {
		case info.Mode().IsRegular():
			e.Size = info.Size()
			e.Mtime = info.ModTime().UTC()
		case info.Mode()&fs.ModeSymlink != 0:
			if e.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tree: %w", err)
	}
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i := range out {
		if !out[i].Mode.IsRegular() {
			continue
		}
		g.Go(func() error {
			d, err := fileDigest(filepath.Join(dir, filepath.FromSlash(out[i].Path)))
			if err != nil {
				return fmt.Errorf("hash file: %w", err)
			}
			out[i].Digest = d
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// seekData is lseek's SEEK_DATA.
const seekData = 3

// fileDigest hashes a file in 1 MiB blocks; an all-zero block (read or a
// hole found with SEEK_DATA) hashes as a marker, so a sparse file and its
// dense copy have the same digest and holes cost no reading.
func fileDigest(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return [32]byte{}, err
	}
	size := st.Size()
	h := sha256.New()
	buf := make([]byte, min(hashBlock, max(size, 1)))
	var off int64
	nextData := int64(-1) // unknown
	for {
		if nextData < off {
			nd, err := f.Seek(off, seekData)
			switch {
			case errors.Is(err, syscall.ENXIO):
				nd = 1 << 62 // only a hole is left
			case err != nil:
				nd = off // no SEEK_DATA: read everything
			}
			nextData = nd
		}
		if nextData >= off+hashBlock {
			// The whole block is a hole, unless the file ends inside it.
			n := min(hashBlock, size-off)
			if n <= 0 {
				break
			}
			writeZeroMarker(h, n)
			off += n
			continue
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return [32]byte{}, err
		}
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if bytes.Equal(buf[:n], zeroBlock[:n]) {
				writeZeroMarker(h, int64(n))
			} else {
				h.Write([]byte{'D'})
				h.Write(buf[:n])
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return [32]byte{}, err
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d, nil
}

func writeZeroMarker(w io.Writer, n int64) {
	var b [9]byte
	b[0] = 'Z'
	binary.LittleEndian.PutUint64(b[1:], uint64(n))
	w.Write(b[:])
}

// Hash is one digest of a whole manifest.
func Hash(entries []Entry) string {
	h := sha256.New()
	for _, e := range entries {
		fmt.Fprintf(h, "%q %o %d %d %q %x\n", e.Path, uint32(e.Mode), e.Size, e.Mtime.UnixNano(), e.Link, e.Digest)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TreeHash is Hash of Manifest(dir).
func TreeHash(dir string) (string, error) {
	m, err := Manifest(dir)
	if err != nil {
		return "", err
	}
	return Hash(m), nil
}

// Diff describes how got differs from want, one line per difference, at
// most limit lines (0 means all) plus a count of the rest.
func Diff(want, got []Entry, limit int) []string {
	var out []string
	extra := 0
	add := func(format string, args ...any) {
		if limit > 0 && len(out) >= limit {
			extra++
			return
		}
		out = append(out, fmt.Sprintf(format, args...))
	}
	i, j := 0, 0
	for i < len(want) || j < len(got) {
		switch {
		case j >= len(got) || (i < len(want) && want[i].Path < got[j].Path):
			add("missing %s", want[i].Path)
			i++
		case i >= len(want) || got[j].Path < want[i].Path:
			add("unexpected %s", got[j].Path)
			j++
		default:
			w, g := want[i], got[j]
			switch {
			case w.Mode != g.Mode:
				add("%s: mode %v, want %v", w.Path, g.Mode, w.Mode)
			case w.Size != g.Size:
				add("%s: size %d, want %d", w.Path, g.Size, w.Size)
			case w.Digest != g.Digest:
				add("%s: content differs", w.Path)
			case w.Link != g.Link:
				add("%s: link %q, want %q", w.Path, g.Link, w.Link)
			case !w.Mtime.Equal(g.Mtime):
				add("%s: mtime %v, want %v", w.Path, g.Mtime, w.Mtime)
			}
			i++
			j++
		}
	}
	if extra > 0 {
		out = append(out, fmt.Sprintf("... and %d more", extra))
	}
	return out
}

// Measure counts what an existing tree under dir holds (the root
// excluded), for a benchmark of a tree it did not generate: files,
// directories and symbolic links, their apparent size, and the bytes
// allocated to regular files (at most each one's size), its data when
// holes are left out. A file with fewer bytes allocated than its size is
// counted sparse. The generated kinds (SmallFiles, LargeFiles) stay zero.
func Measure(dir string) (Stats, error) {
	var st Stats
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		switch {
		case d.IsDir():
			st.Dirs++
		case d.Type()&fs.ModeSymlink != 0:
			st.Symlinks++
		case d.Type().IsRegular():
			var s syscall.Stat_t
			if err := syscall.Lstat(p, &s); err != nil {
				return err
			}
			st.Files++
			st.Bytes += s.Size
			data := min(s.Blocks*512, s.Size)
			st.DataBytes += data
			if data < s.Size {
				st.SparseFiles++
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, fmt.Errorf("measure tree: %w", err)
	}
	return st, nil
}
