package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// A restore creates every file of the corpus, and on ext4 without a
// journal (this machine kind's root filesystem) each create skips the
// free inodes deleted in the last minute, or the last six when their
// inode table block is dirty again (the kernel's recently_deleted,
// RECENTCY_MIN and RECENTCY_DIRTY in fs/ext4/ialloc.c): the
// previous run's corpus, stores and restored trees, removed moments
// before, made one tool's restore of 100,000 small files take 3.7 s in
// one run and 6.6 s in the next. So each restore goes into an ext4
// filesystem of its own, made for it on a sparse image beside the work
// directory and removed after the check: both tools create files on a
// fresh, journaled ext4, the common target, whatever ran before. The loop
// device reads its image with direct I/O, so the host's page cache holds
// no second copy. Without root (or mkfs.ext4, mount's loop option) the
// restore goes into a plain directory, as the report says.
type restoreFS struct {
	img, mnt string
}

// restoreFSNote describes where restores go, for the report.
const (
	restoreFSFresh = "each restore into a fresh %s filesystem (sparse image, loop device with direct I/O)"
	restoreFSDir   = "restores into a directory of the work directory's filesystem"
)

// mkfs are the commands that make a restore filesystem of each type
// (-restore-fstype), the image's path last: ext4, the common target, and
// btrfs and XFS, whose reflinks a rollback uses.
var mkfs = map[string][]string{
	"ext4":  {"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"},
	"btrfs": {"mkfs.btrfs", "-q", "-f"},
	"xfs":   {"mkfs.xfs", "-q", "-f"},
}

// newRestoreFS makes and mounts a filesystem of type fstype (a key of
// mkfs) and size bytes for tool's restore under work.
func newRestoreFS(work, tool, fstype string, size int64) (*restoreFS, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("not root: cannot mount a filesystem")
	}
	mk, ok := mkfs[fstype]
	if !ok {
		return nil, fmt.Errorf("restore filesystem: unknown type %q (ext4, btrfs or xfs)", fstype)
	}
	if fstype != "ext4" {
		size = max(size, 512<<20) // mkfs.xfs wants 300 MB at least, mkfs.btrfs 109 MiB (a sparse image)
	}
	f := &restoreFS{img: filepath.Join(work, "restorefs-"+tool+".img"), mnt: filepath.Join(work, "restorefs-"+tool)}
	if err := f.unmountStale(); err != nil {
		return nil, err
	}
	os.Remove(f.img)
	img, err := os.Create(f.img)
	if err != nil {
		return nil, fmt.Errorf("restore filesystem: %w", err)
	}
	err = img.Truncate(size)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.img)
		return nil, fmt.Errorf("restore filesystem: %w", err)
	}
	if out, err := exec.Command(mk[0], append(mk[1:], f.img)...).CombinedOutput(); err != nil {
		os.Remove(f.img)
		return nil, fmt.Errorf("restore filesystem: %s: %w: %s", mk[0], err, strings.TrimSpace(string(out)))
	}
	if err := os.MkdirAll(f.mnt, 0o755); err != nil {
		os.Remove(f.img)
		return nil, fmt.Errorf("restore filesystem: %w", err)
	}
	// mount -o loop sets the loop device to detach itself at the unmount,
	// also when a killed run's mount is taken down by the next one.
	if out, err := exec.Command("mount", "-o", "loop,noatime", f.img, f.mnt).CombinedOutput(); err != nil {
		os.Remove(f.img)
		return nil, fmt.Errorf("restore filesystem: mount: %w: %s", err, strings.TrimSpace(string(out)))
	}
	out, err := exec.Command("findmnt", "-n", "-o", "SOURCE", f.mnt).Output()
	if err == nil {
		_, err = exec.Command("losetup", "--direct-io=on", strings.TrimSpace(string(out))).CombinedOutput()
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("restore filesystem: direct I/O on its loop device: %w", err)
	}
	return f, nil
}

// Dir is where the tool restores: a directory inside the filesystem (its
// root holds lost+found).
func (f *restoreFS) Dir() string { return filepath.Join(f.mnt, "restore") }

// Close unmounts the filesystem (its loop device detaches itself) and
// removes its image.
func (f *restoreFS) Close() error {
	var errs []error
	// EINVAL: not mounted (any more); ENOENT: never made.
	if err := syscall.Unmount(f.mnt, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", f.mnt, err))
	}
	if err := os.Remove(f.img); err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	if err := os.Remove(f.mnt); err != nil && !os.IsNotExist(err) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmountStale unmounts what an interrupted run left mounted at f.mnt.
func (f *restoreFS) unmountStale() error {
	for range 4 { // mounted again and again by runs killed in turn
		if err := syscall.Unmount(f.mnt, syscall.MNT_DETACH); err != nil {
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
				return nil
			}
			return fmt.Errorf("unmount %s left by an earlier run: %w", f.mnt, err)
		}
	}
	return nil
}

// restoreFSSize is the image's size for a corpus: room for its data
// twice, or for its apparent size when larger (a tool may write zeros where
// a sparse file's holes share chunks with data: restic does), an inode for
// each entry (file, directory, symlink) with ext4's usual ratio (16 KiB),
// and a GiB; the image is
// sparse, so only what is written takes space.
func restoreFSSize(dataBytes, apparent int64, entries int) int64 {
	return max(2*dataBytes, apparent) + int64(entries)*16<<10 + 1<<30
}
