package meta

import (
	"errors"
	"io/fs"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// Lstat describes name (relative to dirfd, not following a final symlink)
// as a node: type, mode, owner with names, size, times with nanoseconds
// (birth time when the filesystem reports it), device and inode, link count,
// device number, symlink target, every readable xattr (sorted by name) and
// the inode flags of regular files and directories. Path, Chunks and Extents
// are left to the caller.
//
// When the object was stat'ed but its target, xattrs or flags could not be
// read, the node holds what was read and err says what was not.
func Lstat(dirfd int, name string) (tree.Node, error) {
	return LstatSince(dirfd, name, nil)
}

// LstatSince is Lstat for an object that prev described at an earlier
// synchronization. When the object is still the same inode of the same
// type, size, mtime and ctime, its symlink target, xattrs and inode flags
// are prev's and are not read again: changing any of them (setxattr,
// removexattr, setting ACLs or inode flags) sets the ctime, which user
// space cannot set back. That saves five system calls per unchanged object
// (open, stat, ioctl, listxattr, close), most of a synchronization with no
// change.
func LstatSince(dirfd int, name string, prev *tree.Node) (tree.Node, error) {
	n, _, err := lstat(dirfd, name, prev, false, nil)
	return n, err
}

// Opened is a regular file LstatOpen left open for reading.
type Opened struct {
	FD int // the caller closes it
	// Stat is the file through the descriptor once its flags and xattrs
	// were read: what it was before any of its content was.
	Stat unix.Statx_t
}

// LstatOpen is LstatSince that keeps open, for reading, a regular file it
// has to open for its flags and xattrs (a new or changed file): one open
// serves the metadata and the content, and the stat through the descriptor
// serves as the "before" of the read. The file is opened with O_NOATIME
// when allowed. op is nil when nothing was left open.
func LstatOpen(dirfd int, name string, prev *tree.Node) (n tree.Node, op *Opened, err error) {
	return lstat(dirfd, name, prev, true, nil)
}

// StatxMask is what Lstat asks statx for; a stat handed to LstatOpenFrom
// must have been asked for the same.
const StatxMask = unix.STATX_BASIC_STATS | unix.STATX_BTIME

// Statx is the statx call of Lstat.
func Statx(dirfd int, name string, stx *unix.Statx_t) error {
	return unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT, StatxMask, stx)
}

// LstatOpenFrom is LstatOpen for an object already stat'ed by Statx
// (another goroutine's read-ahead): it starts from stx instead of calling
// statx again.
func LstatOpenFrom(dirfd int, name string, prev *tree.Node, stx *unix.Statx_t) (n tree.Node, op *Opened, err error) {
	return lstat(dirfd, name, prev, true, stx)
}

func lstat(dirfd int, name string, prev *tree.Node, keep bool, known *unix.Statx_t) (tree.Node, *Opened, error) {
	var stx unix.Statx_t
	if known != nil {
		stx = *known
	} else if err := Statx(dirfd, name, &stx); err != nil {
		return tree.Node{}, nil, pathErr("stat", name, err)
	}
	n := FromStatx(&stx)
	n.User = UserName(n.UID)
	n.Group = GroupName(n.GID)
	if prev != nil && tree.Unchanged(prev, &n) {
		n.Target, n.Xattrs, n.Flags = prev.Target, prev.Xattrs, prev.Flags
		return n, nil, nil
	}
	var errs []error
	if n.Type == tree.TypeSymlink {
		t, err := readlink(dirfd, name, int(stx.Size))
		if err != nil {
			errs = append(errs, pathErr("read link", name, err))
		}
		n.Target = t
	}
	if n.Type == tree.TypeFile || n.Type == tree.TypeDir {
		// One descriptor serves the flags and the xattrs (far cheaper than
		// resolving /proc/self/fd paths once per attribute), and with
		// keep the content of a regular file.
		keep = keep && n.Type == tree.TypeFile
		open := openForFlags
		if keep {
			open = OpenForRead
		}
		fd, err := open(dirfd, name)
		switch {
		case err == nil:
			op := &Opened{FD: fd}
			n.Flags, n.Xattrs, err = fromFd(fd, name, &stx, &op.Stat)
			if err != nil {
				errs = append(errs, err)
			}
			if !keep || err != nil {
				unix.Close(fd)
				op = nil
			}
			return n, op, errors.Join(errs...)
		case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
			n.Flags = statxFlags(&stx) // not ours to open: what statx says
		default:
			errs = append(errs, pathErr("open", name, err))
		}
	}
	xs, err := Xattrs(dirfd, name)
	if err != nil {
		errs = append(errs, err)
	}
	n.Xattrs = xs
	return n, nil, errors.Join(errs...)
}

// OpenForRead opens a regular file for reading its content: not following
// a final symlink, not blocking on a FIFO put in its place, without
// becoming a terminal's controlling process, with O_NOATIME when this
// process may ask for it (the owner or root), so reading does not change
// the atime just recorded.
func OpenForRead(dirfd int, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	return fd, err
}

// FromStatx fills the fields of a node that come from statx alone.
func FromStatx(stx *unix.Statx_t) tree.Node {
	n := tree.Node{
		Type:  typeOf(uint32(stx.Mode)),
		Mode:  uint32(stx.Mode) & 0o7777,
		UID:   stx.Uid,
		GID:   stx.Gid,
		Size:  int64(stx.Size),
		Mtime: ts(stx.Mtime),
		Atime: ts(stx.Atime),
		Ctime: ts(stx.Ctime),
		Dev:   unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		Ino:   stx.Ino,
		Nlink: stx.Nlink,
	}
	if stx.Mask&unix.STATX_BTIME != 0 {
		n.Btime = ts(stx.Btime)
	}
	if n.Type == tree.TypeChar || n.Type == tree.TypeBlock {
		n.Rdev = unix.Mkdev(stx.Rdev_major, stx.Rdev_minor)
	}
	if n.Type != tree.TypeFile && n.Type != tree.TypeSymlink {
		n.Size = 0 // directory sizes are the filesystem's business
	}
	return n
}

func ts(t unix.StatxTimestamp) tree.Timespec {
	return tree.Timespec{Sec: t.Sec, Nsec: int64(t.Nsec)}
}

func typeOf(mode uint32) tree.Type {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return tree.TypeFile
	case unix.S_IFDIR:
		return tree.TypeDir
	case unix.S_IFLNK:
		return tree.TypeSymlink
	case unix.S_IFCHR:
		return tree.TypeChar
	case unix.S_IFBLK:
		return tree.TypeBlock
	case unix.S_IFIFO:
		return tree.TypeFIFO
	case unix.S_IFSOCK:
		return tree.TypeSocket
	}
	return 0
}

func readlink(dirfd int, name string, hint int) ([]byte, error) {
	size := hint + 1
	if size < 128 {
		size = 128
	}
	for {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return nil, err
		}
		if n < len(buf) {
			return buf[:n], nil
		}
		size *= 2
	}
}

// Xattrs reads every extended attribute of name (not following a final
// symlink) that this process can see, sorted by name. A filesystem without
// xattr support has none.
func Xattrs(dirfd int, name string) ([]tree.Xattr, error) {
	if dirfd != unix.AT_FDCWD && name != "" && name[0] != '/' && !noXattrAt.Load() {
		missing := false // the kernel lacks the calls (or a filter refuses them)
		xs, err := readXattrs(name,
			func(b []byte) (int, error) {
				n, err := listxattrat(dirfd, name, b)
				missing = err == unix.ENOSYS || err == unix.EPERM
				return n, err
			},
			func(a string, b []byte) (int, error) { return getxattrat(dirfd, name, a, b) })
		if !missing {
			return xs, err
		}
		noXattrAt.Store(true) // xattrat.go
	}
	p := xattrPath(dirfd, name)
	return readXattrs(name,
		func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(a string, b []byte) (int, error) { return unix.Lgetxattr(p, a, b) })
}

// fromFd reads the inode flags and xattrs of an open regular file or
// directory, after checking it is still the object stx describes; now
// receives the object's stat through the descriptor.
func fromFd(fd int, name string, stx, now *unix.Statx_t) (uint32, []tree.Xattr, error) {
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_BASIC_STATS, now); err != nil {
		return 0, nil, pathErr("stat", name, err)
	}
	if now.Ino != stx.Ino || now.Mode&unix.S_IFMT != stx.Mode&unix.S_IFMT {
		return 0, nil, pathErr("read", name, errors.New("replaced while being read"))
	}
	var errs []error
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		flags = 0
		if !unsupported(err) {
			errs = append(errs, pathErr("read flags of", name, err))
		}
	}
	xs, err := readXattrs(name,
		func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(a string, b []byte) (int, error) { return unix.Fgetxattr(fd, a, b) })
	if err != nil {
		errs = append(errs, err)
	}
	return flags, xs, errors.Join(errs...)
}

func readXattrs(name string, list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]tree.Xattr, error) {
	names, err := listXattrs(list)
	if err != nil {
		if unsupported(err) {
			return nil, nil
		}
		return nil, pathErr("list xattrs of", name, err)
	}
	var out []tree.Xattr
	var errs []error
	for _, a := range names {
		v, err := getXattr(get, a)
		if err == unix.ENODATA {
			continue // removed since the listing
		}
		if err != nil {
			errs = append(errs, pathErr("read xattr "+a+" of", name, err))
			continue
		}
		out = append(out, tree.Xattr{Name: a, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, errors.Join(errs...)
}

// listBufs are the first buffers of listXattrs and getXattr. A page allocated for each call
// was most of the agent's allocation in an initial backup of small files
// (400 MB for 100,000 files; docs/performance.md, item 37).
var listBufs = sync.Pool{New: func() any { return new([4096]byte) }}

// listXattrs tries a page-sized buffer first, so most objects cost one call.
func listXattrs(list func([]byte) (int, error)) ([]string, error) {
	page := listBufs.Get().(*[4096]byte)
	defer listBufs.Put(page)
	buf := page[:]
	for {
		sz, err := list(buf)
		if err == unix.ERANGE {
			if sz, err = list(nil); err != nil {
				return nil, err
			}
			buf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		var names []string
		start := 0
		for i, c := range buf[:sz] {
			if c == 0 {
				if i > start {
					names = append(names, string(buf[start:i]))
				}
				start = i + 1
			}
		}
		return names, nil
	}
}

func getXattr(get func(string, []byte) (int, error), name string) ([]byte, error) {
	page := listBufs.Get().(*[4096]byte) // the value is copied out
	defer listBufs.Put(page)
	buf := page[:]
	for {
		sz, err := get(name, buf)
		if err == unix.ERANGE {
			if sz, err = get(name, nil); err != nil {
				return nil, err
			}
			buf = make([]byte, sz+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		return append([]byte{}, buf[:sz]...), nil
	}
}

// unsupported reports errors meaning "this filesystem or object has no such
// facility" rather than a failure.
func unsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)
}

func inodeOf(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(st.Ino)
	}
	return 0
}
