package meta

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// Create makes a directory, symlink (with the exact target bytes), character
// or block device, or FIFO named name in dirfd, as n describes. It does not
// set metadata; call Apply afterwards (for a directory, after its contents).
// A directory that already exists is reused. Sockets give ErrSocket, regular
// files ErrType (use CreateFile).
func Create(dirfd int, name string, n *tree.Node, opts Options) error {
	mk := func() error {
		switch n.Type {
		case tree.TypeDir:
			return unix.Mkdirat(dirfd, name, 0o700)
		case tree.TypeSymlink:
			return unix.Symlinkat(string(n.Target), dirfd, name)
		case tree.TypeChar:
			return unix.Mknodat(dirfd, name, unix.S_IFCHR|0o600, int(n.Rdev))
		case tree.TypeBlock:
			return unix.Mknodat(dirfd, name, unix.S_IFBLK|0o600, int(n.Rdev))
		case tree.TypeFIFO:
			return unix.Mknodat(dirfd, name, unix.S_IFIFO|0o600, 0)
		}
		return nil
	}
	switch n.Type {
	case tree.TypeSocket:
		return pathErr("create", name, ErrSocket)
	case tree.TypeDir, tree.TypeSymlink, tree.TypeChar, tree.TypeBlock, tree.TypeFIFO:
	default:
		return pathErr("create "+n.Type.String(), name, ErrType)
	}
	err := mk()
	if errors.Is(err, unix.EEXIST) {
		var stx unix.Statx_t
		if serr := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); serr == nil {
			isDir := stx.Mode&unix.S_IFMT == unix.S_IFDIR
			switch {
			case isDir && n.Type == tree.TypeDir:
				return nil
			case opts.Replace && !isDir:
				if err = remove(dirfd, name); err == nil {
					err = mk()
				}
			}
		}
	}
	if err != nil {
		return pathErr("create "+n.Type.String(), name, err)
	}
	return nil
}

// CreateFile creates a regular file named name in dirfd for writing, mode
// 0600 until Apply. It never follows a symlink at name; an existing name is
// an error unless opts.Replace.
func CreateFile(dirfd int, name string, opts Options) (*os.File, error) {
	fd, err := CreateFD(dirfd, name, opts)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// CreateFD is CreateFile returning the bare descriptor, for writers that
// create many files and want no *os.File bookkeeping per file.
func CreateFD(dirfd int, name string, opts Options) (int, error) {
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat(dirfd, name, flags, 0o600)
	if errors.Is(err, unix.EEXIST) && opts.Replace {
		if err = remove(dirfd, name); err == nil {
			fd, err = unix.Openat(dirfd, name, flags, 0o600)
		}
	}
	if err != nil {
		return -1, pathErr("create file", name, err)
	}
	return fd, nil
}

// Link makes name in dirfd a hard link to oldname in olddirfd (restoring a
// node with LinkTo). An immutable or append-only file cannot be linked: set
// such flags after the last link.
func Link(olddirfd int, oldname string, dirfd int, name string, opts Options) error {
	err := unix.Linkat(olddirfd, oldname, dirfd, name, 0)
	if errors.Is(err, unix.EEXIST) && opts.Replace {
		if err = remove(dirfd, name); err == nil {
			err = unix.Linkat(olddirfd, oldname, dirfd, name, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("link %q to %q: %w", name, oldname, err)
	}
	return nil
}

// remove deletes a non-directory, clearing immutable and append-only first.
func remove(dirfd int, name string) error {
	if err := Unprotect(dirfd, name); err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, 0)
}

// Apply sets the metadata of the object name in dirfd from n, in the order
// that keeps each step from undoing another: owner (changing the owner
// clears setuid, setgid and file capabilities), mode, xattrs (the whole set:
// attributes not in n are removed; POSIX ACLs, SELinux labels and file
// capabilities are xattrs), times (atime and mtime with nanoseconds; ctime
// and birth time cannot be set), then inode flags (immutable, append-only...)
// unless opts.SkipFlags. Call it after the content is written and, for a
// directory, after everything inside it is restored. Symlinks themselves are
// changed, never their targets. Every step is tried; the error joins the
// steps that failed.
func Apply(dirfd int, name string, n *tree.Node, opts Options) error {
	var errs []error
	if !opts.SkipOwner {
		uid, gid := n.UID, n.GID
		if opts.ByName {
			if id, ok := LookupUser(n.User); ok {
				uid = id
			}
			if id, ok := LookupGroup(n.Group); ok {
				gid = id
			}
		}
		if err := unix.Fchownat(dirfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			errs = append(errs, fmt.Errorf("chown %q to %d:%d: %w", name, uid, gid, err))
		}
	}
	chmod := func() {
		if n.Type == tree.TypeSymlink {
			return // a symlink's mode is always 0777 on Linux
		}
		if err := unix.Fchmodat(dirfd, name, n.Mode&0o7777, 0); err != nil {
			errs = append(errs, fmt.Errorf("chmod %q to %04o: %w", name, n.Mode&0o7777, err))
		}
	}
	chmod()
	if err := SetXattrs(dirfd, name, n.Xattrs); err != nil {
		errs = append(errs, err)
	}
	for _, x := range n.Xattrs {
		if x.Name == XattrACLAccess {
			chmod() // setting an access ACL may have dropped setgid
			break
		}
	}
	t := []unix.Timespec{
		{Sec: n.Atime.Sec, Nsec: n.Atime.Nsec},
		{Sec: n.Mtime.Sec, Nsec: n.Mtime.Nsec},
	}
	if err := unix.UtimesNanoAt(dirfd, name, t, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		errs = append(errs, fmt.Errorf("set times of %q: %w", name, err))
	}
	if !opts.SkipFlags && (n.Type == tree.TypeFile || n.Type == tree.TypeDir) {
		if err := SetFlags(dirfd, name, n.Flags); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SetXattrs makes the extended attributes of name (not following a final
// symlink) exactly want: attributes not in want are removed, the others set
// when their value differs.
func SetXattrs(dirfd int, name string, want []tree.Xattr) error {
	p := xattrPath(dirfd, name)
	have, err := listXattrs(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if err != nil && !(unsupported(err) && len(want) == 0) {
		if unsupported(err) {
			return pathErr("set xattrs on", name, err)
		}
		return pathErr("list xattrs of", name, err)
	}
	wanted := make(map[string][]byte, len(want))
	for _, x := range want {
		wanted[x.Name] = x.Value
	}
	var errs []error
	for _, a := range have {
		if _, ok := wanted[a]; ok {
			continue
		}
		if err := unix.Lremovexattr(p, a); err != nil && err != unix.ENODATA {
			errs = append(errs, pathErr("remove xattr "+a+" from", name, err))
		}
	}
	for _, x := range want {
		if cur, err := getXattr(func(a string, b []byte) (int, error) { return unix.Lgetxattr(p, a, b) }, x.Name); err == nil && bytes.Equal(cur, x.Value) {
			continue
		}
		if err := unix.Lsetxattr(p, x.Name, x.Value, 0); err != nil {
			errs = append(errs, pathErr("set xattr "+x.Name+" on", name, err))
		}
	}
	return errors.Join(errs...)
}

// OpenFile opens a regular file for reading as a backup should: never
// following a symlink, never blocking on a FIFO swapped in, never becoming a
// controlling terminal, and without changing its atime where the kernel
// allows it (O_NOATIME needs ownership or CAP_FOWNER; without them the file
// is opened normally).
func OpenFile(dirfd int, name string) (*os.File, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// OpenDir opens a directory relative to dirfd for walking (openat style),
// never following a symlink and without changing its atime where allowed.
func OpenDir(dirfd int, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, flags, 0)
	}
	if err != nil {
		return -1, pathErr("open directory", name, err)
	}
	return fd, nil
}
