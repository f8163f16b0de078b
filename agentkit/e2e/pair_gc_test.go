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

// collectPair runs a collection on the leader and answers how many chunks
// it swept.
func collectPair(t *testing.T, lead *vaultProc) int {
	t.Helper()
	out := lead.mustCtl("collect")
	m := collectedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("vaultctl collect printed %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
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
	p.a.mustCtl("retention", "acme", "last 1")
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
	if out := p.a.mustCtl("prune"); !strings.Contains(out, "pruned 1 versions") {
		t.Fatalf("prune: %s", out)
	}
	aBefore, bBefore := p.a.storeBytes(), p.b.storeBytes()
	swept := collectPair(t, p.a)
	if swept < 1500 {
		t.Fatalf("the collection swept %d chunks; the pruned version alone held 1500 more", swept)
	}
	shrunkToMatch(t, p.a, p.b)
	t.Logf("swept %d chunks: leader %d -> %d bytes, follower %d -> %d", swept, aBefore, p.a.storeBytes(), bBefore, p.b.storeBytes())
	if b := p.b.storeBytes(); bBefore-b < (aBefore-p.a.storeBytes())/2 {
		t.Fatalf("the follower gave back %d bytes, the leader %d", bBefore-b, aBefore-p.a.storeBytes())
	}
	if r := p.a.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on the leader: %s", r)
	}
	p.verifyRestoreAlone(p.b, want) // b leads from here

	// The follower (a now) dies in the middle of the next sweep.
	lead, fol := p.b, p.a
	fol.kill()
	fol.env = []string{"VAULTNODE_TEST_CRASH_SWEEP=1"}
	fol.start()
	until(t, "the pair whole", func() bool { return lead.whole(3) })
	g.junk("junk2", 2500)
	p.env.a.backup("home")
	os.RemoveAll(filepath.Join(p.src, "junk2"))
	g.mutate(1)
	g.setTimes()
	s5 := p.env.a.backup("home")
	want = map[uint64]map[string]entryState{s1.Version: want[s1.Version], s5.Version: snapshot(t, p.src)}
	lead.mustCtl("prune")
	if swept := collectPair(t, lead); swept < 2500 {
		t.Fatalf("the collection swept %d chunks; the pruned version held 2500 more", swept)
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
	until(t, "the pair whole", func() bool { return lead.whole(3) })
	shrunkToMatch(t, lead, fol)
	if r := lead.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on the leader: %s", r)
	}
	p.verifyRestoreAlone(fol, want)
}

// verifyRestoreAlone stops the other data member: m leads, verifies
// clean and restores every version of want alone; then the other starts
// again as a follower.
func (p *pairEnv) verifyRestoreAlone(m *vaultProc, want map[uint64]map[string]entryState) {
	t := p.t
	t.Helper()
	other := p.a
	if m == p.a {
		other = p.b
	}
	other.kill()
	until(t, m.dir+" to lead", func() bool { st, ok := m.pairStatus(); return ok && st.State == "Leader" })
	if r := m.ctl("verify"); r.code != 0 {
		t.Fatalf("verify on %s: %s", m.dir, r)
	}
	p.restoreAll(filepath.Base(m.dir), want)
	other.start()
	until(t, "the pair whole again", func() bool { return m.whole(3) })
}
