package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// junk writes n small files of random bytes under dir: one chunk each,
// garbage once they are gone and pruned.
func (g *gen) junk(dir string, n int) {
	for i := 0; i < n; i++ {
		g.write(fmt.Sprintf("%s/j%05d.bin", dir, i), g.random(2048+g.r.IntN(2048)), 0o644)
	}
	g.setTimes()
}

// leaderCtl runs vaultctl on whichever data member leads, again on the
// new leader when leadership moved meanwhile (a loaded machine misses a
// heartbeat now and then); it answers the output and the member.
func (p *pairEnv) leaderCtl(args ...string) (string, *vaultProc) {
	p.t.Helper()
	var out string
	var lead *vaultProc
	until(p.t, fmt.Sprintf("vaultctl %v on the leader", args), func() bool {
		if lead = p.leader(); lead == nil {
			return false
		}
		r := lead.ctl(args...)
		if r.code != 0 && (strings.Contains(r.stderr, "does not lead") || strings.Contains(r.stderr, "not the leader")) {
			return false
		}
		if r.code != 0 {
			p.t.Fatalf("vaultctl %v on %s: %s", args, lead.dir, r)
		}
		out = r.stdout
		return true
	})
	return out, lead
}

// others is the data member that is not m.
func (p *pairEnv) other(m *vaultProc) *vaultProc {
	if m == p.a {
		return p.b
	}
	return p.a
}

// collectPair runs a collection on the leader and answers how many chunks
// it swept, and the leader.
func collectPair(t *testing.T, p *pairEnv) (int, *vaultProc) {
	t.Helper()
	out, lead := p.leaderCtl("collect")
	m := collectedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("vaultctl collect printed %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n, lead
}

func (v *vaultProc) storeBytes() int64 { st, _ := v.pairStatus(); return st.StoreBytes }

// shrunkToMatch waits until the follower's packs are within 10 % (and 1
// MiB) of the leader's after a collection.
func shrunkToMatch(t *testing.T, lead, fol *vaultProc) {
	t.Helper()
	until(t, fol.dir+"'s packs to shrink to the leader's", func() bool {
		l, f := lead.storeBytes(), fol.storeBytes()
		return l > 0 && f > 0 && f <= l+l/10+1<<20
	})
}

// TestPairCollect: garbage collection on the pair's leader sweeps the
// follower too, through the log. After backups, a prune and a collection
// the follower's packs shrink to the leader's; verify is clean on each and
// the retained version restores from each member alone. Then the follower
// is killed (SIGKILL, by itself: VAULTNODE_TEST_CRASH_SWEEP) in the middle
// of applying the next sweep: it restarts, replays the entry, finishes the
// deletion and again verifies and restores alone.
func TestPairCollect(t *testing.T) {
	p := newPair(t, nil)
	p.leaderCtl("retention", "acme", "last 1")
	g := newGen(t, p.src, 18)
	g.makeTree(100, 2<<20)
	s1 := p.env.a.backup("home") // the first version: retention keeps it
	want := map[uint64]map[string]entryState{s1.Version: snapshot(t, p.src)}
	g.junk("junk1", 1500)
	p.env.a.backup("home")
	os.RemoveAll(filepath.Join(p.src, "junk1"))
	g.write("big/large.bin", g.random(2<<20), 0o644)
	g.setTimes()
	s3 := p.env.a.backup("home")
	want[s3.Version] = snapshot(t, p.src)
	if out, _ := p.leaderCtl("prune"); !strings.Contains(out, "pruned 1 versions") {
		t.Fatalf("prune: %s", out)
	}
	aBefore, bBefore := p.a.storeBytes(), p.b.storeBytes()
	swept, lead := collectPair(t, p)
	if swept < 1500 {
		t.Fatalf("the collection swept %d chunks; the pruned version alone held 1500 more", swept)
	}
	fol := p.other(lead)
	shrunkToMatch(t, lead, fol)
	t.Logf("swept %d chunks: a %d -> %d bytes, b %d -> %d", swept, aBefore, p.a.storeBytes(), bBefore, p.b.storeBytes())
	if d, l := bBefore-p.b.storeBytes(), aBefore-p.a.storeBytes(); d < l/2 || l < d/2 {
		t.Fatalf("the members gave back %d (a) and %d (b) bytes", l, d)
	}
	p.leaderCtl("verify")
	p.verifyRestoreAlone(fol, want) // fol leads from here

	// The follower dies in the middle of the next sweep.
	fol = p.other(fol)
	fol.kill()
	fol.env = []string{"VAULTNODE_TEST_CRASH_SWEEP=1"}
	fol.start()
	until(t, "the pair whole", func() bool { l := p.leader(); return l != nil && l.whole(3) })
	g.junk("junk2", 2500)
	p.env.a.backup("home")
	os.RemoveAll(filepath.Join(p.src, "junk2"))
	g.mutate(1)
	g.setTimes()
	s5 := p.env.a.backup("home")
	want = map[uint64]map[string]entryState{s1.Version: want[s1.Version], s5.Version: snapshot(t, p.src)}
	p.leaderCtl("prune")
	if swept, lead = collectPair(t, p); swept < 2500 || lead == fol {
		t.Fatalf("the collection swept %d chunks on %s; the pruned version held 2500 more", swept, lead.dir)
	}
	select {
	case <-fol.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the follower did not crash in its sweep within 2 minutes")
	}
	fol.cmd = nil
	if b, _ := os.ReadFile(fol.log.Name()); !strings.Contains(string(b), "crashing in the middle of a sweep") {
		t.Fatalf("the follower did not die in its sweep:\n%s", b)
	}
	fol.env = nil
	fol.start()
	until(t, "the pair whole", func() bool { l := p.leader(); return l != nil && l.whole(3) })
	shrunkToMatch(t, p.other(fol), fol)
	p.leaderCtl("verify")
	p.verifyRestoreAlone(fol, want)
}

// verifyRestoreAlone stops the other data member: m leads, verifies
// clean and restores every version of want alone; then the other starts
// again as a follower.
func (p *pairEnv) verifyRestoreAlone(m *vaultProc, want map[uint64]map[string]entryState) {
	t := p.t
	t.Helper()
	other := p.other(m)
	other.kill()
	until(t, m.dir+" to lead", func() bool { st, ok := m.pairStatus(); return ok && st.State == "Leader" })
	if r := m.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on %s: %s", m.dir, r)
	}
	p.restoreAll(filepath.Base(m.dir), want)
	other.start()
	until(t, "the pair whole again", func() bool { return m.whole(3) })
}
