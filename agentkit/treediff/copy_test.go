package treediff

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/testtree"
	"vaultnode/internal/tree"
)

// copyTree copies src into the existing directory dst the way a restore
// does, with agentkit/meta only: Lstat and DataExtents to read, Create,
// CreateFile, WriteSparse, Link and Apply to write, directories applied
// after their contents, inode flags of hard-linked files after the last link.
// Sockets are skipped (meta.ErrSocket).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	sfd, err := openDir(unix.AT_FDCWD, src)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sfd)
	dfd, err := openDir(unix.AT_FDCWD, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	c := &copier{t: t, droot: dfd, links: map[inode]string{}}
	root, err := meta.Lstat(sfd, ".")
	if err != nil {
		t.Fatal(err)
	}
	c.dir(sfd, dfd, ".")
	for _, f := range c.flags {
		if err := meta.SetFlags(dfd, f.rel, f.flags); err != nil {
			t.Fatal(err)
		}
	}
	if err := meta.Apply(dfd, ".", &root, meta.Options{}); err != nil {
		t.Fatal(err)
	}
}

type copier struct {
	t     *testing.T
	droot int
	links map[inode]string // source inode -> destination path of its first link
	flags []struct {
		rel   string
		flags uint32
	}
}

func (c *copier) dir(sfd, dfd int, rel string) {
	t := c.t
	names, err := tree.ReadNames(sfd)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		r := string(tree.Join([]byte(rel), name))
		n, err := meta.Lstat(sfd, name)
		if err != nil {
			t.Fatalf("Lstat %q: %v", r, err)
		}
		opts := meta.Options{}
		switch n.Type {
		case tree.TypeDir:
			if err := meta.Create(dfd, name, &n, opts); err != nil {
				t.Fatal(err)
			}
			s, err := openDir(sfd, name)
			if err != nil {
				t.Fatal(err)
			}
			d, err := openDir(dfd, name)
			if err != nil {
				t.Fatal(err)
			}
			c.dir(s, d, r)
			unix.Close(s)
			unix.Close(d)
		case tree.TypeFile:
			key := inode{n.Dev, n.Ino}
			if first, ok := c.links[key]; ok {
				if err := meta.Link(c.droot, first, dfd, name, opts); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if n.Nlink > 1 {
				c.links[key] = r
				opts.SkipFlags = true
				c.flags = append(c.flags, struct {
					rel   string
					flags uint32
				}{r, n.Flags})
			}
			in, err := openFile(sfd, name)
			if err != nil {
				t.Fatal(err)
			}
			ext, sparse, err := meta.DataExtents(in, n.Size)
			if err != nil {
				t.Fatal(err)
			}
			n.Extents, n.Sparse = ext, sparse
			out, err := meta.CreateFile(dfd, name, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := meta.WriteSparse(out, &n, meta.ExtentReader(in, ext)); err != nil {
				t.Fatal(err)
			}
			in.Close()
			if err := out.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			err := meta.Create(dfd, name, &n, opts)
			if errors.Is(err, meta.ErrSocket) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := meta.Apply(dfd, name, &n, opts); err != nil {
			t.Fatalf("Apply %q: %v", r, err)
		}
	}
}

// newTree generates a test tree and an empty directory for its copy, both
// unprotected at cleanup.
func newTree(t *testing.T, opts testtree.Options) (src, dst string, m testtree.Manifest) {
	t.Helper()
	if os.Geteuid() != 0 && !opts.Unprivileged {
		t.Fatal("this test needs root to generate every case of the test tree; CI runs as root")
	}
	dir := t.TempDir()
	src, dst = filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	t.Cleanup(func() {
		for _, d := range []string{src, dst} {
			if _, err := os.Lstat(d); err == nil {
				if err := testtree.Unprotect(d); err != nil {
					t.Errorf("unprotect: %v", err)
				}
			}
		}
	})
	m, err := testtree.Generate(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	return src, dst, m
}
