// Package loopfs gives tests a real filesystem of a given type on a loop
// device: a sparse image file in a temporary directory, formatted and
// mounted for the test and unmounted when it ends. It needs root and the
// filesystem's mkfs tool (btrfs-progs, xfsprogs: installed by .ci/run).
package loopfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// MountBtrfs makes a btrfs filesystem of size bytes on a sparse file in dir
// and loop-mounts it at dir/mnt, which it returns. Without root the test is
// skipped with a loud message; CI runs as root.
func MountBtrfs(t testing.TB, dir string, size int64) string {
	t.Helper()
	return Mount(t, dir, "btrfs", size)
}

// mkfs are the commands that make each type of filesystem Mount knows, the
// image's path last.
var mkfs = map[string][]string{
	"btrfs": {"mkfs.btrfs", "-q"},
	"xfs":   {"mkfs.xfs", "-q", "-f"}, // reflinks by default since xfsprogs 5.1
}

// Mount makes a filesystem of type fstype (btrfs or xfs) and size bytes on
// a sparse file in dir and loop-mounts it at dir/mnt, which it returns.
// Without root the test is skipped with a loud message; CI runs as root.
func Mount(t testing.TB, dir, fstype string, size int64) string {
	t.Helper()
	mk, ok := mkfs[fstype]
	if !ok {
		t.Fatalf("loopfs: no filesystem type %q", fstype)
	}
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: mounting a " + fstype + " loop filesystem needs root (CI runs as root)")
	}
	img := filepath.Join(dir, fstype+".img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mk[0], append(mk[1:], img)...).CombinedOutput(); err != nil {
		t.Fatalf("%s (install its package, as .ci/run does): %v\n%s", mk[0], err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}
