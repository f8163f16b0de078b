package meta

import (
	"errors"
	"io/fs"
	"sort"
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
	var stx unix.Statx_t
	err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_STATX_SYNC_AS_STAT,
		unix.STATX_BASIC_STATS|unix.STATX_BTIME, &stx)
	if err != nil {
		return tree.Node{}, pathErr("stat", name, err)
	}
	n := FromStatx(&stx)
	n.User = UserName(n.UID)
	n.Group = GroupName(n.GID)
	var errs []error
	if n.Type == tree.TypeSymlink {
		t, err := readlink(dirfd, name, int(stx.Size))
		if err != nil {
			errs = append(errs, pathErr("read link", name, err))
		}
		n.Target = t
	}
	xs, err := Xattrs(dirfd, name)
	if err != nil {
		errs = append(errs, err)
	}
	n.Xattrs = xs
	if n.Type == tree.TypeFile || n.Type == tree.TypeDir {
		f, err := getFlags(dirfd, name, &stx)
		if err != nil {
			errs = append(errs, err)
		}
		n.Flags = f
	}
	return n, errors.Join(errs...)
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
	p := xattrPath(dirfd, name)
	names, err := listXattrs(p)
	if err != nil {
		if unsupported(err) {
			return nil, nil
		}
		return nil, pathErr("list xattrs of", name, err)
	}
	var out []tree.Xattr
	var errs []error
	for _, a := range names {
		v, err := getXattr(p, a)
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

func listXattrs(p string) ([]string, error) {
	for {
		sz, err := unix.Llistxattr(p, nil)
		if err != nil {
			return nil, err
		}
		if sz == 0 {
			return nil, nil
		}
		buf := make([]byte, sz)
		sz, err = unix.Llistxattr(p, buf)
		if err == unix.ERANGE {
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

func getXattr(p, name string) ([]byte, error) {
	for {
		sz, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, sz)
		if sz == 0 {
			return buf, nil
		}
		sz, err = unix.Lgetxattr(p, name, buf)
		if err == unix.ERANGE {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:sz], nil
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
