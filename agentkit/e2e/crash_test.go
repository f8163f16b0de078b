package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashEnv is an env with a ~200 MB tree and the versions committed so far,
// each with the snapshot of the tree it was taken from.
type crashEnv struct {
	*env
	g     *gen
	rnd   *rand.Rand
	snaps map[uint64]map[string]entryState
	seen  int // versions accounted for
}

func newCrashEnv(t *testing.T, seed uint64) *crashEnv {
	e := newEnv(t)
	g := newGen(t, e.src, seed)
	g.makeTree(300, 20<<20)
	for i := 0; i < 9; i++ {
		g.write(fmt.Sprintf("bulk/b%d.bin", i), g.random(20<<20), 0o644)
	}
	g.setTimes()
	rs := uint64(time.Now().UnixNano())
	t.Logf("random instants seeded with %d", rs)
	return &crashEnv{env: e, g: g, rnd: rand.New(rand.NewPCG(rs, seed)), snaps: map[uint64]map[string]entryState{}}
}

var versionRE = regexp.MustCompile(`home@(\d+)`)

// account maps versions committed since the last call to snap, the tree
// they were taken from.
func (c *crashEnv) account(snap map[string]entryState) {
	c.t.Helper()
	out := c.v.mustCtl("versions", c.comp, "home")
	n := 0
	for _, m := range versionRE.FindAllStringSubmatch(out, -1) {
		seq, _ := strconv.ParseUint(m[1], 10, 64)
		if _, ok := c.snaps[seq]; !ok {
			c.snaps[seq] = snap
		}
		n++
	}
	if n < c.seen {
		c.t.Fatalf("versions went from %d to %d:\n%s", c.seen, n, out)
	}
	c.seen = n
}

// startBackup starts `vault-agent backup -json home` without waiting.
func (c *crashEnv) startBackup() (*exec.Cmd, *bytes.Buffer, chan struct{}) {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "vault-agent"), "-state", c.a.state, "backup", "-json", "home")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }() // owner: the process's life
	c.t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return cmd, &out, done
}

func waitDone(t *testing.T, what string, done chan struct{}, cmd *exec.Cmd) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not end within 3 minutes", what)
	}
}

// restoreAll restores every committed version and compares it with its
// snapshot, then checks verify.
func (c *crashEnv) restoreAll() {
	c.t.Helper()
	if r := c.v.ctl("verify"); r.code != 0 {
		c.t.Fatalf("verify after the crashes: %s", r)
	}
	for seq, snap := range c.snaps {
		dir, r := c.restore(seq)
		if r.code != 0 {
			c.t.Errorf("restore home@%d: %s", seq, r)
			continue
		}
		compareTrees(c.t, fmt.Sprintf("restore of home@%d", seq), snap, snapshot(c.t, dir))
	}
	c.t.Logf("%d committed versions restored and compared", len(c.snaps))
}

// change mutates the tree and adds fresh random data for the next round.
func (c *crashEnv) change(round int) {
	c.g.mutate(round)
	c.g.write(fmt.Sprintf("bulk/r%d.bin", round), c.g.random(30<<20), 0o644)
}

// minMidKills is how many rounds of each crash test must kill a process
// while the backup still ran; a kill after the backup finished proves
// nothing and is not counted.
const minMidKills = 4

// TestCrashVault SIGKILLs vaultd at random instants of backups, restarts it
// and backs up again; every committed version must restore identical and
// the store must verify. Only kills that land while the backup runs count,
// and minMidKills of them are required.
func TestCrashVault(t *testing.T) {
	c := newCrashEnv(t, 4)
	prevRaw := int64(0)
	span := 4 * time.Second // the first backup sends the whole tree
	// fastest is the shortest a later round's backup was seen to take:
	// kills aim inside it, so they land while the backup runs however fast
	// this machine is.
	fastest := time.Duration(0)
	mid := 0
	for round := 0; mid < minMidKills; round++ {
		if round >= 4*minMidKills {
			t.Fatalf("only %d of %d rounds killed the vault while the backup ran; %d needed", mid, round, minMidKills)
		}
		if round > 0 {
			c.change(round)
		}
		snap := snapshot(t, c.src)
		fresh := freshBound(round, snap, prevRaw)
		prevRaw = rawBytes(snap)
		before := c.storedBytes()
		began := time.Now()
		cmd, out, done := c.startBackup()
		d := 20*time.Millisecond + time.Duration(c.rnd.Int64N(int64(span)))
		took := d // at most, when the backup ended between the timer and the kill
		finished := false
		select {
		case <-done:
			finished, took = true, time.Since(began)
		case <-time.After(d):
		}
		c.v.kill()
		waitDone(t, "the agent after the vault was killed", done, cmd)
		code := cmd.ProcessState.ExitCode()
		if finished || code == 0 {
			// The kill came too late: aim within the fastest backup seen.
			if round > 0 && (fastest == 0 || took < fastest) {
				fastest = took
			}
			span = max(span/2, 100*time.Millisecond)
			if fastest > 0 {
				span = max(fastest*3/4, 50*time.Millisecond)
			}
			t.Logf("round %d: the backup finished (exit %d, within %v) before the kill at %v: not counted; kills now fall within %v", round, code, took, d, span)
		} else {
			mid++
			t.Logf("round %d: vault killed mid-backup at %v (%d/%d); agent exit %d: %s", round, d, mid, minMidKills, code, lastLine(out.String()))
			if code == 1 && !strings.Contains(out.String(), "vault") {
				t.Errorf("round %d: the agent's failure does not say the vault was unreachable: %s", round, out)
			}
			if round > 0 && fastest == 0 {
				span = 1500 * time.Millisecond
			}
		}
		c.v.start()
		acked := c.storedBytes() - before // verifies the store right after the restart
		c.account(snap)
		s := c.a.backup("home")
		t.Logf("round %d: the vault kept %d acknowledged bytes; next backup committed home@%d, sent %d bytes (fresh data at most %d)", round, acked, s.Version, s.BytesSent, fresh)
		if limit := fresh - acked + 16<<20; s.BytesSent > limit {
			t.Errorf("round %d: the vault kept %d bytes across its crash, yet the next backup sent %d bytes, more than the %d left of at most %d fresh bytes (+16 MiB)",
				round, acked, s.BytesSent, fresh-acked, fresh)
		}
		c.account(snap)
	}
	c.restoreAll()
}

var verifyBytesRE = regexp.MustCompile(`entries \((\d+) bytes\)`)

// storedBytes is the committed body bytes the vault's verify counts.
func (c *crashEnv) storedBytes() int64 {
	c.t.Helper()
	r := c.v.ctl("verify")
	if r.code != 0 {
		c.t.Fatalf("verify: %s", r)
	}
	m := verifyBytesRE.FindStringSubmatch(r.stdout)
	if m == nil {
		c.t.Fatalf("verify printed no byte count: %s", r.stdout)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// rawBytes is the content size of the tree's regular files counted once per
// inode: an upper bound of what a backup of all of it sends.
func rawBytes(snap map[string]entryState) int64 {
	n := int64(2 << 20) // the data of the sparse files (1.1 MiB)
	for p, s := range snap {
		if s.Type == "file" && s.Link == "" && !strings.HasPrefix(p, "sparse/") {
			n += s.Size
		}
	}
	return n
}

// TestCrashAgent SIGKILLs vault-agent at random instants of backups: the
// next backup completes without re-sending what the vault acknowledged,
// and every committed version restores identical. Only kills that end the
// agent (not an agent that had already exited) count, and minMidKills of
// them are required.
func TestCrashAgent(t *testing.T) {
	c := newCrashEnv(t, 5)
	prevRaw := int64(0)
	span := 1200 * time.Millisecond
	mid := 0
	for round := 0; mid < minMidKills; round++ {
		if round >= 3*minMidKills {
			t.Fatalf("only %d of %d rounds killed the agent mid-backup; %d needed", mid, round, minMidKills)
		}
		if round > 0 {
			c.change(round)
		}
		snap := snapshot(t, c.src)
		fresh := freshBound(round, snap, prevRaw)
		prevRaw = rawBytes(snap)
		before := c.storedBytes()
		packs := filepath.Join(c.v.dir, "packs")
		base := dirSize(t, packs)
		cmd, out, done := c.startBackup()
		if round == 0 {
			// Kill once a good part is acknowledged, so that re-sending it
			// would show.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			for ctx.Err() == nil && dirSize(t, packs)-base < 60<<20 {
				select {
				case <-done:
					cancel()
				case <-time.After(20 * time.Millisecond):
				}
			}
			cancel()
		} else {
			select {
			case <-done:
			case <-time.After(20*time.Millisecond + time.Duration(c.rnd.Int64N(int64(span)))):
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		waitDone(t, "the killed agent", done, cmd)
		killed := false
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			killed = true
		}
		c.settle() // uploads the vault had read in full finish after the kill
		acked := c.storedBytes() - before
		if killed {
			mid++
			t.Logf("round %d: agent killed mid-backup (%d/%d); the vault had acknowledged %d bytes", round, mid, minMidKills, acked)
		} else {
			span = max(span/2, 100*time.Millisecond)
			t.Logf("round %d: the agent had exited (%v) before the kill: not counted; kills now fall within %v; output: %s", round, cmd.ProcessState, span, lastLine(out.String()))
		}
		c.account(snap)
		s := c.a.backup("home")
		t.Logf("round %d: next backup committed home@%d, sent %d bytes (fresh data at most %d)", round, s.Version, s.BytesSent, fresh)
		if limit := fresh - acked + 16<<20; s.BytesSent > limit {
			t.Errorf("round %d: after the vault acknowledged %d bytes, the next backup sent %d bytes, more than the %d left of at most %d fresh bytes (+16 MiB): it re-sent acknowledged data",
				round, acked, s.BytesSent, fresh-acked, fresh)
		}
		c.account(snap)
	}
	c.restoreAll()
}

// settle waits until the vault's packs stop growing.
func (c *crashEnv) settle() {
	packs := filepath.Join(c.v.dir, "packs")
	last, same := dirSize(c.t, packs), 0
	for deadline := time.Now().Add(30 * time.Second); same < 5 && time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		n := dirSize(c.t, packs)
		if n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
}

// freshBound bounds the data a backup of this round sends: the whole tree
// the first time; later the growth (the new bulk file, new small files)
// plus 8 MiB for edits and the insertion's neighbourhood.
func freshBound(round int, snap map[string]entryState, prevRaw int64) int64 {
	if round == 0 {
		return rawBytes(snap)
	}
	return max(rawBytes(snap)-prevRaw, 0) + 8<<20
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
