// Package snapshot takes read-only filesystem snapshots of a configuration's
// roots for the length of one synchronization, so files that are open and
// written are copied as they were at one instant (docs/snapshots.md).
//
// Only btrfs is supported: for each root, the subvolume that contains it is
// snapshotted (BTRFS_IOC_SNAP_CREATE_V2, read-only) into a directory of that
// subvolume named ".vaultnode-snapshot.CONFIG.TIME", and the root is read
// from the same relative directory inside the snapshot. Release deletes the
// snapshots; snapshots of the same configuration left by a crash are
// deleted by the next Take. A root on any other filesystem is an error,
// never a silent fallback to reading the live files.
package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/internal/wire"
)

// Prefix starts the name of every snapshot this package makes.
const Prefix = ".vaultnode-snapshot."

// ErrUnsupported is returned for a root whose filesystem cannot snapshot.
var ErrUnsupported = errors.New("filesystem cannot be snapshotted")

// Set is the snapshots of one synchronization.
type Set struct {
	log   *zap.Logger
	snaps []snap            // in creation order
	src   map[string]string // root -> directory to read
}

type snap struct {
	subvol string // the snapshotted subvolume's root directory
	name   string // entry in subvol
}

// Path is where the snapshot is.
func (s snap) Path() string { return filepath.Join(s.subvol, s.name) }

// Take snapshots the subvolume of every root (once per subvolume) with the
// given kind (wire.SnapshotBtrfs). config names the snapshots so that a
// later Take of the same configuration removes those a crash left. On error
// no snapshot is left behind.
func Take(kind, config string, roots []string, log *zap.Logger) (*Set, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if kind != wire.SnapshotBtrfs {
		return nil, fmt.Errorf("snapshot kind %q is not supported: use %q or none", kind, wire.SnapshotBtrfs)
	}
	s := &Set{log: log, src: map[string]string{}}
	bySubvol := map[string]string{} // subvolume -> snapshot path
	name := Prefix + config + "." + strconv.FormatInt(time.Now().UnixNano(), 10)
	for _, root := range roots {
		root = filepath.Clean(root)
		sv, err := Subvolume(root)
		if err != nil {
			s.Release()
			return nil, err
		}
		sp, ok := bySubvol[sv]
		if !ok {
			if err := CleanStale(sv, config, log); err != nil {
				s.Release()
				return nil, err
			}
			if err := create(sv, name); err != nil {
				s.Release()
				return nil, fmt.Errorf("snapshot %s for %s: %w", sv, root, err)
			}
			sn := snap{subvol: sv, name: name}
			s.snaps = append(s.snaps, sn)
			sp = sn.Path()
			bySubvol[sv] = sp
			log.Info("snapshot taken", zap.String("subvolume", sv), zap.String("snapshot", sp))
		}
		rel, err := filepath.Rel(sv, root)
		if err != nil {
			s.Release()
			return nil, fmt.Errorf("snapshot %s: %w", root, err)
		}
		s.src[root] = filepath.Join(sp, rel)
	}
	return s, nil
}

// SourceOf maps a root given to Take to the same directory in its
// snapshot; any other path is returned unchanged. It fits
// backup.Options.SourceOf.
func (s *Set) SourceOf(root string) string {
	if p, ok := s.src[filepath.Clean(root)]; ok {
		return p
	}
	return root
}

// Excludes returns glob patterns (absolute, for a configuration's Exclude)
// matching the snapshot directories as they appear inside the roots, so a
// root that holds a snapshotted subvolume's top does not record them.
func (s *Set) Excludes() []string {
	var out []string
	seen := map[string]bool{}
	for _, sn := range s.snaps {
		p := filepath.Join(sn.subvol, Prefix+"*")
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// Paths lists the snapshot directories of the set.
func (s *Set) Paths() []string {
	var out []string
	for _, sn := range s.snaps {
		out = append(out, sn.Path())
	}
	return out
}

// Release deletes the snapshots; it is safe to call more than once.
func (s *Set) Release() error {
	var errs []error
	for i := len(s.snaps) - 1; i >= 0; i-- {
		sn := s.snaps[i]
		if err := destroy(sn.subvol, sn.name); err != nil {
			errs = append(errs, fmt.Errorf("delete snapshot %s: %w (delete it with `btrfs subvolume delete`)", sn.Path(), err))
			continue
		}
		s.log.Info("snapshot deleted", zap.String("snapshot", sn.Path()))
	}
	s.snaps = nil
	return errors.Join(errs...)
}

// CleanStale deletes the snapshots of config left in subvol by an earlier
// run that did not finish (a crash, a kill).
func CleanStale(subvol, config string, log *zap.Logger) error {
	ents, err := os.ReadDir(subvol)
	if err != nil {
		return fmt.Errorf("look for stale snapshots in %s: %w", subvol, err)
	}
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !IsStaleName(e.Name(), config) {
			continue
		}
		if err := destroy(subvol, e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("delete stale snapshot %s: %w", filepath.Join(subvol, e.Name()), err))
			continue
		}
		if log != nil {
			log.Warn("deleted a snapshot left by an interrupted run", zap.String("snapshot", filepath.Join(subvol, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// IsStaleName reports whether name is one of config's snapshots.
func IsStaleName(name, config string) bool {
	rest, ok := strings.CutPrefix(name, Prefix+config+".")
	if !ok {
		return false
	}
	_, err := strconv.ParseInt(rest, 10, 64)
	return err == nil
}

// btrfsFirstFreeObjectID is the inode number of every subvolume's top
// directory.
const btrfsFirstFreeObjectID = 256

// Subvolume returns the top directory of the btrfs subvolume holding path,
// or an error wrapping ErrUnsupported when path is not on btrfs.
func Subvolume(path string) (string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", path, err)
	}
	if uint32(fs.Type) != unix.BTRFS_SUPER_MAGIC {
		return "", fmt.Errorf("snapshot %s: %w: it is on %s, and only btrfs snapshots are supported (docs/snapshots.md): "+
			"remove -snapshot from the configuration or move the data to btrfs", path, ErrUnsupported, fsName(int64(fs.Type)))
	}
	p, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		// a file root: its directory's subvolume holds it
		p = filepath.Dir(p)
		if err := unix.Stat(p, &st); err != nil {
			return "", fmt.Errorf("snapshot %s: %w", path, err)
		}
	}
	for {
		if st.Ino == btrfsFirstFreeObjectID {
			return p, nil
		}
		parent := filepath.Dir(p)
		var pst unix.Stat_t
		if parent == p {
			return "", fmt.Errorf("snapshot %s: no btrfs subvolume top above it", path)
		}
		if err := unix.Stat(parent, &pst); err != nil {
			return "", fmt.Errorf("snapshot %s: %w", path, err)
		}
		if pst.Dev != st.Dev {
			// the mount point is a subvolume other than its top (mounted
			// with subvol=): it is the top as far as we can reach
			return p, nil
		}
		p, st = parent, pst
	}
}

func fsName(magic int64) string {
	switch uint32(magic) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext2/3/4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	}
	return fmt.Sprintf("a filesystem of type %#x", magic)
}

// The btrfs ioctls (linux/btrfs.h).
const (
	btrfsIoctlMagic    = 0x94
	btrfsSubvolRdonly  = 1 << 1
	btrfsPathNameMax   = 4087
	btrfsSubvolNameMax = 4039
)

// btrfs_ioctl_vol_args_v2
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [btrfsSubvolNameMax + 1]byte
}

// btrfs_ioctl_vol_args
type volArgs struct {
	fd   int64
	name [btrfsPathNameMax + 1]byte
}

func iow(nr, size uintptr) uintptr {
	return 1<<30 | size<<16 | btrfsIoctlMagic<<8 | nr
}

var (
	iocSnapCreateV2 = iow(23, unsafe.Sizeof(volArgsV2{}))
	iocSnapDestroy  = iow(15, unsafe.Sizeof(volArgs{}))
)

// create makes a read-only snapshot of the subvolume whose top is subvol,
// as the entry name in subvol.
func create(subvol, name string) error {
	src, err := unix.Open(subvol, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open subvolume: %w", err)
	}
	defer unix.Close(src)
	var a volArgsV2
	if len(name) > btrfsSubvolNameMax {
		return fmt.Errorf("snapshot name %q too long", name)
	}
	a.fd = int64(src)
	a.flags = btrfsSubvolRdonly
	copy(a.name[:], name)
	// the destination directory is the subvolume's top itself
	if err := ioctl(src, iocSnapCreateV2, unsafe.Pointer(&a)); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("BTRFS_IOC_SNAP_CREATE_V2: %w (run the agent as root)", err)
		}
		return fmt.Errorf("BTRFS_IOC_SNAP_CREATE_V2: %w", err)
	}
	return nil
}

// destroy deletes the snapshot entry name of directory dir.
func destroy(dir, name string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var a volArgs
	copy(a.name[:], name)
	if err := ioctl(fd, iocSnapDestroy, unsafe.Pointer(&a)); err != nil {
		return fmt.Errorf("BTRFS_IOC_SNAP_DESTROY: %w", err)
	}
	return nil
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}
