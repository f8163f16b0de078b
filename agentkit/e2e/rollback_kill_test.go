package e2e

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRollbackKills SIGKILLs the agent at random instants of rollbacks (a
// version restored with -existing overwrite over a copy of the tree
// changed since: files replaced, a large file with an insertion rebuilt
// from the one there, deleted files and a directory made again, a hard
// link replaced, objects of other types where the version has files,
// directories and a symlink). After each kill every name there is what
// it was before the rollback or the version's, whole (content, type,
// link target): nothing half-written, nothing lost, no temporary file
// beside one. A rollback run to its end then gives the version. On btrfs
// the large file is rebuilt from a clone of itself (reflinks).
//
// VAULTNODE_ROLLBACK_KILLS kills must land while the rollback runs, 6 by
// default (`make test`).
func TestRollbackKills(t *testing.T) { onExt4AndBtrfs(t, testRollbackKills) }

// tempLeft matches the temporary name a replaced object has for the
// moment between its link and its rename (meta.TempName).
var tempLeft = regexp.MustCompile(`^(.*/)?\.([^/]*)\.vaultnode-tmp$`)

func testRollbackKills(t *testing.T, fstype string) {
	want := envKills(t, "VAULTNODE_ROLLBACK_KILLS", 6)
	e, version, to, root := restoredCopy(t, fstype, 21, 24<<20)
	rollback := []string{"restore", "home@1", "-to", to, "-setid", "-existing", "overwrite"}
	mut := newGen(t, root, 22)
	mut.mutate(0)
	mut.changeTypes()
	start := time.Now()
	if r := e.a.run(rollback...); r.code != 0 {
		t.Fatalf("rollback: %s", r)
	}
	est := time.Since(start)
	compareTrees(t, "rollback run to its end", version, inVersion(version, snapshot(t, root)))

	rnd := rand.New(rand.NewPCG(23, uint64(len(fstype))))
	landed, round := 0, 1
	for ; landed < want; round++ {
		if round > 3*want {
			t.Fatalf("only %d of %d kills landed while the rollback ran (it takes about %v); %d needed", landed, round-1, est, want)
		}
		mut.mutate(round)
		mut.changeTypes()
		before := snapshot(t, root)
		d := time.Duration(float64(est) * (0.1 + 0.9*rnd.Float64()))
		p := startAgentProc(t, e.a, rollback...)
		time.Sleep(d)
		killed := p.kill()
		if killed {
			landed++
		}
		after := snapshot(t, root)
		var bad []string
		for path, a := range after {
			b, wasThere := before[path]
			v, inVersion := version[path]
			if (wasThere && sameWhole(a, b)) || (inVersion && sameWhole(a, v)) {
				continue
			}
			if m := tempLeft.FindStringSubmatch(path); m != nil {
				// Killed between a replacement's link and its rename: the
				// temporary name holds the version's whole object; or
				// between a directory's exchange with the object there
				// and that object's removal: it holds the old one.
				name := m[1] + m[2]
				if v, ok := version[name]; ok && sameWhole(a, v) {
					t.Logf("round %d: %s left, the version's %s whole (killed between its link and its rename)", round, path, name)
					continue
				}
				if b, ok := before[name]; ok && sameWhole(a, b) {
					t.Logf("round %d: %s left, the old %s whole (killed between the exchange and its removal)", round, path, name)
					continue
				}
			}
			bad = append(bad, path+": neither what was there nor the version's ("+a.Type+")")
		}
		for path := range before {
			if _, ok := after[path]; !ok && !tempLeft.MatchString(path) { // a killed run's leftover may be cleared
				bad = append(bad, path+": there before the rollback, gone after the kill")
			}
		}
		if len(bad) > 0 {
			sort.Strings(bad)
			t.Fatalf("round %d, killed %v into a rollback (%v to its end), %d wrong:\n  %s\n%s", round, d, est, len(bad), strings.Join(bad[:min(len(bad), 20)], "\n  "), p.out)
		}
		t.Logf("round %d: killed %v into a rollback: %s; every name old or the version's", round, d, landedWord(killed))
	}
	if r := e.a.run(rollback...); r.code != 0 {
		t.Fatalf("rollback after the kills: %s", r)
	}
	final := snapshot(t, root)
	// A file left under its temporary name is cleared by the rollback
	// that replaces the file (the name is the same on every run); an
	// object exchanged out of a directory's way may stay.
	for path, a := range final {
		if m := tempLeft.FindStringSubmatch(path); m != nil {
			if v := version[m[1]+m[2]]; a.Type == "file" && v.Type == "file" {
				t.Errorf("%s: left by a killed rollback, still there after a rollback to the end", path)
			} else {
				t.Logf("%s (%s) left beside %s (%s)", path, a.Type, m[1]+m[2], v.Type)
			}
		}
	}
	compareTrees(t, "rollback after the kills", version, inVersion(version, final))
	t.Logf("%d kills of %d rounds landed while a rollback ran (about %v to its end)", landed, round-1, est)
}

// changeTypes puts objects of other types at names of the version's tree
// (makeTree's): a file where a directory was, an empty directory where a
// file and a symlink were, a FIFO where a directory was.
func (g *gen) changeTypes() {
	g.t.Helper()
	for _, p := range []string{"empty", "empty.txt", "links/rel", "deep/a/b/c/d/e/f/g"} {
		if err := os.RemoveAll(filepath.Join(g.root, p)); err != nil {
			g.t.Fatal(err)
		}
	}
	g.write("empty", []byte("a file where a directory was\n"), 0o644)
	g.mkdir("empty.txt", 0o755)
	g.mkdir("links/rel", 0o755)
	if err := syscall.Mkfifo(filepath.Join(g.root, "deep/a/b/c/d/e/f/g"), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// sameWhole reports whether a and b are the same object as far as a
// killed restore must keep it whole: type, content, link target. Modes
// and times are set once an object is in place, so a kill may land
// before them.
func sameWhole(a, b entryState) bool {
	return a.Type == b.Type && a.Size == b.Size && a.Sum == b.Sum && a.Target == b.Target
}
