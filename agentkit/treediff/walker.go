package treediff

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
)

// item is one object of a directory tree, met in tree order.
type item struct {
	dirfd int    // parent directory (the root itself for ".")
	name  string // name in dirfd
	rel   []byte
	node  tree.Node
	err   error // from Lstat; node may be partial
	mount bool  // a directory on another filesystem, not entered
}

type frame struct {
	fd    int
	rel   []byte
	names []string
	i     int
}

// walker yields a directory tree in tree order, one item per call, with one
// open descriptor per level (openat style: no depth limit). A directory is
// entered on the call after it was returned, unless skip is called.
type walker struct {
	root        string
	crossMounts bool
	rootDev     uint64
	stack       []*frame
	enter       *item // directory returned last, to enter on the next call
	started     bool
	rootfd      int
	// problems are directories that could not be entered, for the caller
	// to report; they do not stop the walk.
	problems []problem
}

type problem struct {
	rel []byte
	err error
}

func newWalker(root string, crossMounts bool) (*walker, error) {
	fd, err := openDir(unix.AT_FDCWD, root)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	return &walker{root: root, crossMounts: crossMounts, rootfd: fd}, nil
}

func openDir(dirfd int, name string) (int, error) { return meta.OpenDir(dirfd, name) }

func openFile(dirfd int, name string) (*os.File, error) { return meta.OpenFile(dirfd, name) }

func (w *walker) close() {
	for _, f := range w.stack {
		unix.Close(f.fd)
	}
	w.stack = nil
	if w.rootfd >= 0 {
		unix.Close(w.rootfd)
		w.rootfd = -1
	}
}

// skip keeps the walker from entering the directory it returned last.
func (w *walker) skip() { w.enter = nil }

func (w *walker) lstat(dirfd int, name string, rel []byte) *item {
	it := &item{dirfd: dirfd, name: name, rel: rel}
	it.node, it.err = meta.Lstat(dirfd, name)
	it.node.Path = rel
	if it.node.Type == tree.TypeDir && it.node.Dev != w.rootDev && !w.crossMounts && it.err == nil {
		it.mount = true
		it.node.MountPoint = true
	}
	return it
}

// next returns the next item, or io.EOF.
func (w *walker) next() (*item, error) {
	if !w.started {
		w.started = true
		it := &item{dirfd: w.rootfd, name: ".", rel: []byte(".")}
		it.node, it.err = meta.Lstat(w.rootfd, ".")
		it.node.Path = it.rel
		if it.node.Type == 0 {
			return nil, fmt.Errorf("stat %s: %w", w.root, it.err)
		}
		w.rootDev = it.node.Dev
		w.enter = it
		return it, nil
	}
	if e := w.enter; e != nil {
		w.enter = nil
		if e.node.Type == tree.TypeDir && !e.mount {
			fd := w.rootfd
			if string(e.rel) != "." {
				var err error
				if fd, err = openDir(e.dirfd, e.name); err != nil {
					w.problems = append(w.problems, problem{e.rel, fmt.Errorf("open directory: %w", err)})
					fd = -1
				}
			} else {
				// The root descriptor is owned by the walker; enter a duplicate.
				var err error
				if fd, err = unix.Dup(w.rootfd); err != nil {
					return nil, fmt.Errorf("dup %s: %w", w.root, err)
				}
			}
			if fd >= 0 {
				names, err := tree.ReadNames(fd)
				if err != nil {
					unix.Close(fd)
					w.problems = append(w.problems, problem{e.rel, fmt.Errorf("read directory: %w", err)})
				} else {
					w.stack = append(w.stack, &frame{fd: fd, rel: e.rel, names: names})
				}
			}
		}
	}
	for len(w.stack) > 0 {
		f := w.stack[len(w.stack)-1]
		if f.i == len(f.names) {
			unix.Close(f.fd)
			w.stack = w.stack[:len(w.stack)-1]
			continue
		}
		name := f.names[f.i]
		f.i++
		it := w.lstat(f.fd, name, tree.Join(f.rel, name))
		if it.node.Type == tree.TypeDir {
			w.enter = it
		}
		return it, nil
	}
	return nil, io.EOF
}
