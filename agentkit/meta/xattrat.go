package meta

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux 6.13 reads extended attributes relative to a directory descriptor
// (listxattrat, getxattrat). Before it, the attributes of what cannot be
// opened (symlinks above all) were read through /proc/self/fd/N/NAME,
// whose resolution cost about 3 µs of each symlink's 5 (docs/performance.md,
// item 71). Older kernels answer ENOSYS (a seccomp filter that does not
// know the calls may answer EPERM) once; the /proc path is used from then
// on.

// noXattrAt is set once the kernel lacks the calls, or refuses them.
var noXattrAt atomic.Bool

// xattrArgs is the kernel's struct xattr_args.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

func listxattrat(dirfd int, name string, dest []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var d unsafe.Pointer
	if len(dest) > 0 {
		d = unsafe.Pointer(&dest[0])
	}
	n, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(d), uintptr(len(dest)), 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func getxattrat(dirfd int, name, attr string, dest []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{size: uint32(len(dest))}
	if len(dest) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&dest[0])))
	}
	n, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), unix.AT_SYMLINK_NOFOLLOW,
		uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
