// Package treediff compares a directory tree with another tree or with a
// version's node stream, and reports every difference an administrator
// would notice after a restore: presence and type, content, size, holes and
// allocated blocks, mode, owner, mtime (atime on request), xattrs and POSIX
// ACLs, inode flags, symlink targets, device numbers and hard-link
// structure. It is the engine of `vault-agent diff CONFIG@VERSION DIR` and of
// the fidelity tests.
//
// Both sides are walked in tree order (internal/tree.Compare) and merged, so
// memory holds one directory's names per level plus the hard-linked inodes;
// directories are walked openat style, so depth is unlimited.
//
// Not compared, because a restore cannot reproduce them: ctime, birth time,
// inode and device numbers, link counts, and the atime of symlinks (reading
// a symlink's target sets it). Sockets are recorded but never restored, so a
// socket missing from the directory is not a difference unless
// Options.Sockets.
package treediff

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"vaultnode/agentkit/meta"
	"vaultnode/internal/tree"
)

// Options tune a comparison.
type Options struct {
	// Atime also compares the atime of files and directories. Off by
	// default: reading a file may set it.
	Atime bool
	// ByName compares owners by user and group name where both sides
	// have one, instead of by number.
	ByName bool
	// IgnoreXattrs lists xattr name prefixes not to compare (for example
	// "security.selinux" when restoring onto a host that labels files).
	IgnoreXattrs []string
	// IgnoreBlocks skips the allocated-blocks check (restoring onto a
	// filesystem with another allocation unit or compression).
	IgnoreBlocks bool
	// SkipRoot does not compare the metadata of the root directory itself.
	SkipRoot bool
	// CrossMounts enters directories on other filesystems; by default they
	// are compared as directories but not entered.
	CrossMounts bool
	// Sockets reports sockets missing from the directory.
	Sockets bool
	// Limit stops after this many differences (0: no limit).
	Limit int
}

// Difference is one way the directory differs from what it should be.
type Difference struct {
	Path  []byte // relative, '/'-separated; "." is the root
	Field string // missing, extra, type, error, status, size, content, holes, blocks, mode, owner, mtime, atime, xattr NAME, acl access, acl default, flags, target, rdev, hardlink
	Want  string // the expected value, as printed
	Got   string // the value found
}

// String prints the difference on one line: path, field, want and got.
// Paths that are not plain printable UTF-8 are quoted Go-style.
func (d Difference) String() string {
	s := quote(d.Path) + ": " + d.Field
	if d.Want != "" || d.Got != "" {
		s += ": want " + d.Want + ", got " + d.Got
	}
	return s
}

func quote(p []byte) string {
	plain := utf8.Valid(p) && len(p) > 0 && p[0] != ' ' && p[len(p)-1] != ' ' && p[0] != '"'
	for _, r := range string(p) {
		if !unicode.IsPrint(r) || r == '\\' {
			plain = false
			break
		}
	}
	if plain {
		return string(p)
	}
	return strconv.Quote(string(p))
}

// Compare reports how the tree at got differs from the tree at want.
func Compare(want, got string, opts Options) ([]Difference, error) {
	src, err := newDirSource(want, opts)
	if err != nil {
		return nil, fmt.Errorf("compare %s with %s: %w", want, got, err)
	}
	defer src.close()
	diffs, err := compare(src.next, src.open, got, opts, src.problems)
	if err != nil {
		return diffs, fmt.Errorf("compare %s with %s: %w", want, got, err)
	}
	return diffs, nil
}

// CompareVersion reports how the tree at dir differs from a version: next
// yields the version's nodes in tree order and io.EOF after the last; open
// returns the content of a regular file node as its chunks hold it (the data
// extents concatenated for a sparse node). Nodes with LinkTo are checked as
// hard links, not read. TypeDeleted nodes are skipped.
func CompareVersion(next func() (*tree.Node, error), open func(*tree.Node) (io.ReadCloser, error), dir string, opts Options) ([]Difference, error) {
	diffs, err := compare(next, open, dir, opts, nil)
	if err != nil {
		return diffs, fmt.Errorf("compare version with %s: %w", dir, err)
	}
	return diffs, nil
}

type inode [2]uint64 // dev, ino

type comparer struct {
	opts    Options
	open    func(*tree.Node) (io.ReadCloser, error)
	diffs   []Difference
	leaders map[string]inode // want path of a link group's first node -> its inode in got
	gotSeen map[inode][]byte // got inode with links -> first got path
	buf     [2][]byte
}

var errLimit = errors.New("difference limit reached")

func (c *comparer) add(p []byte, field, want, got string) {
	c.diffs = append(c.diffs, Difference{Path: append([]byte(nil), p...), Field: field, Want: want, Got: got})
}

func (c *comparer) full() bool { return c.opts.Limit > 0 && len(c.diffs) >= c.opts.Limit }

func under(p, dir []byte) bool {
	if string(dir) == "." {
		return string(p) != "."
	}
	return len(p) > len(dir) && p[len(dir)] == '/' && bytes.HasPrefix(p, dir)
}

func compare(next func() (*tree.Node, error), open func(*tree.Node) (io.ReadCloser, error), dir string, opts Options, wantProblems func() []Difference) ([]Difference, error) {
	c := &comparer{opts: opts, open: open, leaders: map[string]inode{}, gotSeen: map[inode][]byte{},
		buf: [2][]byte{make([]byte, 1<<20), make([]byte, 1<<20)}}
	g, err := newWalker(dir, opts.CrossMounts)
	if err != nil {
		return nil, err
	}
	defer g.close()
	nextWant := func() (*tree.Node, error) {
		for {
			n, err := next()
			if err == io.EOF {
				return nil, nil
			}
			if err != nil {
				return nil, fmt.Errorf("read version: %w", err)
			}
			if n.Type != tree.TypeDeleted {
				return n, nil
			}
		}
	}
	// skipUnder drops the want nodes inside dir and counts them.
	skipUnder := func(dir []byte) (*tree.Node, int, error) {
		dir = append([]byte(nil), dir...)
		for k := 0; ; k++ {
			n, err := nextWant()
			if err != nil || n == nil || !under(n.Path, dir) {
				return n, k, err
			}
		}
	}
	w, err := nextWant()
	if err != nil {
		return nil, err
	}
	gi, err := g.next()
	if err == io.EOF {
		gi, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	for (w != nil || gi != nil) && !c.full() {
		for _, p := range g.problems {
			c.add(p.rel, "error", "readable", p.err.Error())
		}
		g.problems = g.problems[:0]
		if wantProblems != nil {
			c.diffs = append(c.diffs, wantProblems()...)
		}
		order := 0
		switch {
		case w == nil:
			order = 1
		case gi == nil:
			order = -1
		default:
			order = tree.Compare(w.Path, gi.rel)
		}
		advanceGot := false
		switch {
		case order < 0:
			path := w.Path
			desc := w.Type.String()
			wasDir := w.Type == tree.TypeDir
			report := w.Type != tree.TypeSocket || opts.Sockets
			if wasDir {
				var k int
				if w, k, err = skipUnder(path); err != nil {
					return c.diffs, err
				}
				if k > 0 {
					desc = fmt.Sprintf("dir with %d entries", k)
				}
			} else if w, err = nextWant(); err != nil {
				return c.diffs, err
			}
			if report {
				c.add(path, "missing", desc, "nothing")
			}
		case order > 0 && string(gi.rel) == ".":
			advanceGot = true // a listing without a root node: nothing to compare it with
		case order > 0:
			desc := gi.node.Type.String()
			if gi.node.Type == tree.TypeDir {
				desc += " (not entered)"
				g.skip()
			}
			c.add(gi.rel, "extra", "nothing", desc)
			advanceGot = true
		default:
			if err := c.node(w, gi); err != nil {
				return c.diffs, err
			}
			if gi.node.Type == tree.TypeDir && (w.Type != tree.TypeDir || w.MountPoint) {
				g.skip()
			}
			advanceGot = true
			if w.Type == tree.TypeDir && gi.node.Type != tree.TypeDir {
				path := w.Path
				var k int
				if w, k, err = skipUnder(path); err != nil {
					return c.diffs, err
				}
				if k > 0 {
					c.add(path, "missing", fmt.Sprintf("%d entries inside", k), "not a directory")
				}
			} else if w, err = nextWant(); err != nil {
				return c.diffs, err
			}
		}
		if advanceGot {
			if gi, err = g.next(); err == io.EOF {
				gi, err = nil, nil
			}
			if err != nil {
				return c.diffs, err
			}
		}
	}
	for _, p := range g.problems {
		c.add(p.rel, "error", "readable", p.err.Error())
	}
	if wantProblems != nil {
		c.diffs = append(c.diffs, wantProblems()...)
	}
	return c.diffs, nil
}

// node compares one object present on both sides.
func (c *comparer) node(w *tree.Node, g *item) error {
	p := w.Path
	gn := &g.node
	if g.err != nil {
		c.add(p, "error", "readable", g.err.Error())
		if gn.Type == 0 {
			return nil
		}
	}
	if w.Type != gn.Type {
		c.add(p, "type", w.Type.String(), gn.Type.String())
		return nil
	}
	switch w.Status {
	case tree.StatusUnreadable:
		c.add(p, "status", "content in the version", "unreadable at backup: "+w.Err)
	case tree.StatusInconsistent:
		c.add(p, "status", "content in the version", "inconsistent at backup: "+w.Err)
	}
	if w.Type == tree.TypeFile && w.LinkTo != nil {
		return c.file(w, g) // the same inode as the first link: only the link is checked
	}
	if !(string(p) == "." && c.opts.SkipRoot) {
		c.meta(w, gn)
	}
	switch w.Type {
	case tree.TypeSymlink:
		if !bytes.Equal(w.Target, gn.Target) {
			c.add(p, "target", quote(w.Target), quote(gn.Target))
		}
	case tree.TypeChar, tree.TypeBlock:
		if w.Rdev != gn.Rdev {
			c.add(p, "rdev", devString(w.Rdev), devString(gn.Rdev))
		}
	case tree.TypeFile:
		return c.file(w, g)
	}
	return nil
}

func (c *comparer) meta(w, g *tree.Node) {
	p := w.Path
	if w.Type != tree.TypeSymlink && w.Mode != g.Mode {
		c.add(p, "mode", fmt.Sprintf("%04o", w.Mode), fmt.Sprintf("%04o", g.Mode))
	}
	if c.opts.ByName && w.User != "" && g.User != "" && w.Group != "" && g.Group != "" {
		if w.User != g.User || w.Group != g.Group {
			c.add(p, "owner", owner(w), owner(g))
		}
	} else if w.UID != g.UID || w.GID != g.GID {
		c.add(p, "owner", owner(w), owner(g))
	}
	if w.Mtime != g.Mtime {
		c.add(p, "mtime", timeString(w.Mtime), timeString(g.Mtime))
	}
	if c.opts.Atime && (w.Type == tree.TypeFile || w.Type == tree.TypeDir) && w.Atime != g.Atime {
		c.add(p, "atime", timeString(w.Atime), timeString(g.Atime))
	}
	c.xattrs(p, w.Xattrs, g.Xattrs)
	if w.Type == tree.TypeFile || w.Type == tree.TypeDir {
		if a, b := w.Flags&meta.SettableFlags, g.Flags&meta.SettableFlags; a != b {
			c.add(p, "flags", meta.FlagString(a), meta.FlagString(b))
		}
	}
}

func (c *comparer) ignored(name string) bool {
	for _, pre := range c.opts.IgnoreXattrs {
		if strings.HasPrefix(name, pre) {
			return true
		}
	}
	return false
}

func (c *comparer) xattrs(p []byte, want, got []tree.Xattr) {
	gm := make(map[string][]byte, len(got))
	for _, x := range got {
		gm[x.Name] = x.Value
	}
	seen := make(map[string]bool, len(want))
	for _, x := range want {
		seen[x.Name] = true
		if c.ignored(x.Name) {
			continue
		}
		v, ok := gm[x.Name]
		switch {
		case !ok:
			c.add(p, fieldOf(x.Name), xattrString(x.Name, x.Value), "none")
		case !bytes.Equal(v, x.Value):
			c.add(p, fieldOf(x.Name), xattrString(x.Name, x.Value), xattrString(x.Name, v))
		}
	}
	for _, x := range got {
		if !seen[x.Name] && !c.ignored(x.Name) {
			c.add(p, fieldOf(x.Name), "none", xattrString(x.Name, x.Value))
		}
	}
}

func fieldOf(name string) string {
	switch name {
	case meta.XattrACLAccess:
		return "acl access"
	case meta.XattrACLDefault:
		return "acl default"
	}
	return "xattr " + name
}

func xattrString(name string, v []byte) string {
	if name == meta.XattrACLAccess || name == meta.XattrACLDefault {
		return meta.ACLText(v)
	}
	printable := utf8.Valid(v)
	for _, r := range string(v) {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' {
			printable = false
			break
		}
	}
	if printable {
		if len(v) > 80 {
			return strconv.Quote(string(v[:80])) + fmt.Sprintf("...(%d bytes)", len(v))
		}
		return strconv.Quote(string(v))
	}
	if len(v) > 32 {
		return fmt.Sprintf("0x%x...(%d bytes)", v[:32], len(v))
	}
	return fmt.Sprintf("0x%x", v)
}

func owner(n *tree.Node) string {
	s := fmt.Sprintf("%d:%d", n.UID, n.GID)
	if n.User != "" || n.Group != "" {
		s += fmt.Sprintf(" (%s:%s)", n.User, n.Group)
	}
	return s
}

func timeString(t tree.Timespec) string {
	return time.Unix(t.Sec, t.Nsec).UTC().Format("2006-01-02T15:04:05.000000000Z")
}

func devString(d uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d))
}

func extentString(ext []tree.Extent, sparse bool) string {
	if !sparse {
		return "no holes"
	}
	if len(ext) == 0 {
		return "all hole"
	}
	var b strings.Builder
	for i, e := range ext {
		if i == 8 {
			fmt.Fprintf(&b, " ...(%d extents)", len(ext))
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d+%d", e.Off, e.Len)
	}
	return "data " + b.String()
}

// file compares hard-link structure, size, holes, allocation and content.
func (c *comparer) file(w *tree.Node, g *item) error {
	p := w.Path
	key := inode{g.node.Dev, g.node.Ino}
	first, linked := c.gotSeen[key]
	if g.node.Nlink > 1 && !linked {
		c.gotSeen[key] = append([]byte(nil), p...)
	}
	if w.LinkTo != nil {
		if lk, ok := c.leaders[string(w.LinkTo)]; !ok || lk != key {
			got := "separate file"
			if linked {
				got = "linked to " + quote(first)
			}
			c.add(p, "hardlink", "linked to "+quote(w.LinkTo), got)
		}
		return nil // content is compared at the first link
	}
	if linked {
		c.add(p, "hardlink", "separate file", "linked to "+quote(first))
	}
	if w.Nlink > 1 {
		c.leaders[string(p)] = key
	}
	if w.Size != g.node.Size {
		c.add(p, "size", strconv.FormatInt(w.Size, 10), strconv.FormatInt(g.node.Size, 10))
		return nil
	}
	if w.Status != tree.StatusOK {
		return nil
	}
	f, err := openFile(g.dirfd, g.name)
	if err != nil {
		c.add(p, "error", "readable", err.Error())
		return nil
	}
	defer f.Close()
	size := w.Size
	gext, gsparse, err := meta.DataExtents(f, size)
	if err != nil {
		c.add(p, "error", "readable", err.Error())
		return nil
	}
	wext := w.Extents
	if !w.Sparse {
		wext = nil
		if size > 0 {
			wext = []tree.Extent{{Off: 0, Len: size}}
		}
	}
	if w.Sparse != gsparse || !equalExtents(wext, gext) {
		c.add(p, "holes", extentString(wext, w.Sparse), extentString(gext, gsparse))
	}
	if !c.opts.IgnoreBlocks {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err == nil {
			bs := int64(st.Blksize)
			if bs <= 0 {
				bs = 4096
			}
			var allowed int64
			for _, e := range gext {
				allowed += (e.Len + bs - 1) / bs * bs
			}
			allowed += bs * (4 + int64(len(gext))/256) // extent tree and xattr blocks
			if st.Blocks*512 > allowed {
				c.add(p, "blocks", fmt.Sprintf("at most %d bytes allocated for %d bytes of data", allowed, sum(gext)),
					fmt.Sprintf("%d bytes allocated", st.Blocks*512))
			}
		}
	}
	r, err := c.open(w)
	if err != nil {
		c.add(p, "error", "content readable from the version", err.Error())
		return nil
	}
	defer r.Close()
	off, err := c.content(r, wext, f, gext, size)
	switch {
	case err != nil:
		c.add(p, "error", "readable", err.Error())
	case off >= 0:
		c.add(p, "content", "same content", fmt.Sprintf("differs from byte %d", off))
	}
	return nil
}

func sum(ext []tree.Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Len
	}
	return n
}

func equalExtents(a, b []tree.Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// content compares the want stream (the data of wext in order; zeros
// elsewhere) with f, reading only ranges where either side has data. It
// returns the first differing offset, or -1.
func (c *comparer) content(r io.Reader, wext []tree.Extent, f *os.File, gext []tree.Extent, size int64) (int64, error) {
	pos := int64(0)
	for _, e := range wext {
		if off, err := c.zeros(f, gext, pos, e.Off); off >= 0 || err != nil {
			return off, err
		}
		for done := int64(0); done < e.Len; {
			n := min(int64(len(c.buf[0])), e.Len-done)
			a, b := c.buf[0][:n], c.buf[1][:n]
			if _, err := io.ReadFull(r, a); err != nil {
				return -1, fmt.Errorf("read version content at %d: %w", e.Off+done, err)
			}
			if _, err := f.ReadAt(b, e.Off+done); err != nil {
				if err == io.EOF {
					return e.Off + done, nil // shrank while compared
				}
				return -1, fmt.Errorf("read at %d: %w", e.Off+done, err)
			}
			if i := firstDiff(a, b); i >= 0 {
				return e.Off + done + int64(i), nil
			}
			done += n
		}
		pos = e.Off + e.Len
	}
	if off, err := c.zeros(f, gext, pos, size); off >= 0 || err != nil {
		return off, err
	}
	if n, _ := r.Read(c.buf[0][:1]); n > 0 {
		return size, nil // the version holds more than the file
	}
	return -1, nil
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// zeros checks that f reads as zeros in [from, to), reading only f's data
// extents. It returns the first non-zero offset, or -1.
func (c *comparer) zeros(f *os.File, gext []tree.Extent, from, to int64) (int64, error) {
	for _, e := range gext {
		lo, hi := max(from, e.Off), min(to, e.Off+e.Len)
		for lo < hi {
			n := min(int64(len(c.buf[1])), hi-lo)
			m, err := f.ReadAt(c.buf[1][:n], lo)
			if err != nil && err != io.EOF {
				return -1, fmt.Errorf("read at %d: %w", lo, err)
			}
			b := c.buf[1][:m]
			for i, x := range b {
				if x != 0 {
					return lo + int64(i), nil
				}
			}
			if int64(m) < n {
				break // shrank while compared: the rest reads as nothing
			}
			lo += n
		}
	}
	return -1, nil
}
