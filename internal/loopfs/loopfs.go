// Package loopfs gives tests a real filesystem of a given type on a loop
// device: a sparse image file in a temporary directory, formatted and
// mounted for the test and unmounted when it ends. It needs root and the
// filesystem's mkfs tool (btrfs-progs, installed by .ci/run).
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
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: mounting a btrfs loop filesystem needs root (CI runs as root)")
	}
	img := filepath.Join(dir, "btrfs.img")
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
	if out, err := exec.Command("mkfs.btrfs", "-q", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.btrfs (install btrfs-progs): %v\n%s", err, out)
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
