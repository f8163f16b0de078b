package backup

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"go.uber.org/zap"

	"vaultnode/internal/tree"
)

// Renamed directories. A directory renamed or moved within the tree keeps
// its inode, and so do the files in it; but the previous listing is read
// by path, so every file under the new path looked new and was read, cut
// and hashed again (200,000 files in a renamed directory: 7.7 s, where a
// walk takes 1.8 s; docs/performance.md, item 67). Each synchronization
// therefore keeps, beside the listing cache, the directories it recorded
// by device, inode and birth time (dirs.index). A directory the previous
// listing lacks at its path but holds by identity elsewhere is walked
// beside a second reader of the listing cache at its old path, whose
// objects stand in for the missing previous ones. Nothing is trusted
// because of the index: a file's previous object is reused only when
// tree.Unchanged and the racy check agree, as for one found by path.
const (
	// dirIndexMax bounds the directories kept (in memory while the walk
	// records them, about 60 bytes each besides its path); a tree with more
	// keeps none, and its renamed directories are read again.
	dirIndexMax = 1 << 18
	// renamedMax bounds the second readers opened in one synchronization:
	// each reads the listing cache from its start to the old path.
	renamedMax = 8
	// dirIndexName is the index's file in the configuration's state.
	dirIndexName = "dirs.index"
)

var dirIndexMagic = []byte("vaultnode dirs 1\n")

type dirKey struct {
	dev, ino    uint64
	btime, nsec int64
}

func keyOf(n *tree.Node) dirKey {
	return dirKey{dev: n.Dev, ino: n.Ino, btime: n.Btime.Sec, nsec: n.Btime.Nsec}
}

type dirRec struct {
	key  dirKey
	path []byte
}

// dirRecorder keeps the directories a walk records; over when there were
// more than dirIndexMax.
type dirRecorder struct {
	recs []dirRec
	over bool
}

func (r *dirRecorder) add(n *tree.Node) {
	if r == nil || r.over || n.Ino == 0 || n.Status != tree.StatusOK {
		return
	}
	if len(r.recs) >= dirIndexMax {
		r.over, r.recs = true, nil
		return
	}
	r.recs = append(r.recs, dirRec{keyOf(n), n.Path})
}

// write writes the directories recorded, the index of the listing whose
// synchronization started at tag (Last.Started in nanoseconds), to a
// temporary file in dir and returns its name; "" when the walk recorded
// more than dirIndexMax. keepDirIndex makes it the index. It is a cache,
// checked when read: not synced.
func (r *dirRecorder) write(dir string, tag int64) (string, error) {
	if r.over {
		return "", nil
	}
	slices.SortFunc(r.recs, func(a, b dirRec) int {
		return cmp.Or(cmp.Compare(a.key.dev, b.key.dev), cmp.Compare(a.key.ino, b.key.ino))
	})
	f, err := os.CreateTemp(dir, dirsTemp)
	if err != nil {
		return "", err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	w.Write(dirIndexMagic)
	w.Write(binary.AppendUvarint(nil, uint64(tag)))
	w.Write(binary.AppendUvarint(nil, uint64(len(r.recs))))
	var b []byte
	for _, d := range r.recs {
		b = b[:0]
		for _, v := range []uint64{d.key.dev, d.key.ino, uint64(d.key.btime), uint64(d.key.nsec), uint64(len(d.path))} {
			b = binary.AppendUvarint(b, v)
		}
		w.Write(b)
		w.Write(d.path)
	}
	err = w.Flush()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// keepDirIndex makes tmp (from write) the index in dir; with tmp "" it
// removes the index.
func keepDirIndex(dir, tmp string) error {
	path := dir + "/" + dirIndexName
	if tmp == "" {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	return os.Rename(tmp, path)
}

// loadDirIndex reads the index in dir written with tag: nil when there is
// none, or it belongs to another listing.
func loadDirIndex(dir string, tag int64) (map[dirKey][]byte, error) {
	f, err := os.Open(dir + "/" + dirIndexName)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	head := make([]byte, len(dirIndexMagic))
	if _, err := io.ReadFull(r, head); err != nil || !bytes.Equal(head, dirIndexMagic) {
		return nil, fmt.Errorf("directory index: not one")
	}
	got, err := binary.ReadUvarint(r)
	if err != nil || got != uint64(tag) {
		return nil, nil // another listing's: a crash between the two renames
	}
	n, err := binary.ReadUvarint(r)
	if err != nil || n > dirIndexMax {
		return nil, fmt.Errorf("directory index: %d directories, over %d", n, dirIndexMax)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	idx := make(map[dirKey][]byte, min(n, uint64(fi.Size())/6)) // a record takes 6 bytes at least
	var v [5]uint64
	for range n {
		for i := range v {
			if v[i], err = binary.ReadUvarint(r); err != nil {
				return nil, fmt.Errorf("directory index: %w", err)
			}
		}
		if v[4] > tree.MaxPathLen {
			return nil, fmt.Errorf("directory index: a path of %d bytes", v[4])
		}
		p := make([]byte, v[4])
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, fmt.Errorf("directory index: %w", err)
		}
		idx[dirKey{v[0], v[1], int64(v[2]), int64(v[3])}] = p
	}
	return idx, nil
}

// renamed is a directory walked at a new path (to) that the previous
// listing holds at another (from), and the second reader of that listing
// positioned within it.
type renamed struct {
	to, from []byte
	r        *tree.Reader
	cur      *tree.Node
	close    func()
}

// prevAt returns the previous object standing in for p, a path at or under
// rn.to, or nil. Asked in tree order, it reads on from the last.
func (rn *renamed) prevAt(p []byte) *tree.Node {
	var old []byte
	switch {
	case bytes.Equal(p, rn.to):
		old = rn.from
	case len(p) > len(rn.to) && p[len(rn.to)] == '/' && bytes.HasPrefix(p, rn.to):
		old = append(append(make([]byte, 0, len(rn.from)+len(p)-len(rn.to)), rn.from...), p[len(rn.to):]...)
	default:
		return nil
	}
	for rn.cur != nil && tree.Compare(rn.cur.Path, old) < 0 {
		n, err := rn.r.Next()
		if err != nil {
			rn.cur = nil
			break
		}
		rn.cur = n
	}
	if rn.cur != nil && bytes.Equal(rn.cur.Path, old) {
		return rn.cur
	}
	return nil
}

// startRenamed looks up the directory n, new at its path, in the previous
// listing's index, and when that listing holds it elsewhere, walks it
// beside a reader of the listing there (w.ren) until endRenamed.
func (w *walker) startRenamed(n *tree.Node) bool {
	if w.ren != nil || w.prevPath == "" || w.renOpened >= renamedMax || n.Ino == 0 {
		return false
	}
	if !w.indexLoaded {
		w.indexLoaded = true
		idx, err := loadDirIndex(w.prevDir, w.prevTag)
		if err != nil {
			w.log.Debug("directory index unreadable: renamed directories are read again", zap.Error(err))
		}
		w.index = idx
	}
	from, ok := w.index[keyOf(n)]
	if !ok || bytes.Equal(from, n.Path) || string(from) == "." {
		return false
	}
	w.renOpened++
	f, err := os.Open(w.prevPath)
	if err != nil {
		return false
	}
	r, closeCache, err := openListingCache(f)
	if err != nil {
		f.Close()
		return false
	}
	rn := &renamed{to: n.Path, from: from, r: r, close: func() { closeCache(); f.Close() }}
	rn.cur, err = r.Next()
	if err != nil {
		rn.close()
		return false
	}
	if old := rn.prevAt(n.Path); old == nil || old.Type != tree.TypeDir || keyOf(old) != keyOf(n) {
		rn.close() // not in the listing after all (an index of another tree)
		return false
	}
	w.log.Debug("renamed directory: its previous objects are at its old path",
		zap.ByteString("path", n.Path), zap.ByteString("was", from))
	w.ren = rn
	return true
}

func (w *walker) endRenamed() {
	w.ren.close()
	w.ren = nil
}

// previousOf is the previous object at p, or the one standing in for it
// in a renamed directory.
func (w *walker) previousOf(prev *tree.Node, p []byte) *tree.Node {
	if prev == nil && w.ren != nil {
		return w.ren.prevAt(p)
	}
	return prev
}
