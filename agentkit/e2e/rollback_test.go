package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"vaultnode/internal/loopfs"
)

// TestRollbackOverExistingTree: a version restored with -existing
// overwrite over a copy of the tree that was changed since (edits, an
// insertion in the large file, deletions, a mode change) comes back as the
// version was; the files the changes did not touch are kept where they
// are (the agent reads them, downloads nothing for them), and the large
// file's part before the insertion is copied from the file there.
//
// On btrfs the large file, replaced, starts as a clone of itself
// (reflinks: agentkit/restore, finishClone).
func TestRollbackOverExistingTree(t *testing.T) { onExt4AndBtrfs(t, testRollbackOverExistingTree) }

// onExt4AndBtrfs runs a rollback test on the root filesystem (ext4 here,
// no reflinks) and on a new btrfs (reflinks).
func onExt4AndBtrfs(t *testing.T, test func(t *testing.T, fstype string)) {
	t.Run("ext4", func(t *testing.T) { test(t, "") })
	t.Run("btrfs", func(t *testing.T) { test(t, "btrfs") })
}

// restoredCopy backs up makeTree's tree (seed, a large file of large
// bytes) as home@1 and restores it into a directory on the root
// filesystem, or on a new filesystem of type fstype; it returns the
// environment, the tree as backed up, the restore's -to directory and
// the copy's root beneath it.
func restoredCopy(t *testing.T, fstype string, seed uint64, large int) (e *env, version map[string]entryState, to, root string) {
	t.Helper()
	e = newEnv(t)
	newGen(t, e.src, seed).makeTree(200, large)
	version = snapshot(t, e.src)
	e.a.backup("home")
	to = filepath.Join(e.root, "restore")
	if fstype != "" {
		to = filepath.Join(loopfs.Mount(t, t.TempDir(), fstype, 768<<20), "restore")
	}
	// -setid: the corpus holds a setgid file (the tests run as root).
	if r := e.a.run("restore", "home@1", "-to", to, "-setid"); r.code != 0 {
		t.Fatalf("restore: %s", r)
	}
	// restore's -to: the source's path is recreated under it.
	return e, version, to, filepath.Join(to, e.src)
}

// inVersion drops from s what version lacks (added since: a restore does
// not remove it) and returns s.
func inVersion(version, s map[string]entryState) map[string]entryState {
	for p := range s {
		if _, ok := version[p]; !ok {
			delete(s, p)
		}
	}
	return s
}

func testRollbackOverExistingTree(t *testing.T, fstype string) {
	e, want, to, root := restoredCopy(t, fstype, 11, 6<<20)
	// A day of changes on the restored copy, then the rollback.
	newGen(t, root, 12).mutate(1)
	r := e.a.run("restore", "home@1", "-to", to, "-setid", "-existing", "overwrite")
	if r.code != 0 {
		t.Fatalf("restore -existing overwrite: %s", r)
	}
	compareTrees(t, "rollback", want, inVersion(want, snapshot(t, root)))
	m := regexp.MustCompile(`(\d+) of them were there with their content .*; (\S+ \S+) of the others copied`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no line on what was there in the output:\n%s", r.stdout)
	}
	kept, _ := strconv.Atoi(m[1])
	// 200 small files and a dozen others; the mutation edits 5, deletes
	// up to 5 and a directory of about 20, changes one's mode and
	// inserts into the large file; the hard links are rewritten.
	if kept < 150 {
		t.Errorf("%d files kept where they were, want most of the %d", kept, len(want))
	}
	if m[2] == "0 B" {
		t.Errorf("nothing copied from the files there (the large file's first half is there)")
	}
	fmt.Fprintln(os.Stderr, "rollback:", m[0])
}
