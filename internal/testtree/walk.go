package testtree

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// entry is one object met by walk.
type entry struct {
	dirfd int    // parent directory
	name  string // name in the parent
	rel   []byte // path from the root, '/'-separated; "." for the root
	stx   unix.Statx_t
}

func (e *entry) isDir() bool  { return e.stx.Mode&unix.S_IFMT == unix.S_IFDIR }
func (e *entry) isFile() bool { return e.stx.Mode&unix.S_IFMT == unix.S_IFREG }

// walk visits root and everything below it in tree order (sorted names,
// openat-style so depth is unlimited), calling fn before a directory's
// contents (pre) or after them (post).
func walk(root string, post bool, fn func(e *entry) error) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(fd)
	e := &entry{dirfd: fd, name: ".", rel: []byte(".")}
	if err := unix.Statx(fd, ".", unix.AT_SYMLINK_NOFOLLOW, unix.STATX_ALL, &e.stx); err != nil {
		return fmt.Errorf("stat %s: %w", root, err)
	}
	return walkDir(fd, e, post, fn)
}

func walkDir(fd int, self *entry, post bool, fn func(e *entry) error) error {
	if !post {
		if err := fn(self); err != nil {
			return err
		}
	}
	names, err := tree.ReadNames(fd)
	if err != nil {
		return fmt.Errorf("read dir %q: %w", self.rel, err)
	}
	for _, name := range names {
		e := &entry{dirfd: fd, name: name, rel: tree.Join(self.rel, name)}
		if err := unix.Statx(fd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_ALL, &e.stx); err != nil {
			return fmt.Errorf("stat %q: %w", e.rel, err)
		}
		if !e.isDir() {
			if err := fn(e); err != nil {
				return err
			}
			continue
		}
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %q: %w", e.rel, err)
		}
		err = walkDir(sub, e, post, fn)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	if post {
		return fn(self)
	}
	return nil
}

const (
	flagImmutable uint32 = 0x10
	flagAppend    uint32 = 0x20
	flagNoDump    uint32 = 0x40
	flagNoAtime   uint32 = 0x80
)

func getFlags(dirfd int, name string) (uint32, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
}

func setFlags(dirfd int, name string, mask, want uint32) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q for flags: %w", name, err)
	}
	defer unix.Close(fd)
	cur, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("read flags of %q: %w", name, err)
	}
	if next := cur&^mask | want; next != cur {
		if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(next)); err != nil {
			return fmt.Errorf("set flags %#x on %q: %w", want, name, err)
		}
	}
	return nil
}

// Unprotect clears the immutable and append-only flags of everything under
// root, so the tree can be changed or removed (tests call it from
// t.Cleanup, before TempDir's removal).
func Unprotect(root string) error {
	var errs []error
	err := walk(root, false, func(e *entry) error {
		if !e.isDir() && !e.isFile() {
			return nil
		}
		a := e.stx.Attributes & e.stx.Attributes_mask
		if a&(unix.STATX_ATTR_IMMUTABLE|unix.STATX_ATTR_APPEND) == 0 {
			return nil
		}
		if err := setFlags(e.dirfd, e.name, flagImmutable|flagAppend, 0); err != nil {
			errs = append(errs, fmt.Errorf("unprotect %q: %w", e.rel, err))
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}
