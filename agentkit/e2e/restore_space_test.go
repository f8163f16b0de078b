package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRestoreFullDisk: a restore into a filesystem too small for the
// version lists each file that did not fit, leaves no partial file under a
// version's name, exits 3 and says the filesystem is full and what to do;
// once there is room, the same restore again completes the tree.
func TestRestoreFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: needs root (mounts a tmpfs); CI runs as root")
	}
	e := newEnv(t)
	g := newGen(t, e.src, 41)
	for i := range 12 {
		g.write(fmt.Sprintf("big/%02d.bin", i), g.random(1<<20), 0o644) // incompressible: 12 MiB in all
	}
	for i := range 20 {
		g.write(fmt.Sprintf("small/%02d.txt", i), g.text("small", 2000), 0o644)
	}
	want := snapshot(t, e.src)
	e.a.backup("home")

	mnt := filepath.Join(e.root, "small-fs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	grow := smallFS(t, mnt, "6m")

	r := e.a.run("restore", "home@1", "-to", mnt)
	if r.code != 3 {
		t.Fatalf("restore into a 6 MiB filesystem: want exit 3, got %s", r)
	}
	if !strings.Contains(r.stdout, "no space left on device") {
		t.Errorf("the failed files do not say why:\n%s", r.stdout)
	}
	for _, w := range []string{"the filesystem under " + mnt + " is full", "free space there", "run the restore again"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("the restore's error lacks %q:\n%s", w, r.stderr)
		}
	}
	// What is there under a version's name is the version's, whole.
	got := filepath.Join(mnt, e.src)
	restored := 0
	for _, rel := range g.list("big") {
		b, err := os.ReadFile(filepath.Join(got, rel))
		if os.IsNotExist(err) {
			continue
		}
		src, serr := os.ReadFile(filepath.Join(e.src, rel))
		if err != nil || serr != nil || !bytes.Equal(b, src) {
			t.Errorf("%s in the full filesystem: %d bytes, %v; want the source's %d bytes whole", rel, len(b), err, len(src))
		}
		restored++
	}
	if restored == 0 || restored == 12 {
		t.Fatalf("%d of 12 large files restored into 6 MiB: the test wants some, not all", restored)
	}

	// Room made, the same restore again restores what is missing.
	grow("64m")
	if r := e.a.run("restore", "home@1", "-to", mnt); r.code != 0 {
		t.Fatalf("restore again once there is room: %s", r)
	}
	compareTrees(t, "the restore run again once there was room", want, snapshot(t, got))
}

// smallFS mounts a tmpfs of size (as mount's size= takes it) on dir, which
// must exist, until the test ends, and returns what resizes it, keeping
// its files: the full-disk tests fill it, then make room.
func smallFS(t *testing.T, dir, size string) (grow func(size string)) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs of %s on %s: %v", size, dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return func(size string) {
		t.Helper()
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT, "size="+size+",mode=0700"); err != nil {
			t.Fatalf("resize the tmpfs on %s to %s: %v", dir, size, err)
		}
	}
}
