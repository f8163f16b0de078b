package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// killRounds is how many SIGKILLs TestRandomKills must land while an
// operation runs: VAULTNODE_KILLS, 12 by default (`make test`); `make soak`
// asks for 100.
func killRounds(t *testing.T) int { return envKills(t, "VAULTNODE_KILLS", 12) }

// envKills reads a number of kills from the environment variable name:
// def when it is unset, a test failure when it is not a positive number.
func envKills(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive number of kills", name, s)
	}
	return n
}

// The operations TestRandomKills interrupts.
const (
	opBackup     = iota // one-shot backup: reading, uploads, the commit
	opRestore           // restore of a committed version
	opContinuous        // the daemon in continuous mode recording a change
	numOps
)

var opNames = [numOps]string{"backup", "restore", "journal record"}

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a vault-agent process the test may kill.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	end  time.Time // when it exited; read after done is closed
}

func startAgentProc(t *testing.T, a *agent, args ...string) *proc {
	t.Helper()
	p := &proc{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(filepath.Join(binDir, "vault-agent"), append([]string{"-state", a.state}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); p.end = time.Now(); close(p.done) }() // owner: the process's life
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and reports whether the signal ended it (it
// had not exited on its own before).
func (p *proc) kill() bool {
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		panic("vault-agent did not die within a minute of SIGKILL")
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// wait waits for the process to end on its own.
func (p *proc) wait(t *testing.T, what string) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(3 * time.Minute):
		p.kill()
		t.Fatalf("%s did not end within 3 minutes:\n%s", what, p.out)
	}
	return p.cmd.ProcessState.ExitCode()
}

// killEnv is one vault, agent A doing one-shot backups and restores of
// "home", and agent B running the daemon on "live" in continuous mode.
type killEnv struct {
	*crashEnv
	b       *agent
	live    string
	daemon  *proc
	lg      *gen
	est     [numOps]time.Duration // how long the operation took when it ran to its end
	checked map[uint64]bool       // versions restored and compared already
	// commitKills counts kills that landed while a commit was in flight:
	// the agent's error names the commit request, or the version was
	// committed although the backup never heard the answer.
	commitKills int
}

// TestRandomKills SIGKILLs, alternately, vaultd and a vault-agent at
// random instants of backups (reading, uploading, committing), restores
// and continuous-mode journal records. After each kill the vault restarts
// and serves, verify is clean, the versions committed meanwhile restore
// identical to the tree they were taken from, the interrupted restore
// completes on a second try, and the continuous configuration's latest
// state catches up with its source. A kill counts only if it landed while
// the operation ran; VAULTNODE_KILLS such kills are required, and (from 6 on)
// at least one of each victim during each operation, within three times as
// many rounds. At the end every committed version is restored again.
func TestRandomKills(t *testing.T) {
	want := killRounds(t)
	c := &killEnv{crashEnv: newSmallCrashEnv(t, 11), checked: map[uint64]bool{}}
	c.b = &agent{t: t, state: filepath.Join(c.root, "agent-b")}
	c.b.must("enroll", "-vault", c.v.addr, "-token", c.v.token("acme"), "-name", "pc2")
	c.live = filepath.Join(c.root, "live")
	c.lg = newGen(t, c.live, 12)
	c.lg.makeTree(40, 4<<20)
	c.b.must("config", "set", "live", "-path", c.live, "-mode", "continuous", "-interval", "1m")

	// First runs to the end measure each operation.
	start := time.Now()
	c.account(snapshot(t, c.src))
	c.a.backup("home")
	c.account(snapshot(t, c.src))
	c.est[opBackup] = time.Since(start)
	start = time.Now()
	c.checkVersion(1)
	c.est[opRestore] = time.Since(start)
	c.daemon = startAgentProc(t, c.b, "-v", "run", "-poll", "1s", "-retry", "500ms")
	c.eventually(c.b, "live", c.live)
	c.est[opContinuous] = c.journalOnce(t, 0)
	t.Logf("operations to the end: backup %v, restore %v, journal record %v", c.est[opBackup], c.est[opRestore], c.est[opContinuous])

	var landed [2][numOps]int // [vault, agent][op]
	// With enough kills asked for, each victim must be killed at least
	// once during each operation: rounds go on until that holds too (a
	// kill aimed at a random instant can miss a short operation twice).
	uncovered := func() []string {
		var miss []string
		if want < 2*numOps {
			return nil
		}
		for v, name := range []string{"vaultd", "the agent"} {
			for op := range numOps {
				if landed[v][op] == 0 {
					miss = append(miss, fmt.Sprintf("no kill of %s landed during a %s", name, opNames[op]))
				}
			}
		}
		return miss
	}
	mid := 0
	round := 0
	for ; mid < want || len(uncovered()) > 0; round++ {
		if round >= 3*want {
			t.Fatalf("only %d of %d kills landed while an operation ran; %d needed (kills by victim and operation %v); %s",
				mid, round, want, landed, strings.Join(uncovered(), "; "))
		}
		victim := round % 2 // 0: vaultd, 1: the agent
		op := (round / 2) % numOps
		var ok bool
		switch op {
		case opBackup:
			ok = c.killBackup(t, round, victim)
		case opRestore:
			ok = c.killRestore(t, round, victim)
		case opContinuous:
			ok = c.killJournal(t, round, victim)
		}
		if ok {
			mid++
			landed[victim][op]++
		}
		c.check(t, round)
	}
	t.Logf("%d of %d kills landed mid-operation: vaultd %v, agents %v (backup, restore, journal record); %d while a commit was in flight", mid, round, landed[0], landed[1], c.commitKills)
	c.daemon.kill()
	for seq := range c.snaps {
		c.checked[seq] = false
	}
	c.checkAll()
}

// newSmallCrashEnv is a crashEnv with a tree of about 70 MB: backups and
// restores last long enough to be interrupted, and a hundred rounds fit a
// soak run.
func newSmallCrashEnv(t *testing.T, seed uint64) *crashEnv {
	e := newEnv(t)
	g := newGen(t, e.src, seed)
	g.makeTree(150, 8<<20)
	for i := 0; i < 3; i++ {
		g.write(fmt.Sprintf("bulk/b%d.bin", i), g.random(16<<20), 0o644)
	}
	g.setTimes()
	rs := uint64(time.Now().UnixNano())
	t.Logf("random instants seeded with %d", rs)
	return &crashEnv{env: e, g: g, rnd: rand.New(rand.NewPCG(rs, seed)), snaps: map[uint64]map[string]entryState{}}
}

// instant draws a kill delay over the operation's measured length, a
// little past it so that the end (the commit, the last files) is hit too.
func (c *killEnv) instant(op int) time.Duration {
	return time.Duration(c.rnd.Int64N(int64(c.est[op])*11/10 + 1))
}

// runLength is what a run says of its operation's length: the whole run
// when it ended by itself; when the kill landed, only the instant of the
// kill (an agent whose vault was killed goes on retrying its connection
// for up to 15 s, which is not the operation's length).
func runLength(took, kill time.Duration, landed bool) time.Duration {
	if landed {
		return kill
	}
	return took
}

// learn adjusts the estimate: a run that ended before the kill gives its
// length; a killed run lasted at least until the kill.
func (c *killEnv) learn(op int, took time.Duration, ended bool) {
	if ended {
		c.est[op] = took
	} else if took > c.est[op] {
		c.est[op] = took
	}
	c.est[op] = max(c.est[op], 20*time.Millisecond)
}

// killVictim kills vaultd (victim 0) or the agent process p, and reports
// whether the kill landed while p still ran.
func (c *killEnv) killVictim(victim int, p *proc) bool {
	if victim == 0 {
		running := !p.exited()
		c.v.kill()
		return running
	}
	return p.kill()
}

// killBackup changes the tree and kills a backup of it.
func (c *killEnv) killBackup(t *testing.T, round, victim int) bool {
	c.g.mutate(round)
	c.g.write(fmt.Sprintf("bulk/r%d.bin", round), c.g.random(8<<20), 0o644)
	os.Remove(filepath.Join(c.src, fmt.Sprintf("bulk/r%d.bin", round-6))) // the tree stays near its size
	snap := snapshot(t, c.src)
	d := c.instant(opBackup)
	aim := ""
	if c.rnd.IntN(2) == 0 { // aim at the end of the backup, where the commit is
		e := c.est[opBackup]
		d = e*85/100 + time.Duration(c.rnd.Int64N(int64(e)/4+1))
		aim = " (aimed at the commit)"
	}
	before := len(c.snaps)
	start := time.Now()
	p := startAgentProc(t, c.a, "backup", "-json", "home")
	time.Sleep(d)
	landed := c.killVictim(victim, p)
	inCommit := false
	if victim == 0 {
		code := p.wait(t, "the backup after the vault was killed")
		landed = landed && code != 0
		inCommit = landed && strings.Contains(p.out.String(), "/commit")
		c.v.start()
	}
	c.learn(opBackup, runLength(p.end.Sub(start), d, landed), !landed)
	c.account(snap)
	if landed && len(c.snaps) > before {
		inCommit = true // committed, but the agent never heard so
	}
	if inCommit {
		c.commitKills++
	}
	what := landedWord(landed)
	if inCommit {
		what = "landed while the commit was in flight"
	}
	t.Logf("round %d: %s killed %v into a backup%s: %s", round, victimName(victim), d, aim, what)
	return landed
}

// killRestore kills a restore of a random committed version; the restore
// is then done again and compared.
func (c *killEnv) killRestore(t *testing.T, round, victim int) bool {
	seqs := c.versions()
	seq := seqs[c.rnd.IntN(len(seqs))]
	d := c.instant(opRestore)
	to := filepath.Join(c.root, fmt.Sprintf("killed-restore-%d", round))
	start := time.Now()
	p := startAgentProc(t, c.a, "restore", fmt.Sprintf("home@%d", seq), "-to", to, "-setid")
	time.Sleep(d)
	landed := c.killVictim(victim, p)
	if victim == 0 {
		code := p.wait(t, "the restore after the vault was killed")
		landed = landed && code != 0
		c.v.start()
	}
	c.learn(opRestore, runLength(p.end.Sub(start), d, landed), !landed)
	os.RemoveAll(to)
	t.Logf("round %d: %s killed %v into a restore of home@%d: %s", round, victimName(victim), d, seq, landedWord(landed))
	c.checked[seq] = false // restore it again now
	return landed
}

// killJournal changes the continuously protected tree and kills vaultd or
// the daemon before the change is recorded; after the restart the
// configuration's latest state must catch up with the source.
func (c *killEnv) killJournal(t *testing.T, round, victim int) bool {
	before := recordLines(c.daemon.out.String())
	c.changeLive(round)
	d := c.instant(opContinuous)
	start := time.Now()
	var recorded time.Duration // when the daemon said it recorded the change
	for time.Since(start) < d {
		if recorded == 0 && recordLines(c.daemon.out.String()) != before {
			recorded = time.Since(start)
		}
		time.Sleep(2 * time.Millisecond)
	}
	landed := recordLines(c.daemon.out.String()) == before && !c.daemon.exited()
	if victim == 0 {
		c.v.kill()
		c.v.start()
	} else {
		landed = c.daemon.kill() && landed
		c.daemon = startAgentProc(t, c.b, "-v", "run", "-poll", "1s", "-retry", "500ms")
	}
	if recorded > 0 {
		c.learn(opContinuous, recorded, true)
	} else {
		c.learn(opContinuous, d, false)
	}
	t.Logf("round %d: %s killed %v after a change to the continuous tree: %s", round, victimName(victim), d, landedWord(landed))
	took := c.eventually(c.b, "live", c.live)
	t.Logf("round %d: live@latest matched its source %v after the restart", round, took.Round(10*time.Millisecond))
	return landed
}

// journalOnce changes the live tree and returns how long the daemon took
// to record it.
func (c *killEnv) journalOnce(t *testing.T, round int) time.Duration {
	before := recordLines(c.daemon.out.String())
	c.changeLive(round)
	start := time.Now()
	for recordLines(c.daemon.out.String()) == before {
		if time.Since(start) > time.Minute || c.daemon.exited() {
			t.Fatalf("the daemon did not record a change within a minute:\n%s", c.daemon.out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// recordLines counts the daemon's log lines saying a change reached the
// vault: a journal record or a full synchronization.
func recordLines(log string) int {
	return strings.Count(log, "journal record") + strings.Count(log, "checkpoint: version")
}

// changeLive edits, adds and removes files in the continuous tree: enough
// bytes that recording them takes a while.
func (c *killEnv) changeLive(round int) {
	files := c.lg.list("docs")
	for i := 0; i < 3 && len(files) > 0; i++ {
		rel := files[c.lg.r.IntN(len(files))]
		c.lg.write(rel, c.lg.text(fmt.Sprintf("%s live %d", rel, round), c.lg.r.IntN(20000)), 0o644)
	}
	c.lg.write(fmt.Sprintf("new/r%d.bin", round), c.lg.random(4<<20), 0o644)
	os.Remove(filepath.Join(c.live, fmt.Sprintf("new/r%d.bin", round-4)))
}

// eventually waits until CONFIG@latest, restored by agent a, equals src.
func (c *killEnv) eventually(a *agent, config, src string) time.Duration {
	c.t.Helper()
	took, last, ok := c.latestMatches(a, config, src, 90*time.Second)
	if !ok {
		c.t.Fatalf("%s@latest never matched its source within 90 s; last difference: %s\ndaemon log:\n%s", config, last, c.daemon.out)
	}
	return took
}

// check runs after every kill: verify is clean and the versions not yet
// compared restore identical.
func (c *killEnv) check(t *testing.T, round int) {
	t.Helper()
	r := c.v.ctl("verify")
	if r.code != 0 || !strings.Contains(r.stdout, ": 0 problems") {
		t.Fatalf("round %d: verify after the kill: %s", round, r)
	}
	c.account(snapshot(t, c.src))
	c.checkAll()
}

// checkAll restores and compares every version not compared yet.
func (c *killEnv) checkAll() {
	c.t.Helper()
	for _, seq := range c.versions() {
		if !c.checked[seq] {
			c.checkVersion(seq)
		}
	}
}

func (c *killEnv) checkVersion(seq uint64) {
	c.t.Helper()
	to := filepath.Join(c.root, fmt.Sprintf("check-%d", seq))
	os.RemoveAll(to)
	if r := c.a.run("restore", fmt.Sprintf("home@%d", seq), "-to", to, "-setid"); r.code != 0 {
		c.t.Fatalf("restore home@%d: %s", seq, r)
	}
	compareTrees(c.t, fmt.Sprintf("restore of home@%d", seq), c.snaps[seq], snapshot(c.t, filepath.Join(to, c.src)))
	os.RemoveAll(to)
	if c.t.Failed() {
		c.t.FailNow()
	}
	c.checked[seq] = true
}

// versions lists the committed versions of home in order.
func (c *killEnv) versions() []uint64 {
	var out []uint64
	for seq := range c.snaps {
		out = append(out, seq)
	}
	slices.Sort(out)
	return out
}

func victimName(v int) string {
	if v == 0 {
		return "vaultd"
	}
	return "the agent"
}

func landedWord(ok bool) string {
	if ok {
		return "landed mid-operation"
	}
	return "the operation had already finished: not counted"
}
