package treediff

import (
	"fmt"
	"io"
	"os"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
)

// dirSource turns a directory tree into a version-like node stream: nodes in
// tree order with data extents, LinkTo for the later links of a hard-link
// group, and Status for what cannot be read.
type dirSource struct {
	w     *walker
	file  *os.File // content of the node returned last
	ext   []tree.Extent
	links map[inode][]byte
	errs  []Difference
}

func newDirSource(root string, opts Options) (*dirSource, error) {
	w, err := newWalker(root, opts.CrossMounts)
	if err != nil {
		return nil, err
	}
	return &dirSource{w: w, links: map[inode][]byte{}}, nil
}

func (s *dirSource) close() {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	s.w.close()
}

func (s *dirSource) problems() []Difference {
	for _, p := range s.w.problems {
		s.errs = append(s.errs, Difference{Path: p.rel, Field: "error", Want: "original readable", Got: p.err.Error()})
	}
	s.w.problems = s.w.problems[:0]
	out := s.errs
	s.errs = nil
	return out
}

func (s *dirSource) next() (*tree.Node, error) {
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
	it, err := s.w.next()
	if err != nil {
		return nil, err
	}
	n := it.node
	if it.err != nil {
		n.Status, n.Err = tree.StatusUnreadable, it.err.Error()
		if n.Type == 0 {
			// Not even stat'ed: it vanished or cannot be looked at.
			s.errs = append(s.errs, Difference{Path: it.rel, Field: "error", Want: "original readable", Got: it.err.Error()})
			return s.next()
		}
	}
	if n.Type != tree.TypeFile || n.Status != tree.StatusOK {
		return &n, nil
	}
	if n.Nlink > 1 {
		key := inode{n.Dev, n.Ino}
		if first, ok := s.links[key]; ok {
			n.LinkTo = first
			return &n, nil
		}
		s.links[key] = append([]byte(nil), n.Path...)
	}
	f, err := openFile(it.dirfd, it.name)
	if err != nil {
		n.Status, n.Err = tree.StatusUnreadable, fmt.Sprintf("open: %v", err)
		return &n, nil
	}
	ext, sparse, err := meta.DataExtents(f, n.Size)
	if err != nil {
		f.Close()
		n.Status, n.Err = tree.StatusUnreadable, err.Error()
		return &n, nil
	}
	s.file, s.ext = f, ext
	if sparse {
		n.Sparse, n.Extents = true, ext
	}
	return &n, nil
}

func (s *dirSource) open(n *tree.Node) (io.ReadCloser, error) {
	if s.file == nil {
		return nil, fmt.Errorf("open %q: not the current node", n.Path)
	}
	return io.NopCloser(meta.ExtentReader(s.file, s.ext)), nil
}
