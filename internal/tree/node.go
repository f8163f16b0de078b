// Package tree defines the records that make up a version: one Node per file,
// directory, link or special file, in path order, and their encoding as a
// stream (see docs/format.md, "Version listings").
package tree

// Type is the kind of a filesystem object.
type Type uint8

const (
	TypeFile    Type = 1
	TypeDir     Type = 2
	TypeSymlink Type = 3
	TypeChar    Type = 4 // character device node
	TypeBlock   Type = 5 // block device node
	TypeFIFO    Type = 6
	TypeSocket  Type = 7 // recorded as such; restore does not recreate sockets
	// TypeDeleted marks a path that existed in the previous version of the
	// same configuration and no longer exists. It carries no other data.
	TypeDeleted Type = 8
)

func (t Type) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeChar:
		return "chardev"
	case TypeBlock:
		return "blockdev"
	case TypeFIFO:
		return "fifo"
	case TypeSocket:
		return "socket"
	case TypeDeleted:
		return "deleted"
	}
	return "unknown"
}

// Status says whether the content recorded for a node is complete.
type Status uint8

const (
	StatusOK Status = 0
	// StatusUnreadable: the object could not be read (permission, I/O error,
	// vanished during the scan). Err says why. A version holding such a node is
	// not fully protected.
	StatusUnreadable Status = 1
	// StatusInconsistent: the file kept changing while it was read and no
	// stable copy was obtained after the allowed attempts. Content is absent.
	StatusInconsistent Status = 2
)

// ChunkRef is one piece of a file's content.
type ChunkRef struct {
	ID  [32]byte `cbor:"1,keyasint"`
	Len uint32   `cbor:"2,keyasint"` // plaintext length
}

// Extent is a data range of a sparse file, in file offsets. The chunks of a
// sparse file cover the data extents concatenated in order; everything
// outside the extents is a hole.
type Extent struct {
	Off int64 `cbor:"1,keyasint"`
	Len int64 `cbor:"2,keyasint"`
}

// Xattr is one extended attribute, with its full name including namespace
// ("user.x", "security.selinux", "system.posix_acl_access", ...).
type Xattr struct {
	Name  string `cbor:"1,keyasint"`
	Value []byte `cbor:"2,keyasint"`
}

// Timespec is a time with nanosecond precision, in Unix seconds and nanoseconds.
type Timespec struct {
	Sec  int64 `cbor:"1,keyasint"`
	Nsec int64 `cbor:"2,keyasint"`
}

// Unchanged reports whether n, just read from the filesystem, looks like
// the object prev recorded: the same inode and type with the same size,
// mtime and ctime. Writing content sets the mtime and ctime; changing the
// mode, owner, xattrs, ACLs or inode flags sets the ctime, which user space
// cannot set back. (A change within the same timestamp tick as the
// recording is not seen: callers keep prev only when it was recorded
// clearly after its ctime.)
func Unchanged(prev, n *Node) bool {
	return prev.Type == n.Type && prev.Ino == n.Ino && prev.Size == n.Size &&
		prev.Mtime == n.Mtime && prev.Ctime == n.Ctime
}

// Node is one object of a version. Path is relative to the configuration's
// root, '/'-separated, arbitrary bytes except NUL, never starting with '/';
// the root itself has the path ".". Paths are stored as bytes because Linux
// names need not be UTF-8.
type Node struct {
	Path  []byte   `cbor:"1,keyasint"`
	Type  Type     `cbor:"2,keyasint"`
	Mode  uint32   `cbor:"3,keyasint,omitempty"` // permission bits incl. setuid/setgid/sticky (07777)
	UID   uint32   `cbor:"4,keyasint,omitempty"`
	GID   uint32   `cbor:"5,keyasint,omitempty"`
	User  string   `cbor:"6,keyasint,omitempty"` // name of UID when known at backup
	Group string   `cbor:"7,keyasint,omitempty"`
	Size  int64    `cbor:"8,keyasint,omitempty"` // apparent size (st_size)
	Mtime Timespec `cbor:"9,keyasint,omitempty"`
	Atime Timespec `cbor:"10,keyasint,omitempty"`
	Ctime Timespec `cbor:"11,keyasint,omitempty"` // recorded, not restorable
	Btime Timespec `cbor:"12,keyasint,omitempty"` // birth time when statx reports it
	Dev   uint64   `cbor:"13,keyasint,omitempty"` // st_dev at backup (identity, hard links)
	Ino   uint64   `cbor:"14,keyasint,omitempty"`
	Nlink uint32   `cbor:"15,keyasint,omitempty"`
	Rdev  uint64   `cbor:"16,keyasint,omitempty"` // device number of char/block nodes
	// Target is a symlink's target, exact bytes.
	Target []byte `cbor:"17,keyasint,omitempty"`
	// LinkTo, when set on a file, names an earlier node (in path order) of the
	// same version that is the same inode: restore makes a hard link to it.
	LinkTo []byte  `cbor:"18,keyasint,omitempty"`
	Xattrs []Xattr `cbor:"19,keyasint,omitempty"`
	// Flags are the inode flags (FS_IOC_GETFLAGS: immutable, append-only,
	// nodump, noatime...), applied after content at restore.
	Flags uint32 `cbor:"20,keyasint,omitempty"`
	// Sparse is true when Extents describes the data layout (holes elsewhere).
	Sparse  bool       `cbor:"21,keyasint,omitempty"`
	Extents []Extent   `cbor:"22,keyasint,omitempty"`
	Chunks  []ChunkRef `cbor:"23,keyasint,omitempty"`
	// MountPoint marks a directory where another filesystem was mounted and
	// the selection did not cross: its contents are not in the version.
	MountPoint bool   `cbor:"24,keyasint,omitempty"`
	Status     Status `cbor:"25,keyasint,omitempty"`
	Err        string `cbor:"26,keyasint,omitempty"`
}
