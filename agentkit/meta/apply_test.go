package meta

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"vaultnode/internal/tree"
)

// A name swapped for a symlink to elsewhere after it was created: Apply
// refuses it (wrong type) and changes nothing where the symlink points;
// ApplyFD on the symlink itself changes the symlink, never its target
// (issue 10 item 10: chmod used to follow a final symlink).
func TestApplyNeverFollowsASwappedSymlink(t *testing.T) {
	d := t.TempDir()
	victim := filepath.Join(d, "victim")
	if err := os.WriteFile(victim, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(d, "in"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(d, "in", "f")); err != nil {
		t.Fatal(err)
	}
	dfd := openDir(t, filepath.Join(d, "in"))
	n := tree.Node{Path: []byte("f"), Type: tree.TypeFile, Mode: 0o4777, Mtime: tree.Timespec{Sec: 5}, Atime: tree.Timespec{Sec: 5},
		Xattrs: []tree.Xattr{{Name: "user.hostile", Value: []byte("1")}}}
	var before unix.Stat_t
	if err := unix.Stat(victim, &before); err != nil {
		t.Fatal(err)
	}
	if err := Apply(dfd, "f", &n, Options{SkipOwner: true}); !errors.Is(err, ErrWrongType) {
		t.Errorf("Apply on a symlink where a file was made: %v, want ErrWrongType", err)
	}
	fd, err := unix.Openat(dfd, "f", unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sym := tree.Node{Type: tree.TypeSymlink, Mode: 0o777, Mtime: tree.Timespec{Sec: 7}, Atime: tree.Timespec{Sec: 7}}
	if err := ApplyFD(fd, &sym, Options{SkipOwner: true}); err != nil {
		t.Errorf("ApplyFD on a symlink: %v", err)
	}
	var after, link unix.Stat_t
	if err := unix.Stat(victim, &after); err != nil {
		t.Fatal(err)
	}
	if after.Mode != before.Mode || after.Mtim != before.Mtim {
		t.Errorf("the symlink's target changed: mode %o mtime %v, was %o %v", after.Mode, after.Mtim, before.Mode, before.Mtim)
	}
	if _, err := unix.Getxattr(victim, "user.hostile", make([]byte, 8)); err == nil {
		t.Errorf("the symlink's target got the xattr")
	}
	if err := unix.Lstat(filepath.Join(d, "in", "f"), &link); err != nil || link.Mtim.Sec != 7 {
		t.Errorf("the symlink itself did not get its mtime: %v %v", link.Mtim, err)
	}
}

// ApplyFD on a FIFO opened O_PATH sets its mode, times and owner without
// opening it for reading or writing.
func TestApplyFDOnPathDescriptor(t *testing.T) {
	d := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(d, "p"), 0o600); err != nil {
		t.Fatal(err)
	}
	dfd := openDir(t, d)
	n := tree.Node{Type: tree.TypeFIFO, Mode: 0o640, Mtime: tree.Timespec{Sec: 9, Nsec: 3}, Atime: tree.Timespec{Sec: 8}}
	if err := Apply(dfd, "p", &n, Options{SkipOwner: true}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(d, "p"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o640 || st.Mtim.Sec != 9 || st.Mtim.Nsec != 3 || st.Atim.Sec != 8 {
		t.Errorf("fifo: mode %o mtime %v atime %v", st.Mode&0o7777, st.Mtim, st.Atim)
	}
}

// TestSetXattrsFD: through a regular descriptor and through an O_PATH one
// (f*xattr refuse it: the /proc/self/fd path is used), the attributes
// become exactly the wanted ones: extra removed, changed set, equal kept.
func TestSetXattrsFD(t *testing.T) {
	for _, flags := range []int{unix.O_RDONLY, unix.O_PATH} {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, a := range [][2]string{{"user.extra", "1"}, {"user.changed", "old"}, {"user.same", "s"}} {
			if err := unix.Setxattr(p, a[0], []byte(a[1]), 0); err != nil {
				t.Fatal(err)
			}
		}
		fd, err := unix.Open(p, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := []tree.Xattr{{Name: "user.changed", Value: []byte("new")}, {Name: "user.same", Value: []byte("s")}, {Name: "user.added", Value: []byte("a")}}
		if err := SetXattrsFD(fd, want); err != nil {
			t.Fatalf("flags %#x: %v", flags, err)
		}
		unix.Close(fd)
		got := map[string]string{}
		names, err := listXattrs(func(b []byte) (int, error) { return unix.Listxattr(p, b) })
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			v, err := getXattr(func(a string, b []byte) (int, error) { return unix.Getxattr(p, a, b) }, n)
			if err != nil {
				t.Fatal(err)
			}
			got[n] = string(v)
		}
		if len(got) != 3 || got["user.changed"] != "new" || got["user.same"] != "s" || got["user.added"] != "a" {
			t.Errorf("flags %#x: xattrs %v", flags, got)
		}
	}
}

// With Options.Have, ApplyFD sets only what differs from what the file
// has: a file whose owner, mode and times are n's keeps its ctime (nothing
// was changed); one whose mode and times differ gets n's.
func TestApplyHave(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	n := tree.Node{Path: []byte("f"), Type: tree.TypeFile, Mode: 0o640,
		Mtime: tree.Timespec{Sec: 1_500_000_000, Nsec: 3}, Atime: tree.Timespec{Sec: 1_500_000_001, Nsec: 4},
		UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	if err := os.Chtimes(p, time.Unix(n.Atime.Sec, n.Atime.Nsec), time.Unix(n.Mtime.Sec, n.Mtime.Nsec)); err != nil {
		t.Fatal(err)
	}
	before := applyHave(t, p, &n, 10*time.Millisecond) // a change would move the ctime visibly
	var after unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_BASIC_STATS, &after); err != nil {
		t.Fatal(err)
	}
	if after.Ctime != before.Ctime {
		t.Errorf("ctime moved from %v to %v: something was set though the file had n's metadata", before.Ctime, after.Ctime)
	}
	n.Mode, n.Mtime = 0o604, tree.Timespec{Sec: 1_600_000_000, Nsec: 9}
	applyHave(t, p, &n, 0)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o604 || st.Mtim.Sec != 1_600_000_000 || st.Mtim.Nsec != 9 || st.Atim.Sec != n.Atime.Sec {
		t.Errorf("mode %o, mtime %d.%d, atime %d; want the node's", st.Mode&0o7777, st.Mtim.Sec, st.Mtim.Nsec, st.Atim.Sec)
	}
}

// A chown clears set-ID bits: a file whose mode Have says is n's, but
// whose group changes, gets its mode set again after the chown.
func TestApplyHaveChownKeepsSetID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root (chown to another group); CI runs as root")
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("x"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o750|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	n := tree.Node{Path: []byte("f"), Type: tree.TypeFile, Mode: 0o2750, UID: 0, GID: 4242}
	applyHave(t, p, &n, 0)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid != 4242 || st.Mode&0o7777 != 0o2750 {
		t.Errorf("group %d, mode %04o; want 4242, 2750", st.Gid, st.Mode&0o7777)
	}
}

// applyHave opens p as a restore opens a file it found (O_NOATIME), takes
// its statx, waits, and applies n with that statx as Options.Have; it
// returns the statx.
func applyHave(t *testing.T, p string, n *tree.Node, wait time.Duration) unix.Statx_t {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var have unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS, &have); err != nil {
		t.Fatal(err)
	}
	time.Sleep(wait)
	if err := ApplyFD(fd, n, Options{Have: &have}); err != nil {
		t.Fatal(err)
	}
	return have
}
