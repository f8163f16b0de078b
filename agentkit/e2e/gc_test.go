package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// gcKills is how many SIGKILLs of vaultd TestCollectKills must land while
// a garbage collection runs: VAULTNODE_GC_KILLS, 5 by default (`make
// test`); `make soak` asks for 60.
func gcKills(t *testing.T) int { return envKills(t, "VAULTNODE_GC_KILLS", 5) }

// gcComputer is one enrolled agent protecting its own tree.
type gcComputer struct {
	a     *agent
	comp  string
	src   string
	g     *gen
	snaps map[uint64]map[string]entryState // retained versions: the tree each was taken from
}

var (
	collectedRE   = regexp.MustCompile(`: (\d+) of (\d+) chunks swept`)
	interruptedRE = regexp.MustCompile(`(?m)^collect-\S+\s+collect\s+interrupted`)
)

// TestCollectKills: several computers back up while versions are pruned
// and garbage is collected again and again, and vaultd is SIGKILLed at
// random instants of the collections (marking, sweeping, rewriting packs).
// A kill counts when the collection's job is found interrupted at the
// restart. After every restart verify is clean; at the end every retained
// version restores identical to the tree it was taken from, and after two
// whole collections a third finds nothing to sweep.
func TestCollectKills(t *testing.T) {
	want := gcKills(t)
	e := newEnv(t)
	e.v.mustCtl("retention", "acme", "last 3")
	rs := uint64(time.Now().UnixNano())
	t.Logf("random instants seeded with %d", rs)
	rnd := rand.New(rand.NewPCG(rs, 11))
	var cs []*gcComputer
	for i := 0; i < 3; i++ {
		c := &gcComputer{snaps: map[uint64]map[string]entryState{}}
		if i == 0 {
			c.a, c.comp, c.src = e.a, e.comp, e.src
		} else {
			c.src = filepath.Join(e.root, fmt.Sprintf("src%d", i))
			c.a = &agent{t: t, state: filepath.Join(e.root, fmt.Sprintf("agent%d", i))}
			out := c.a.must("enroll", "-vault", e.v.addr, "-token", e.v.token("acme"), "-name", fmt.Sprintf("pc%d", i+1))
			f := strings.Fields(out)
			if len(f) < 3 || f[0] != "enrolled" {
				t.Fatalf("enroll printed %q", out)
			}
			c.comp = f[2]
			c.a.must("config", "set", "home", "-path", c.src)
		}
		c.g = newGen(t, c.src, uint64(20+i))
		c.g.makeTree(80, 3<<20)
		c.g.write("bulk/base.bin", c.g.random(4<<20), 0o644)
		c.g.setTimes()
		cs = append(cs, c)
	}
	// account records the versions listed now and forgets pruned ones.
	account := func(c *gcComputer, snap map[string]entryState) {
		t.Helper()
		out := e.v.mustCtl("versions", c.comp, "home")
		listed := map[uint64]bool{}
		for _, m := range versionRE.FindAllStringSubmatch(out, -1) {
			seq, _ := strconv.ParseUint(m[1], 10, 64)
			listed[seq] = true
			if _, ok := c.snaps[seq]; !ok {
				if snap == nil {
					t.Fatalf("%s: version %d appeared with no backup running", c.comp, seq)
				}
				c.snaps[seq] = snap
			}
		}
		for seq := range c.snaps {
			if !listed[seq] {
				delete(c.snaps, seq)
			}
		}
	}
	est := 300 * time.Millisecond // aim of the kills: adjusted after each round
	landed, rounds, started := 0, 0, 0
	for landed < want {
		rounds++
		if rounds > 6*want+10 {
			t.Fatalf("only %d of %d kills landed during a collection in %d rounds", landed, want, rounds)
		}
		// Backups of every computer, with fresh data, run throughout.
		type running struct {
			cmd  *exec.Cmd
			out  *bytes.Buffer
			done chan struct{}
			snap map[string]entryState
		}
		var bs []running
		for _, c := range cs {
			c.g.mutate(rounds)
			c.g.write(fmt.Sprintf("bulk/r%d.bin", rounds), c.g.random(1<<20+rnd.IntN(2<<20)), 0o644)
			snap := snapshot(t, c.src)
			cmd := exec.Command(filepath.Join(binDir, "vault-agent"), "-state", c.a.state, "backup", "-json", "home")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }() // owner: the process's life
			t.Cleanup(func() { cmd.Process.Kill(); <-done })
			bs = append(bs, running{cmd, &out, done, snap})
		}
		e.v.mustCtl("prune")
		// A collection, and a kill of vaultd at a random instant of it.
		ctl := exec.Command(filepath.Join(binDir, "vaultctl"), "-data", e.v.dir, "collect")
		var ctlOut bytes.Buffer
		ctl.Stdout, ctl.Stderr = &ctlOut, &ctlOut
		if err := ctl.Start(); err != nil {
			t.Fatal(err)
		}
		ctlDone := make(chan struct{})
		go func() { ctl.Wait(); close(ctlDone) }() // owner: the process's life
		finished := false
		select {
		case <-ctlDone:
			finished = true
		case <-time.After(time.Duration(rnd.Int64N(int64(est) * 3 / 2))):
		}
		e.v.kill()
		<-ctlDone
		e.v.start()
		jobs := e.v.mustCtl("jobs")
		n := len(interruptedRE.FindAllString(jobs, -1))
		// Aim the next kill: too late when the collection had ended, too
		// early when its job had not started.
		switch {
		case finished || n == landed && strings.Count(jobs, "collect-") > started:
			est = est * 4 / 5
		case n == landed:
			est = est * 5 / 4
		}
		started = strings.Count(jobs, "collect-")
		landed = n
		if r := e.v.ctl("verify"); r.code != 0 {
			t.Fatalf("round %d: verify after a kill during collection: %s", rounds, r)
		}
		for i, b := range bs {
			select {
			case <-b.done:
			case <-time.After(3 * time.Minute):
				t.Fatalf("round %d: a backup did not end within 3 minutes:\n%s", rounds, b.out)
			}
			account(cs[i], b.snap)
		}
	}
	t.Logf("%d kills landed during collections in %d rounds (the last aimed within %s of the start)", landed, rounds, est*3/2)

	// Quiet: backups done, nothing open. Prune, then two whole collections.
	for _, c := range cs {
		c.a.backup("home")
		account(c, snapshot(t, c.src))
	}
	e.v.mustCtl("prune")
	for _, c := range cs {
		account(c, nil)
	}
	var swept [3]int
	for i := range swept {
		out := e.v.mustCtl("collect")
		m := collectedRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("vaultctl collect printed %q", out)
		}
		swept[i], _ = strconv.Atoi(m[1])
	}
	if swept[2] != 0 {
		t.Fatalf("after two whole collections a third swept %d chunks (sweeps %v): chunks unreferenced for two collections remained", swept[2], swept)
	}
	if r := e.v.ctl("verify"); r.code != 0 {
		t.Fatalf("verify at the end: %s", r)
	}
	n := 0
	for _, c := range cs {
		for seq, snap := range c.snaps {
			to := filepath.Join(e.root, fmt.Sprintf("restore-%s-%d", c.comp, seq))
			if r := c.a.run("restore", fmt.Sprintf("home@%d", seq), "-to", to, "-setid"); r.code != 0 {
				t.Fatalf("restore %s home@%d: %s", c.comp, seq, r)
			}
			compareTrees(t, fmt.Sprintf("restore of %s home@%d", c.comp, seq), snap, snapshot(t, filepath.Join(to, c.src)))
			n++
		}
	}
	if n == 0 {
		t.Fatal("no version left to restore")
	}
	t.Logf("%d retained versions restored identical; the last collections swept %v chunks", n, swept)
}
