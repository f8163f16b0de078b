package snapshot

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"vaultnode/internal/loopfs"
	"vaultnode/internal/wire"
)

func btrfs(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("btrfs", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestTakeMapsRootsAndReleases(t *testing.T) {
	mnt := loopfs.MountBtrfs(t, t.TempDir(), 300<<20)
	btrfs(t, "subvolume", "create", filepath.Join(mnt, "home"))
	write(t, filepath.Join(mnt, "etc/app.conf"), "top v1")
	write(t, filepath.Join(mnt, "home/alice/doc.txt"), "doc v1")
	write(t, filepath.Join(mnt, "home/bob/notes.txt"), "notes v1")

	roots := []string{filepath.Join(mnt, "etc"), filepath.Join(mnt, "home/alice"), filepath.Join(mnt, "home/bob"), filepath.Join(mnt, "etc/app.conf")}
	s, err := Take(wire.SnapshotBtrfs, "cfg1", roots, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.Paths()); got != 2 {
		t.Errorf("snapshots of 4 roots in 2 subvolumes: %d (%v)", got, s.Paths())
	}
	// The live files change after the snapshot; the snapshot keeps the instant.
	write(t, filepath.Join(mnt, "etc/app.conf"), "top v2")
	write(t, filepath.Join(mnt, "home/alice/doc.txt"), "doc v2")
	tests := []struct{ root, file, want string }{
		{roots[0], "app.conf", "top v1"},
		{roots[1], "doc.txt", "doc v1"},
		{roots[2], "notes.txt", "notes v1"},
		{roots[3], "", "top v1"}, // a file as a root
	}
	for _, tc := range tests {
		src := s.SourceOf(tc.root)
		if src == tc.root {
			t.Errorf("SourceOf(%s) is the root itself", tc.root)
			continue
		}
		if !strings.Contains(src, Prefix+"cfg1.") {
			t.Errorf("SourceOf(%s) = %s, not in a snapshot of cfg1", tc.root, src)
		}
		if got := read(t, filepath.Join(src, tc.file)); got != tc.want {
			t.Errorf("%s in the snapshot: %q, want %q", tc.file, got, tc.want)
		}
	}
	// Read-only.
	if err := os.WriteFile(filepath.Join(s.SourceOf(roots[1]), "doc.txt"), []byte("x"), 0o644); err == nil {
		t.Error("the snapshot is writable")
	}
	if got := s.SourceOf("/elsewhere"); got != "/elsewhere" {
		t.Errorf("SourceOf of an unknown path: %s", got)
	}
	if ex := s.Excludes(); len(ex) != 2 || !strings.HasSuffix(ex[0], Prefix+"*") {
		t.Errorf("Excludes: %v", ex)
	}
	paths := s.Paths()
	if err := s.Release(); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("snapshot %s still there after Release: %v", p, err)
		}
	}
	if err := s.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if out := btrfs(t, "subvolume", "list", mnt); strings.Contains(out, Prefix) {
		t.Errorf("btrfs still lists a snapshot:\n%s", out)
	}
}

// A crash leaves a snapshot; the next Take of the same configuration
// deletes it, and leaves other configurations' snapshots alone.
func TestStaleSnapshotsCleaned(t *testing.T) {
	mnt := loopfs.MountBtrfs(t, t.TempDir(), 300<<20)
	write(t, filepath.Join(mnt, "data/f"), "x")
	// what a killed agent leaves: its own name form, made by btrfs-progs
	btrfs(t, "subvolume", "snapshot", "-r", mnt, filepath.Join(mnt, Prefix+"cfg1.1700000000000000000"))
	btrfs(t, "subvolume", "snapshot", "-r", mnt, filepath.Join(mnt, Prefix+"other.1700000000000000000"))
	s, err := Take(wire.SnapshotBtrfs, "cfg1", []string{filepath.Join(mnt, "data")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, Prefix+"cfg1.1700000000000000000")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale snapshot of cfg1 not deleted: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, Prefix+"other.1700000000000000000")); err != nil {
		t.Errorf("another configuration's snapshot was touched: %v", err)
	}
	if err := s.Release(); err != nil {
		t.Fatal(err)
	}
	if err := CleanStale(mnt, "other", nil); err != nil {
		t.Fatal(err)
	}
	if out := btrfs(t, "subvolume", "list", mnt); strings.Contains(out, Prefix) {
		t.Errorf("btrfs still lists a snapshot:\n%s", out)
	}
}

func TestOtherFilesystemIsAnError(t *testing.T) {
	dir := t.TempDir() // ext4 or tmpfs here, never btrfs
	if sv, err := Subvolume(dir); err == nil {
		t.Skipf("SKIPPED LOUDLY: %s is on btrfs (subvolume %s); this test needs a non-btrfs temp dir", dir, sv)
	}
	_, err := Take(wire.SnapshotBtrfs, "cfg", []string{dir}, nil)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Take on a non-btrfs directory: %v, want ErrUnsupported", err)
	}
	if !strings.Contains(err.Error(), "remove -snapshot") {
		t.Errorf("the error does not say what to do: %v", err)
	}
	if _, err := Take("lvm", "cfg", []string{dir}, nil); err == nil {
		t.Error("Take with an unknown kind succeeded")
	}
}

func TestIsStaleName(t *testing.T) {
	tests := []struct {
		name, config string
		want         bool
	}{
		{Prefix + "home.1700000000000000000", "home", true},
		{Prefix + "home.x", "home", false},
		{Prefix + "home2.1700000000000000000", "home", false},
		{Prefix + "home.1.2", "home", false},
		{"home.1700000000000000000", "home", false},
	}
	for _, tc := range tests {
		if got := IsStaleName(tc.name, tc.config); got != tc.want {
			t.Errorf("IsStaleName(%q, %q) = %v", tc.name, tc.config, got)
		}
	}
}
