package meta

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Inode flags (FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, linux/fs.h), as chattr
// names them.
const (
	FlagSecureRm    uint32 = 0x00000001 // s
	FlagUndelete    uint32 = 0x00000002 // u
	FlagCompress    uint32 = 0x00000004 // c
	FlagSync        uint32 = 0x00000008 // S
	FlagImmutable   uint32 = 0x00000010 // i
	FlagAppend      uint32 = 0x00000020 // a
	FlagNoDump      uint32 = 0x00000040 // d
	FlagNoAtime     uint32 = 0x00000080 // A
	FlagNoCompress  uint32 = 0x00000400 // m
	FlagEncrypted   uint32 = 0x00000800 // E (read-only)
	FlagIndex       uint32 = 0x00001000 // I (read-only, hashed directory)
	FlagJournalData uint32 = 0x00004000 // j
	FlagNoTail      uint32 = 0x00008000 // t
	FlagDirSync     uint32 = 0x00010000 // D
	FlagTopDir      uint32 = 0x00020000 // T
	FlagExtents     uint32 = 0x00080000 // e (read-only)
	FlagVerity      uint32 = 0x00100000 // V (read-only)
	FlagNoCOW       uint32 = 0x00800000 // C
	FlagDAX         uint32 = 0x02000000 // x
	FlagInlineData  uint32 = 0x10000000 // N (read-only)
	FlagProjInherit uint32 = 0x20000000 // P
	FlagCasefold    uint32 = 0x40000000 // F (only on empty directories)

	// SettableFlags are the flags SetFlags and Apply restore; the others
	// are recorded as read but belong to the filesystem (extents, inline
	// data, hashed index, encryption, verity) or can only be set on an
	// empty directory (casefold). Compare flags under this mask.
	SettableFlags = FlagSecureRm | FlagUndelete | FlagCompress | FlagSync |
		FlagImmutable | FlagAppend | FlagNoDump | FlagNoAtime | FlagNoCompress |
		FlagJournalData | FlagNoTail | FlagDirSync | FlagTopDir | FlagNoCOW |
		FlagDAX | FlagProjInherit

	// ProtectFlags forbid changing the object.
	ProtectFlags = FlagImmutable | FlagAppend
)

var flagLetters = []struct {
	f uint32
	c byte
}{
	{FlagSecureRm, 's'}, {FlagUndelete, 'u'}, {FlagSync, 'S'}, {FlagDirSync, 'D'},
	{FlagImmutable, 'i'}, {FlagAppend, 'a'}, {FlagNoDump, 'd'}, {FlagNoAtime, 'A'},
	{FlagCompress, 'c'}, {FlagEncrypted, 'E'}, {FlagJournalData, 'j'}, {FlagIndex, 'I'},
	{FlagNoTail, 't'}, {FlagTopDir, 'T'}, {FlagExtents, 'e'}, {FlagNoCOW, 'C'},
	{FlagDAX, 'x'}, {FlagCasefold, 'F'}, {FlagInlineData, 'N'}, {FlagProjInherit, 'P'},
	{FlagVerity, 'V'}, {FlagNoCompress, 'm'},
}

// FlagString spells flags with chattr's letters ("ia" for immutable and
// append-only); "-" when none is set. Unnamed bits show as hex.
func FlagString(f uint32) string {
	var b strings.Builder
	for _, l := range flagLetters {
		if f&l.f != 0 {
			b.WriteByte(l.c)
			f &^= l.f
		}
	}
	if f != 0 {
		b.WriteString("+0x")
		const hex = "0123456789abcdef"
		var h []byte
		for ; f > 0; f >>= 4 {
			h = append([]byte{hex[f&15]}, h...)
		}
		b.Write(h)
	}
	if b.Len() == 0 {
		return "-"
	}
	return b.String()
}

// openForFlags opens a regular file or directory for the flags ioctls
// without following a symlink, blocking on a FIFO or becoming a terminal's
// controlling process.
func openForFlags(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
}

// statxFlags are the flags statx reports without opening the file.
func statxFlags(stx *unix.Statx_t) uint32 {
	var f uint32
	a := stx.Attributes & stx.Attributes_mask
	if a&unix.STATX_ATTR_IMMUTABLE != 0 {
		f |= FlagImmutable
	}
	if a&unix.STATX_ATTR_APPEND != 0 {
		f |= FlagAppend
	}
	if a&unix.STATX_ATTR_NODUMP != 0 {
		f |= FlagNoDump
	}
	return f
}

// SetFlags sets the settable inode flags of a regular file or directory to
// flags & SettableFlags, keeping the filesystem's own flags. Nothing is
// written when they already match; a filesystem without inode flags is fine
// when none are wanted.
func SetFlags(dirfd int, name string, flags uint32) error {
	return changeFlags(dirfd, name, SettableFlags, flags&SettableFlags)
}

// SetFlagsFD is SetFlags for the regular file or directory open as fd (an
// O_PATH descriptor is reopened through /proc/self/fd, which reaches only
// that object).
func SetFlagsFD(fd int, flags uint32) error {
	if isPath(fd) {
		rfd, err := unix.Open(fdPath(fd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			return fmt.Errorf("open for flags: %w", err)
		}
		defer unix.Close(rfd)
		fd = rfd
	}
	return changeFlagsFD(fd, "", SettableFlags, flags&SettableFlags)
}

// Unprotect clears immutable and append-only on an existing regular file or
// directory so it can be overwritten, removed or changed. Other types and
// missing names are left alone.
func Unprotect(dirfd int, name string) error {
	var stx unix.Statx_t
	err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return pathErr("stat", name, err)
	}
	if t := stx.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		return nil
	}
	if stx.Attributes_mask&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) != 0 &&
		stx.Attributes&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) == 0 {
		return nil
	}
	return changeFlags(dirfd, name, ProtectFlags, 0)
}

// changeFlags replaces the bits in mask with want.
func changeFlags(dirfd int, name string, mask, want uint32) error {
	fd, err := openForFlags(dirfd, name)
	if err != nil {
		return pathErr("open for flags", name, err)
	}
	defer unix.Close(fd)
	return changeFlagsFD(fd, name, mask, want)
}

func changeFlagsFD(fd int, name string, mask, want uint32) error {
	cur, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		if unsupported(err) && want == 0 {
			return nil
		}
		return pathErr("read flags of", name, err)
	}
	next := cur&^mask | want
	if next == cur {
		return nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(next)); err != nil {
		return pathErr("set flags "+FlagString(want)+" on", name, err)
	}
	return nil
}
