package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestBackupRestoreVersions backs up a tree, mutates it, backs up again,
// renames a directory, backs up with no change, and restores every version
// to a fresh directory, comparing content, modes and mtimes with what the
// tree was at each backup.
func TestBackupRestoreVersions(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 1)
	g.makeTree(300, 20<<20)

	snaps := map[uint64]map[string]entryState{}
	snaps[1] = snapshot(t, e.src)
	s1 := e.a.backup("home")
	if s1.Version != 1 {
		t.Fatalf("first backup committed version %d", s1.Version)
	}
	if s1.BytesSent < 20<<20 {
		t.Errorf("first backup sent %d bytes, less than the 20 MiB random file", s1.BytesSent)
	}
	t.Logf("v1: %+v", s1)

	g.mutate(2)
	snaps[2] = snapshot(t, e.src)
	s2 := e.a.backup("home")
	t.Logf("v2: %+v", s2)
	if s2.Version != 2 {
		t.Fatalf("second backup committed version %d", s2.Version)
	}
	// 100 KiB inserted in the middle of the large file re-sends its
	// neighbourhood (chunks average 1 MiB, at most 4 MiB), plus small files.
	if s2.BytesSent > 10<<20 {
		t.Errorf("after an insertion of 100 KiB into a 20 MiB file and a few small edits, the backup sent %d bytes", s2.BytesSent)
	}
	// The chunks of the large file that the insertion left as they were
	// are its previous version's: neither copied nor offered to the vault
	// (20 MiB is at least 5 chunks of at most 4 MiB; an insertion rewrites
	// at most the two around it).
	if s2.ChunksReused < 3 {
		t.Errorf("the unchanged chunks of the large file were offered to the vault again (%d reused, %d known)", s2.ChunksReused, s2.ChunksKnown)
	}
	// Only the changed files are read: 5 edits, the large file, 10 new,
	// the one whose mode changed (its ctime moved); not the 30 files of the
	// renamed directory, found by its inode in the previous listing's
	// directory index.
	if s2.FilesRead > 17 {
		t.Errorf("after changing 17 files and renaming a directory of 30 the backup read %d", s2.FilesRead)
	}
	if s2.Deleted == 0 {
		t.Errorf("deletions were not recorded: %+v", s2)
	}

	// A directory rename sends no file data and reads no file, whether the
	// new path comes after the old one in tree order or before it.
	if err := os.Rename(filepath.Join(e.src, "docs/d02"), filepath.Join(e.src, "docs/moved")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(e.src, "docs/d03"), filepath.Join(e.src, "docs/0-moved")); err != nil {
		t.Fatal(err)
	}
	snaps[3] = snapshot(t, e.src)
	s3 := e.a.backup("home")
	t.Logf("v3: %+v", s3)
	if s3.Version != 3 {
		t.Fatalf("third backup committed version %d", s3.Version)
	}
	if s3.BytesSent > 256<<10 {
		t.Errorf("renaming a directory sent %d bytes (want only the listing)", s3.BytesSent)
	}
	if s3.FilesRead != 0 {
		t.Errorf("renaming two directories read %d files, want none", s3.FilesRead)
	}

	// No change: nothing read, (almost) nothing sent.
	snaps[4] = snapshot(t, e.src)
	s4 := e.a.backup("home")
	t.Logf("v4: %+v", s4)
	if s4.FilesRead != 0 {
		t.Errorf("a backup with no change read %d files", s4.FilesRead)
	}
	if s4.BytesSent > 64<<10 {
		t.Errorf("a backup with no change sent %d bytes", s4.BytesSent)
	}

	for v := uint64(1); v <= 4; v++ {
		dir, r := e.restore(v)
		if r.code != 0 {
			t.Errorf("restore home@%d: %s", v, r)
			continue
		}
		compareTrees(t, fmt.Sprintf("restore of home@%d", v), snaps[v], snapshot(t, dir))
		// Holes stay holes.
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, "sparse/holes.img"), &st); err == nil && st.Blocks*512 > 16<<20 {
			t.Errorf("home@%d: the 64 MiB sparse file with 1.1 MiB of data restored with %d bytes allocated", v, st.Blocks*512)
		}
	}

	// One file of an old version, by its absolute path, after it was deleted.
	var gone string
	for p, s := range snaps[1] {
		if _, ok := snaps[4][p]; !ok && s.Type == "file" {
			gone = p
			break
		}
	}
	if gone == "" {
		t.Fatal("no file deleted between v1 and v4")
	}
	to := filepath.Join(e.root, "single")
	if r := e.a.run("restore", "home@1:"+filepath.Join(e.src, gone), "-to", to, "-setid"); r.code != 0 {
		t.Fatalf("restore of one deleted file: %s", r)
	}
	got := snapshot(t, filepath.Join(to, e.src))
	if s, ok := got[gone]; !ok || s.Sum != snaps[1][gone].Sum {
		t.Errorf("restore home@1:%s did not bring back the file's content (got %v)", gone, sortedKeys(got))
	}

	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("vaultctl verify after the backups: %s", r)
	}
	// vaultctl sees the versions.
	out := e.v.mustCtl("versions", e.comp, "home")
	for v := 1; v <= 4; v++ {
		if !strings.Contains(out, fmt.Sprintf("home@%d", v)) {
			t.Errorf("vaultctl versions does not list home@%d:\n%s", v, out)
		}
	}
	// A clean shutdown and restart keeps everything.
	e.v.stop()
	e.v.start()
	dir, r := e.restore(2)
	if r.code != 0 {
		t.Fatalf("restore after a vault restart: %s", r)
	}
	compareTrees(t, "restore of home@2 after a vault restart", snaps[2], snapshot(t, dir))
}

func sortedKeys(m map[string]entryState) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
