package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestRestoreFS: a restore's filesystem is a fresh ext4 (or btrfs) of its
// own (not the work directory's), writable where the tool restores; Close leaves
// nothing behind; and a filesystem a killed run left mounted is taken
// down by the next run's clean.
func TestRestoreFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: mounting a filesystem needs root (CI runs as root)")
	}
	for _, p := range []string{"mkfs.ext4", "mount", "findmnt", "losetup"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("SKIPPED LOUDLY: %s: %v", p, err)
		}
	}
	work := t.TempDir()
	f, err := newRestoreFS(work, "vaultnode", "ext4", restoreFSSize(10<<20, 10<<20, 1000))
	if err != nil {
		t.Fatal(err)
	}
	var inWork, inFS syscall.Stat_t
	if err := syscall.Stat(work, &inWork); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(f.Dir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.Dir(), "a"), []byte("restored"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(f.Dir(), &inFS); err != nil {
		t.Fatal(err)
	}
	if inFS.Dev == inWork.Dev {
		t.Fatalf("the restore directory %s is on the work directory's filesystem", f.Dir())
	}
	if ents, _ := os.ReadDir(f.mnt); len(ents) != 2 { // lost+found and restore
		t.Errorf("a fresh filesystem holds %d entries at its root, want lost+found and restore", len(ents))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("after Close the work directory holds %v", ents)
	}
	// -restore-fstype btrfs: a btrfs, for rollbacks that clone.
	g, err := newRestoreFS(work, "vaultnode", "btrfs", 10<<20) // made larger: mkfs.btrfs's least
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(g.mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != 0x9123683e { // BTRFS_SUPER_MAGIC
		t.Errorf("-restore-fstype btrfs made a filesystem of type %#x", st.Type)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := newRestoreFS(work, "vaultnode", "vfat", 300<<20); err == nil {
		t.Errorf("an unknown filesystem type was accepted")
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("after Close the work directory holds %v", ents)
	}
	// A run killed during its restore leaves the filesystem mounted: the
	// next run's clean unmounts it and removes the image.
	if _, err := newRestoreFS(work, "restic", "ext4", 1<<30); err != nil {
		t.Fatal(err)
	}
	b := &bench{work: work}
	if err := b.clean(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("after clean the work directory holds %v", ents)
	}
}
