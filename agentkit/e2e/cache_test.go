package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestLostListingCache: an agent whose listing cache is gone (its state
// directory restored from an older copy, the cache removed) fetches the
// newest version's listing from the vault instead of reading every file
// again; a file changed meanwhile is still read, and every version restores
// as the tree was. A cache the agent cannot read is replaced the same way.
func TestLostListingCache(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 7)
	g.makeTree(200, 6<<20)
	time.Sleep(50 * time.Millisecond) // past the racy margin of the files' ctimes
	snaps := map[uint64]map[string]entryState{1: snapshot(t, e.src)}
	s1 := e.a.backup("home")
	if s1.FilesRead < 200 {
		t.Fatalf("first backup read %d files", s1.FilesRead)
	}
	cache := filepath.Join(e.a.state, "configs", "home")
	lose := func() {
		t.Helper()
		for _, name := range []string{"last.listing", "last.json", "dirs.index"} {
			if err := os.Remove(filepath.Join(cache, name)); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
	}

	lose()
	snaps[2] = snapshot(t, e.src)
	s2 := e.a.backup("home")
	if s2.Version != 2 || s2.FilesRead != 0 || s2.ChunksSent > 4 {
		t.Errorf("without its cache, a backup of an unchanged tree: version %d, read %d files, sent %d chunks; want 2, none, the listing's",
			s2.Version, s2.FilesRead, s2.ChunksSent)
	}
	if _, err := os.Stat(filepath.Join(cache, "last.listing")); err != nil {
		t.Errorf("no listing cache after the backup: %v", err)
	}

	// A changed file is found against the fetched listing.
	changed := filepath.Join(e.src, "docs/d03/f003.txt")
	if err := os.WriteFile(changed, []byte("changed while the cache was lost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	lose()
	snaps[3] = snapshot(t, e.src)
	s3 := e.a.backup("home")
	if s3.Version != 3 || s3.FilesRead != 1 {
		t.Errorf("without its cache, after one file changed: version %d, read %d files; want 3, one", s3.Version, s3.FilesRead)
	}

	// A cache the agent cannot read is fetched again too.
	time.Sleep(50 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(cache, "last.listing"), []byte("not a listing"), 0o600); err != nil {
		t.Fatal(err)
	}
	snaps[4] = snapshot(t, e.src)
	if s4 := e.a.backup("home"); s4.Version != 4 || s4.FilesRead != 0 {
		t.Errorf("with an unreadable cache: version %d, read %d files; want 4, none", s4.Version, s4.FilesRead)
	}

	e.mustRestoreAll(snaps)
}

// TestVaultRolledBack: the vault is put back to a copy of its data taken
// after the first version, so the agent's cache names chunks the vault never
// had; the commit fails with missing_chunk, and the agent synchronizes again
// against the vault's newest version instead of reading every file. The
// version restores as the tree was, and so does the first.
func TestVaultRolledBack(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 8)
	g.makeTree(200, 3<<20)
	time.Sleep(50 * time.Millisecond)
	snap1 := snapshot(t, e.src)
	if s := e.a.backup("home"); s.Version != 1 {
		t.Fatalf("first backup committed version %d", s.Version)
	}
	e.v.stop()
	old := filepath.Join(e.root, "vault-after-1")
	if out, err := exec.Command("cp", "-a", e.v.dir, old).CombinedOutput(); err != nil {
		t.Fatalf("copy the vault's data: %v: %s", err, out)
	}
	e.v.start()
	for round := 2; round <= 3; round++ {
		g.mutate(round)
		time.Sleep(50 * time.Millisecond)
		if s := e.a.backup("home"); s.Version != uint64(round) {
			t.Fatalf("backup %d committed version %d", round, s.Version)
		}
	}
	e.v.stop()
	if err := os.RemoveAll(e.v.dir); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", old, e.v.dir).CombinedOutput(); err != nil {
		t.Fatalf("put the old copy back: %v: %s", err, out)
	}
	e.v.start()

	snap2 := snapshot(t, e.src)
	s := e.a.backup("home")
	t.Logf("after the roll-back: %+v", s)
	if s.Version != 2 {
		t.Errorf("after the vault went back to version 1, the backup committed version %d, want 2", s.Version)
	}
	// The files mutate left alone are version 1's: not read again. (Without
	// the vault's listing every one of them was.)
	if s.FilesRead >= s.Files/2 {
		t.Errorf("the backup against the vault's version 1 read %d of %d files", s.FilesRead, s.Files)
	}
	e.mustRestoreAll(map[uint64]map[string]entryState{1: snap1, 2: snap2})
}
