// Package meta captures and applies everything a file is besides its
// content: type, owner, mode, times, extended attributes (POSIX ACLs,
// SELinux labels and file capabilities are xattrs), inode flags, symlink
// targets, device numbers and the data layout of sparse files.
//
// Every function works on a directory descriptor and a name relative to it
// (openat style), so paths deeper than PATH_MAX and names that are any bytes
// a Linux filesystem allows work. Extended attributes are reached through
// /proc/self/fd/DIRFD/NAME with the l* calls, which never follow the final
// symlink; /proc must be mounted.
//
// Restore order for one object: Create (or CreateFile and WriteSparse for
// regular files), then Apply, which sets owner, mode, xattrs, times and inode
// flags in that order. Directories are applied after their contents. Inode
// flags that forbid changes (immutable, append-only) are set last; a restore
// that makes hard links to such a file sets its flags after the last link
// (Options.SkipFlags, then SetFlags).
package meta

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrSocket is returned by Create for a socket: sockets are recorded, never
// recreated (the process that listened on it is gone).
var ErrSocket = errors.New("sockets are recorded, not restored")

// ErrType is returned by Create for a type it does not make (regular files
// are made with CreateFile, deleted markers are not objects).
var ErrType = errors.New("type not created by Create")

// Options control restore.
type Options struct {
	// ByName sets owners by the recorded User and Group names as known on
	// this system; a name unknown here falls back to the recorded number.
	// The default restores numeric IDs.
	ByName bool
	// SkipOwner leaves owner and group as created (restore as a non-root user).
	SkipOwner bool
	// SkipFlags makes Apply leave inode flags alone; the caller sets them
	// later with SetFlags (for example after the last hard link to the file
	// exists: an immutable file cannot be linked).
	SkipFlags bool
	// Replace makes Create, CreateFile and Link remove an existing
	// non-directory at the name first (clearing immutable and append-only).
	Replace bool
	// New tells ApplyFD that fd is an object the caller has just created
	// (CreateFD for a file, whose descriptor is then a regular one; Create
	// and OpenNode for the other types) in a directory for which
	// BareEntries holds: it starts with no extended attributes, no
	// settable inode flags and the process's effective IDs, so ApplyFD
	// sets n's without reading the object's first (no listxattr, no
	// FS_IOC_GETFLAGS when n has no flags, no chown to the IDs it has).
	New bool
	// ModeSet tells ApplyFD, with New, that the file was created with
	// n's mode (CreateFDMode, and KeepsPerm held for it): no chmod is
	// needed, unless setting an access ACL changes the mode.
	ModeSet bool
	// Have tells ApplyFD that fd is a regular descriptor of an existing
	// regular file that had this owner, mode and times (statx with at
	// least STATX_BASIC_STATS) and has not changed since: the owner, mode
	// and times are set only where they differ from n's. The caller must
	// not have moved the file's atime since (O_NOATIME).
	Have *unix.Statx_t
}

// xattrPath names dirfd/name for the path-based xattr calls.
func xattrPath(dirfd int, name string) string {
	if dirfd == unix.AT_FDCWD || (len(name) > 0 && name[0] == '/') {
		return name
	}
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// pathErr wraps err as "verb name: err".
func pathErr(verb, name string, err error) error {
	return fmt.Errorf("%s %q: %w", verb, name, err)
}
