package e2e

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"vaultnode/internal/keys"
	"vaultnode/internal/pack"
)

// mustRestoreAll restores each version and compares it with its snapshot.
func (e *env) mustRestoreAll(snaps map[uint64]map[string]entryState) {
	e.t.Helper()
	for v, want := range snaps {
		dir, r := e.restore(v)
		if r.code != 0 {
			e.t.Fatalf("restore home@%d: %s", v, r)
		}
		compareTrees(e.t, "restore", want, snapshot(e.t, dir))
	}
}

func copyIndex(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestIndexLoss: the index deleted, or rolled back to a copy taken between
// two backups, loses nothing: vaultd rebuilds what it lacks from the packs
// on start, every pack survives, verify is clean and every version
// restores. `vaultctl rebuild-index` refuses a running vault and rebuilds
// a stopped one.
func TestIndexLoss(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 11)
	g.makeTree(60, 3<<20)
	snaps := map[uint64]map[string]entryState{}
	snaps[e.a.backup("home").Version] = snapshot(t, e.src)
	index := filepath.Join(e.v.dir, "index.db")
	old := filepath.Join(e.root, "index-v1.db")
	e.v.stop()
	copyIndex(t, index, old)
	e.v.start()
	g.mutate(1)
	snaps[e.a.backup("home").Version] = snapshot(t, e.src)
	packs := countPacks(t, e.v.dir)

	// Deleted.
	e.v.stop()
	if err := os.Remove(index); err != nil {
		t.Fatal(err)
	}
	e.v.start()
	if n := countPacks(t, e.v.dir); n != packs {
		t.Fatalf("%d packs after a start without index.db, want %d", n, packs)
	}
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("verify after the index was rebuilt on start: %s", r)
	}
	e.mustRestoreAll(snaps)

	// Rolled back to the copy taken after the first version.
	e.v.stop()
	copyIndex(t, old, index)
	e.v.start()
	if n := countPacks(t, e.v.dir); n != packs {
		t.Fatalf("%d packs after a start on an older index, want %d", n, packs)
	}
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("verify after a start on an older index: %s", r)
	}
	e.mustRestoreAll(snaps)
	g.mutate(2)
	snaps[e.a.backup("home").Version] = snapshot(t, e.src)

	// vaultctl rebuild-index: refused while vaultd runs, done when stopped.
	if r := e.v.ctl("rebuild-index"); r.code == 0 || !strings.Contains(r.stderr, "running") {
		t.Fatalf("rebuild-index on a running vault: want a refusal saying it runs; got %s", r)
	}
	e.v.stop()
	r := e.v.ctl("rebuild-index")
	if r.code != 0 || !strings.Contains(r.stdout, "index rebuilt from") {
		t.Fatalf("rebuild-index: %s", r)
	}
	e.v.start()
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("verify after rebuild-index: %s", r)
	}
	e.mustRestoreAll(snaps)
	if n := countPacks(t, e.v.dir); n < packs {
		t.Fatalf("%d packs after rebuild-index, want at least %d", n, packs)
	}
}

func countPacks(t *testing.T, vaultDir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(vaultDir, "packs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".pack") {
			n++
		}
		return err
	})
	return n
}

// TestDamageHeals: one flipped byte in a chunk of a file that does not
// change: verify names and quarantines it, the next backup sends it again
// (the agent's cache says the vault has it; the vault's commit says it
// lacks it), verify is clean and reports the heal, and every version
// restores identical.
func TestDamageHeals(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 12)
	g.makeTree(60, 3<<20)
	snaps := map[uint64]map[string]entryState{}
	snaps[e.a.backup("home").Version] = snapshot(t, e.src)

	const victim = "docs/d03/f013.txt"
	content, err := os.ReadFile(filepath.Join(e.src, victim))
	if err != nil || len(content) < 100 {
		t.Fatalf("victim file: %d bytes, %v", len(content), err)
	}
	_, comp := agentClient(t, e.a.state)
	id := [32]byte(keys.NewHasher([32]byte(comp.ChunkKey)).Sum(content))
	chunk := hex.EncodeToString(id[:])
	loc := findEntry(t, e.v.dir, id)
	flipByte(t, loc.path, loc.offset+pack.EntryHeaderSize+int64(loc.bodyLen)/2)

	r := e.v.ctl("verify")
	if r.code != 3 || !strings.Contains(r.stdout, "QUARANTINED acme chunk "+chunk+" (newly quarantined") {
		t.Fatalf("verify of a flipped byte: want exit 3 and the chunk newly quarantined; got %s", r)
	}
	// Until then a restore of the file says what is wrong.
	to := filepath.Join(e.root, "before-heal")
	if r := e.a.run("restore", "home@1:"+filepath.Join(e.src, victim), "-to", to); r.code == 0 ||
		!strings.Contains(r.stdout+r.stderr, "damaged") || !strings.Contains(r.stdout+r.stderr, "quarantined") {
		t.Fatalf("restore of the quarantined file: want a failure saying it is damaged and quarantined; got %s", r)
	}
	// Nothing changed in the source: the agent's cache says every chunk is
	// stored; the backup must send the damaged one all the same.
	s := e.a.backup("home")
	if s.ChunksSent < 1 {
		t.Fatalf("the backup after the damage sent %d chunks: the good copy was never asked for", s.ChunksSent)
	}
	snaps[s.Version] = snapshot(t, e.src)
	r = e.v.ctl("verify")
	if r.code != 0 || !strings.Contains(r.stdout, "HEALED acme chunk "+chunk) || strings.Contains(r.stdout, "QUARANTINED") {
		t.Fatalf("verify after the healing backup: want exit 0 reporting the heal; got %s", r)
	}
	e.mustRestoreAll(snaps)
	if r := e.v.ctl("verify"); r.code != 0 || strings.Contains(r.stdout, "HEALED") {
		t.Fatalf("a second verify: want exit 0 and no heal reported again; got %s", r)
	}
}
