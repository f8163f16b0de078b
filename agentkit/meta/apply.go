package meta

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// Create makes a directory, symlink (with the exact target bytes), character
// or block device, or FIFO named name in dirfd, as n describes. It does not
// set metadata; call Apply afterwards (for a directory, after its contents).
// A directory that already exists is reused. Sockets give ErrSocket, regular
// files ErrType (use CreateFile).
func Create(dirfd int, name string, n *tree.Node, opts Options) error {
	mk := func(name string) error {
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
	err := mk(name)
	if errors.Is(err, unix.EEXIST) {
		var stx unix.Statx_t
		if serr := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); serr == nil {
			isDir := stx.Mode&unix.S_IFMT == unix.S_IFDIR
			switch {
			case isDir && n.Type == tree.TypeDir:
				return nil
			case opts.Replace && sameObject(dirfd, name, n, &stx):
				return nil // already what n makes: kept (Apply sets the rest)
			case opts.Replace && !isDir && n.Type != tree.TypeDir:
				err = replace(dirfd, name, mk)
			case opts.Replace && !isDir:
				err = replaceByDir(dirfd, name)
			case opts.Replace:
				var tmp string
				if tmp, err = MakeTemp(dirfd, name, mk); err == nil {
					if err = ExchangeDir(dirfd, tmp, name); err != nil {
						unix.Unlinkat(dirfd, tmp, 0)
					}
				}
			}
		}
	}
	if err != nil {
		return pathErr("create "+n.Type.String(), name, err)
	}
	return nil
}

// sameObject reports whether name in dirfd, of type stx.Mode, is the
// object Create would make for n: a symlink to the same target bytes, a
// FIFO, a device node of the same number. Replacing it would change
// nothing but its inode.
func sameObject(dirfd int, name string, n *tree.Node, stx *unix.Statx_t) bool {
	switch typ := stx.Mode & unix.S_IFMT; n.Type {
	case tree.TypeSymlink:
		if typ != unix.S_IFLNK {
			return false
		}
		target, err := readlink(dirfd, name, len(n.Target))
		return err == nil && bytes.Equal(target, n.Target)
	case tree.TypeFIFO:
		return typ == unix.S_IFIFO
	case tree.TypeChar, tree.TypeBlock:
		want := uint32(unix.S_IFCHR)
		if n.Type == tree.TypeBlock {
			want = unix.S_IFBLK
		}
		var st unix.Stat_t
		return uint32(typ) == want && unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil &&
			st.Mode&unix.S_IFMT == want && st.Rdev == n.Rdev
	}
	return false
}

// CreateFile creates a regular file named name in dirfd for writing (and
// reading back what was written), mode 0600 until Apply. It never follows a symlink at name; an existing name is
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
	return CreateFDMode(dirfd, name, 0o600, opts)
}

// CreateFDMode is CreateFD creating the file with permission bits perm
// (less the umask, or as a default ACL of dirfd says) instead of 0600.
func CreateFDMode(dirfd int, name string, perm uint32, opts Options) (int, error) {
	const flags = unix.O_RDWR | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat(dirfd, name, flags, perm&0o777)
	if errors.Is(err, unix.EEXIST) && opts.Replace {
		if err = remove(dirfd, name); err == nil {
			fd, err = unix.Openat(dirfd, name, flags, perm&0o777)
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
	mk := func(name string) error { return unix.Linkat(olddirfd, oldname, dirfd, name, 0) }
	err := mk(name)
	if errors.Is(err, unix.EEXIST) && opts.Replace {
		var src unix.Stat_t
		if err = unix.Fstatat(olddirfd, oldname, &src, unix.AT_SYMLINK_NOFOLLOW); err == nil {
			err = replaceLink(dirfd, name, &src, mk)
		}
	}
	if err != nil {
		return fmt.Errorf("link %q to %q: %w", name, oldname, err)
	}
	return nil
}

// LinkFD makes name in dirfd a hard link to the object open as src (any
// descriptor, O_PATH included): linkat(AT_EMPTY_PATH) where allowed (it
// needs CAP_DAC_READ_SEARCH), else through /proc/self/fd. The link is to
// exactly that inode, whatever its old name points to meanwhile.
func LinkFD(src int, dirfd int, name string, opts Options) error {
	mk := func(name string) error {
		err := unix.Linkat(src, "", dirfd, name, unix.AT_EMPTY_PATH)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
			err = unix.Linkat(unix.AT_FDCWD, fdPath(src), dirfd, name, unix.AT_SYMLINK_FOLLOW)
		}
		return err
	}
	err := mk(name)
	if errors.Is(err, unix.EEXIST) && opts.Replace {
		var st unix.Stat_t
		if err = unix.Fstat(src, &st); err == nil {
			err = replaceLink(dirfd, name, &st, mk)
		}
	}
	if err != nil {
		return pathErr("link", name, err)
	}
	return nil
}

// TempName is the temporary name beside name (in its directory when name
// is a relative path), for an object made complete under it and then
// renamed onto name: ".NAME.vaultnode-tmp", the same on every run.
func TempName(name string) string {
	dir, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i+1], name[i+1:]
	}
	if len(base) > 200 {
		base = base[:200]
	}
	return dir + "." + base + ".vaultnode-tmp"
}

// MakeTemp makes an object with mk at name's temporary name (TempName)
// and returns that name. What is already there, left by a process killed
// between making such an object and renaming it (a file, a symlink, an
// empty directory), is removed and the object made again, so a restore
// run again clears what a killed one left at the names it replaces.
func MakeTemp(dirfd int, name string, mk func(tmp string) error) (string, error) {
	tmp := TempName(name)
	err := mk(tmp)
	if errors.Is(err, unix.EEXIST) {
		_ = Unprotect(dirfd, tmp)
		if err = unix.Unlinkat(dirfd, tmp, 0); err == unix.EISDIR {
			err = unix.Unlinkat(dirfd, tmp, unix.AT_REMOVEDIR)
		}
		if err == nil {
			err = mk(tmp)
		}
	}
	return tmp, err
}

// replace puts a new object at name, which holds a non-directory, in one
// step: mk makes it under a temporary name, which is renamed onto name
// (immutable and append-only flags cleared first). Removing the old one
// and then making the new one left neither at the name for a moment, and
// nothing there at all when the process died in it.
func replace(dirfd int, name string, mk func(string) error) error {
	tmp, err := MakeTemp(dirfd, name, mk)
	if err != nil {
		return err
	}
	if err = Unprotect(dirfd, name); err == nil {
		err = unix.Renameat(dirfd, tmp, dirfd, name)
	}
	if err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
	}
	return err
}

// replaceLink replaces name with a link that mk makes, unless name is a
// link to src's inode already: renaming one link of an inode onto another
// does nothing and would leave the temporary name.
func replaceLink(dirfd int, name string, src *unix.Stat_t, mk func(string) error) error {
	var there unix.Stat_t
	if unix.Fstatat(dirfd, name, &there, unix.AT_SYMLINK_NOFOLLOW) == nil && there.Dev == src.Dev && there.Ino == src.Ino {
		return nil
	}
	return replace(dirfd, name, mk)
}

// replaceByDir puts a new directory (mode 0700) at name, which holds a
// non-directory: made under a temporary name and exchanged with it
// (RENAME_EXCHANGE), then the old object, now under the temporary name,
// removed. Where the filesystem cannot exchange, the old object is
// removed first.
func replaceByDir(dirfd int, name string) error {
	tmp, err := MakeTemp(dirfd, name, func(tmp string) error { return unix.Mkdirat(dirfd, tmp, 0o700) })
	if err != nil {
		return err
	}
	err = Unprotect(dirfd, name)
	if err == nil {
		err = unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_EXCHANGE)
	}
	if err == nil {
		return unix.Unlinkat(dirfd, tmp, 0)
	}
	unix.Unlinkat(dirfd, tmp, unix.AT_REMOVEDIR)
	if err != unix.EINVAL && err != unix.ENOSYS {
		return err
	}
	if err = remove(dirfd, name); err == nil {
		err = unix.Mkdirat(dirfd, name, 0o700)
	}
	return err
}

// ErrDirNotEmpty: a directory is where the version has another type of
// object, and it is not empty. A restore does not delete what the version
// lacks, so the object is not restored there.
var ErrDirNotEmpty = errors.New("a directory that is not empty is there; the version's object was not put in its place (move the directory away and restore again)")

// ExchangeDir puts the object at tmp (a non-directory) in place of the
// directory name when that is empty: the two are exchanged
// (RENAME_EXCHANGE) and the directory, now at tmp, removed, so name is
// never without an object. A directory with anything in it stays at name
// (ErrDirNotEmpty), as does one given something meanwhile (exchanged
// back); the object at tmp is then the caller's to remove. Where the
// filesystem cannot exchange, the empty directory is removed first.
func ExchangeDir(dirfd int, tmp, name string) error {
	if !emptyDir(dirfd, name) {
		return ErrDirNotEmpty
	}
	_ = Unprotect(dirfd, name)
	err := unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_EXCHANGE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		if err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err == nil {
			err = unix.Renameat(dirfd, tmp, dirfd, name)
		}
	} else if err == nil {
		if err = unix.Unlinkat(dirfd, tmp, unix.AT_REMOVEDIR); err != nil {
			unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_EXCHANGE) // back as it was
		}
	}
	if err == unix.ENOTEMPTY || err == unix.EEXIST {
		return ErrDirNotEmpty
	}
	return err
}

// emptyDir reports whether name in dirfd is a directory with nothing in
// it (not following a symlink).
func emptyDir(dirfd int, name string) bool {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	names, err := f.Readdirnames(1)
	return len(names) == 0 && err == io.EOF
}

// remove deletes a non-directory, clearing immutable and append-only first.
func remove(dirfd int, name string) error {
	if err := Unprotect(dirfd, name); err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, 0)
}

// Apply sets the metadata of the object name in dirfd from n (see ApplyFD).
// The object is opened once, without following a final symlink, and must
// be of n's type; everything is then set on that descriptor, so swapping
// the name for a symlink or another object meanwhile changes nothing
// elsewhere.
func Apply(dirfd int, name string, n *tree.Node, opts Options) error {
	fd, err := OpenNode(dirfd, name, n.Type)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return ApplyFD(fd, n, opts)
}

// OpenNode opens name in dirfd as an O_PATH descriptor without following a
// final symlink (opening a device or FIFO this way has no side effect) and
// checks that it is an object of type t.
func OpenNode(dirfd int, name string, t tree.Type) (int, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, pathErr("open", name, err)
	}
	if err := CheckType(fd, t); err != nil {
		unix.Close(fd)
		return -1, pathErr("open", name, err)
	}
	return fd, nil
}

// ErrWrongType is returned when an object is not of the type expected: it
// was replaced by something else since it was created.
var ErrWrongType = errors.New("not the type expected (replaced meanwhile?)")

// CheckType reports ErrWrongType unless fd is an object of type t.
func CheckType(fd int, t tree.Type) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if want, ok := typeBits[t]; !ok || st.Mode&unix.S_IFMT != want {
		return fmt.Errorf("want a %s, found mode %#o: %w", t, st.Mode&unix.S_IFMT, ErrWrongType)
	}
	return nil
}

var typeBits = map[tree.Type]uint32{
	tree.TypeFile: unix.S_IFREG, tree.TypeDir: unix.S_IFDIR, tree.TypeSymlink: unix.S_IFLNK,
	tree.TypeChar: unix.S_IFCHR, tree.TypeBlock: unix.S_IFBLK, tree.TypeFIFO: unix.S_IFIFO,
	tree.TypeSocket: unix.S_IFSOCK,
}

// ApplyFD sets the metadata of the object open as fd (a regular descriptor,
// or O_PATH for symlinks, devices and FIFOs) from n, in the order that
// keeps each step from undoing another: owner (changing the owner clears
// setuid, setgid and file capabilities), mode, xattrs (the whole set:
// attributes not in n are removed; POSIX ACLs, SELinux labels and file
// capabilities are xattrs), times (atime and mtime with nanoseconds; ctime
// and birth time cannot be set), then inode flags (immutable,
// append-only...) unless opts.SkipFlags. Call it after the content is
// written and, for a directory, after everything inside it is restored.
// Every step works on the descriptor, never on a name: a symlink is changed
// itself (it has no mode on Linux), never its target. Every step is tried;
// the error joins the steps that failed.
func ApplyFD(fd int, n *tree.Node, opts Options) error {
	var errs []error
	have := opts.Have
	haveMode := have != nil // have's mode is the file's still
	if !opts.SkipOwner {
		uid, gid := Owner(n, opts)
		if euid, egid := effectiveIDs(); opts.New && int(uid) == euid && int(gid) == egid {
			// created so: nothing to change
		} else if have != nil && have.Uid == uid && have.Gid == gid {
			// has them already
		} else {
			haveMode = false // a chown may clear set-ID bits
			if err := unix.Fchownat(fd, "", int(uid), int(gid), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
				errs = append(errs, fmt.Errorf("chown to %d:%d: %w", uid, gid, err))
			}
		}
	}
	chmod := func() {
		if n.Type == tree.TypeSymlink {
			return // a symlink's mode is always 0777 on Linux
		}
		if opts.New && opts.ModeSet {
			opts.ModeSet = false // only the first time: see the access ACL below
			return
		}
		if haveMode && uint32(have.Mode)&0o7777 == n.Mode&0o7777 {
			haveMode = false // has it; only the first time: see the access ACL below
			return
		}
		haveMode = false
		chmodFD := fchmod
		if (opts.New || have != nil) && n.Type == tree.TypeFile {
			chmodFD = unix.Fchmod // a regular descriptor: no need to ask
		}
		if err := chmodFD(fd, n.Mode&0o7777); err != nil {
			errs = append(errs, fmt.Errorf("chmod to %04o: %w", n.Mode&0o7777, err))
		}
	}
	chmod()
	switch {
	case opts.New && len(n.Xattrs) == 0:
		// none to set, none to remove
	case opts.New && n.Type == tree.TypeFile: // a regular descriptor: set straight
		for _, x := range n.Xattrs {
			if err := unix.Fsetxattr(fd, x.Name, x.Value, 0); err != nil {
				errs = append(errs, fmt.Errorf("set xattr %s: %w", x.Name, err))
			}
		}
	default: // O_PATH descriptors included
		if err := SetXattrsFD(fd, n.Xattrs); err != nil {
			errs = append(errs, err)
		}
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
	if h := have; h != nil && h.Atime.Sec == n.Atime.Sec && int64(h.Atime.Nsec) == n.Atime.Nsec &&
		h.Mtime.Sec == n.Mtime.Sec && int64(h.Mtime.Nsec) == n.Mtime.Nsec {
		// has them: setting the xattrs changed no time but the ctime
	} else if err := futimens(fd, t); err != nil {
		errs = append(errs, fmt.Errorf("set times: %w", err))
	}
	if !opts.SkipFlags && (n.Type == tree.TypeFile || n.Type == tree.TypeDir) && !(opts.New && n.Flags&SettableFlags == 0) {
		var err error
		if have != nil { // a regular descriptor
			err = changeFlagsFD(fd, "", SettableFlags, n.Flags&SettableFlags)
		} else {
			err = SetFlagsFD(fd, n.Flags)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Owner is the owner and group ApplyFD gives the object of n (unless
// opts.SkipOwner): the recorded numbers, or with opts.ByName the IDs its
// recorded names have here.
func Owner(n *tree.Node, opts Options) (uid, gid uint32) {
	uid, gid = n.UID, n.GID
	if opts.ByName {
		if id, ok := LookupUser(n.User); ok {
			uid = id
		}
		if id, ok := LookupGroup(n.Group); ok {
			gid = id
		}
	}
	return uid, gid
}

// KeepsPerm reports whether a regular file created with mode's permission
// bits, in a directory that passes no default ACL on (BareEntries), has
// exactly mode: mode has no set-user-ID, set-group-ID or sticky bit (which
// a chown may clear, or open does not set), and the process's umask clears
// none of its bits. ApplyFD then needs no chmod (Options.ModeSet).
func KeepsPerm(mode uint32) bool {
	mask, ok := umask()
	return ok && mode&0o7000 == 0 && mode&0o777&mask == 0
}

// umask is the process's file mode creation mask, which the agent never
// changes: read once from /proc/self/status (reading it with umask(2)
// would change it for a moment, for every thread).
var umask = sync.OnceValues(func() (uint32, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("Umask:")); ok {
			m, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 8, 32)
			return uint32(m), err == nil
		}
	}
	return 0, false
})

// effectiveIDs are the process's effective user and group IDs, which the
// agent never changes: asked once.
var effectiveIDs = sync.OnceValues(func() (int, int) { return unix.Geteuid(), unix.Getegid() })

// BareEntries reports whether an object created in the directory open
// as dirfd starts with no extended attributes, no settable inode flags and
// the caller's effective user and group, so that ApplyFD may skip reading
// or setting them (Options.New): the directory is not set-group-ID (whose
// group new entries take), and has no
// extended attributes (no default POSIX ACL, which a new entry inherits, and
// no security label, without which no LSM labels new files either) and no
// settable flags (ext4 and others pass some on to new entries). It is worth
// asking once per directory, and only of a directory nobody else may change
// meanwhile (one the caller created, mode 0700): its owner could add a
// default ACL after the answer.
func BareEntries(dirfd int) bool {
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil || st.Mode&unix.S_ISGID != 0 {
		return false
	}
	sz, err := unix.Flistxattr(dirfd, nil)
	if err != nil && !unsupported(err) || err == nil && sz > 0 {
		return false
	}
	f, err := unix.IoctlGetUint32(dirfd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return unsupported(err)
	}
	return f&SettableFlags == 0
}

// fdPath names the object open as fd: /proc/self/fd/N is a magic link to
// that very object (for an O_PATH symlink, to the symlink itself), so the
// path-based calls that need it reach nothing else.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// isPath reports whether fd was opened with O_PATH.
func isPath(fd int) bool {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_PATH != 0
}

// fchmod changes the mode of the object open as fd, O_PATH included:
// fchmod on a regular descriptor, fchmodat2(AT_EMPTY_PATH) on an O_PATH
// one (Linux 6.6), else chmod through /proc/self/fd.
func fchmod(fd int, mode uint32) error {
	if !isPath(fd) {
		return unix.Fchmod(fd, mode)
	}
	err := unix.Fchmodat(fd, "", mode, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		err = unix.Chmod(fdPath(fd), mode)
	}
	return err
}

// futimens sets atime and mtime of the object open as fd, O_PATH included.
func futimens(fd int, t []unix.Timespec) error {
	err := unix.UtimesNanoAt(fd, "", t, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) { // a kernel without AT_EMPTY_PATH here
		err = unix.UtimesNanoAt(unix.AT_FDCWD, fdPath(fd), t, 0)
	}
	return err
}

// SetXattrs makes the extended attributes of name (not following a final
// symlink) exactly want (see SetXattrsFD).
func SetXattrs(dirfd int, name string, want []tree.Xattr) error {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("open", name, err)
	}
	defer unix.Close(fd)
	if err := SetXattrsFD(fd, want); err != nil {
		return pathErr("xattrs of", name, err)
	}
	return nil
}

// SetXattrsFD makes the extended attributes of the object open as fd
// exactly want: attributes not in want are removed, the others set when
// their value differs. A regular descriptor is used directly (f*xattr); an
// O_PATH one, which those refuse with EBADF, through /proc/self/fd/N, which
// reaches only the object open.
func SetXattrsFD(fd int, want []tree.Xattr) error {
	x := fdXattrs(fd)
	have, err := listXattrs(x.list)
	if err == unix.EBADF {
		x = pathXattrs(fdPath(fd))
		have, err = listXattrs(x.list)
	}
	if err != nil && !(unsupported(err) && len(want) == 0) {
		if unsupported(err) {
			return fmt.Errorf("set xattrs: %w", err)
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	var errs []error
	for _, a := range have {
		if slices.ContainsFunc(want, func(x tree.Xattr) bool { return x.Name == a }) {
			continue
		}
		if err := x.remove(a); err != nil && err != unix.ENODATA {
			errs = append(errs, fmt.Errorf("remove xattr %s: %w", a, err))
		}
	}
	for _, w := range want {
		if slices.Contains(have, w.Name) {
			if cur, err := getXattr(x.get, w.Name); err == nil && bytes.Equal(cur, w.Value) {
				continue
			}
		}
		if err := x.set(w.Name, w.Value); err != nil {
			errs = append(errs, fmt.Errorf("set xattr %s: %w", w.Name, err))
		}
	}
	return errors.Join(errs...)
}

// xattrFns are the extended-attribute calls on one object.
type xattrFns struct {
	list   func([]byte) (int, error)
	get    func(string, []byte) (int, error)
	set    func(string, []byte) error
	remove func(string) error
}

func fdXattrs(fd int) xattrFns {
	return xattrFns{
		list:   func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		get:    func(a string, b []byte) (int, error) { return unix.Fgetxattr(fd, a, b) },
		set:    func(a string, v []byte) error { return unix.Fsetxattr(fd, a, v, 0) },
		remove: func(a string) error { return unix.Fremovexattr(fd, a) },
	}
}

func pathXattrs(p string) xattrFns {
	return xattrFns{
		list:   func(b []byte) (int, error) { return unix.Listxattr(p, b) },
		get:    func(a string, b []byte) (int, error) { return unix.Getxattr(p, a, b) },
		set:    func(a string, v []byte) error { return unix.Setxattr(p, a, v, 0) },
		remove: func(a string) error { return unix.Removexattr(p, a) },
	}
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
