// Command pairbench measures a pair of vaults against a single vault with
// the real binaries of ./bin (make bench-pair): initial and incremental
// backup throughput, failover time (the leader's SIGKILL to the agent's
// next acknowledged backup) and a member's catch-up rate. docs/pair.md
// states the targets: pair at least 0.75x the single vault, failover
// median under 5 s, catch-up at least half the disk's write rate.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pairbench:", err)
		os.Exit(1)
	}
}

type proc struct {
	dir, addr string
	args      []string
	ready     string
	cmd       *exec.Cmd
	done      chan struct{}
	prof      string // VAULTNODE_CPUPROFILE, if profiled
}

// profFile is the profile path of name in dir ("" when not profiling).
func profFile(dir, name string) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, name)
}

// withProfile is the environment of a process profiled into prof.
func withProfile(cmd *exec.Cmd, prof string) {
	if prof != "" {
		cmd.Env = append(os.Environ(), "VAULTNODE_CPUPROFILE="+prof)
	}
}

var bin string

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (p *proc) start() error {
	cmd := exec.Command(filepath.Join(bin, "vaultd"), p.args...)
	withProfile(cmd, p.prof)
	logf, err := os.OpenFile(p.dir+".log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	ready := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), p.ready) {
				select {
				case ready <- struct{}{}:
				default:
				}
			}
		}
	}()
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	select {
	case <-ready:
		return nil
	case <-p.done:
		b, _ := os.ReadFile(p.dir + ".log")
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		return fmt.Errorf("vaultd in %s exited:\n%s", p.dir, b)
	case <-time.After(time.Minute):
		return errors.New("vaultd did not serve within a minute")
	}
}

func (p *proc) kill() {
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		p.cmd = nil
	}
}

// stop ends the process by SIGTERM (it writes its profile), or kills it
// after 30 s.
func (p *proc) stop() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		p.cmd = nil
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

func ctl(dir string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(bin, "vaultctl"), append([]string{"-data", dir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("vaultctl %v: %v: %s", args, err, stderr.String())
	}
	return string(out), nil
}

func agent(state string, args ...string) (string, error) {
	return agentProf(state, "", args...)
}

func agentProf(state, prof string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(bin, "vault-agent"), append([]string{"-state", state}, args...)...)
	withProfile(cmd, prof)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), fmt.Errorf("vault-agent %v: %v: %s", args, err, ee.Stderr)
		}
		return string(out), err
	}
	return string(out), nil
}

type pairSt struct {
	State  string `json:"state"`
	Behind []any  `json:"behind"`
	Mem    []struct {
		Voter bool `json:"voter"`
	} `json:"members"`
}

func status(dir string) (pairSt, bool) {
	var st pairSt
	out, err := ctl(dir, "pair", "status", "-json")
	return st, err == nil && json.Unmarshal([]byte(out), &st) == nil
}

func waitFor(what string, cond func() bool) error {
	deadline := time.Now().Add(5 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("waited 5 minutes for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func whole(dir string) bool {
	st, ok := status(dir)
	n := 0
	for _, m := range st.Mem {
		if m.Voter {
			n++
		}
	}
	return ok && st.State == "Leader" && len(st.Behind) == 0 && n == 3
}

// corpus writes n MiB of random files (1 MiB each) under dir.
func corpus(dir string, mib int, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, 1<<20)
	for i := 0; i < mib; i++ {
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%16), fmt.Sprintf("f%05d-%d", i, seed))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func backup(state string) (time.Duration, error) { return backupProf(state, "") }

func backupProf(state, prof string) (time.Duration, error) {
	t := time.Now()
	_, err := agentProf(state, prof, "backup", "home")
	return time.Since(t), err
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pairbench", flag.ContinueOnError)
	binDir := fs.String("bin", "bin", "directory of vaultd, vaultctl and vault-agent")
	mib := fs.Int("mib", 512, "MiB of the initial corpus")
	failovers := fs.Int("failovers", 5, "leader kills to time")
	rounds := fs.Int("rounds", 3, "rounds of an initial and an incremental backup to both the single vault and the pair")
	freeze := fs.Bool("freeze", false, "fail the leader over by SIGSTOP instead of SIGKILL: its sockets stay open and silent, as a powered-off machine's do")
	keep := fs.Bool("keep", false, "keep the vaults' directories and logs (their place is printed)")
	roundsOnly := fs.Bool("rounds-only", false, "stop after the backup rounds (no failover, no catch-up)")
	profDir := fs.String("profile", "", "write CPU profiles into this directory: each vaultd's (single, a, b, w) over the rounds, and each backup's agent (implies -rounds-only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *profDir != "" {
		*roundsOnly = true
		if err := os.MkdirAll(*profDir, 0o755); err != nil {
			return err
		}
		if profDir2, err := filepath.Abs(*profDir); err == nil {
			*profDir = profDir2
		}
	}
	var err error
	if bin, err = filepath.Abs(*binDir); err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "pairbench-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(out, "vaults and logs kept in", root)
	} else {
		defer os.RemoveAll(root)
	}
	// The disk's write rate before any vault runs. Measured again around
	// the catch-up it has come out ten times lower on this machine: its
	// virtio disk caches writes on the host, and a synced write waits
	// behind the host writing back the GiB the backups wrote before
	// (docs/pair.md, "Benchmark"); the catch-up is judged against the
	// highest.
	diskIdle, err := diskRate(root, *mib/2)
	if err != nil {
		return err
	}
	src := filepath.Join(root, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	var procs []*proc
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()
	vault := func(name string, extra ...string) (*proc, error) {
		p := &proc{dir: filepath.Join(root, name), addr: freeAddr(), ready: "serving agents on", prof: profFile(*profDir, name)}
		p.args = append([]string{"-data", p.dir, "-listen", p.addr, "-portal", "off"}, extra...)
		procs = append(procs, p)
		return p, p.start()
	}
	enrol := func(v *proc, state string) error {
		if _, err := ctl(v.dir, "company", "create", "acme"); err != nil {
			return err
		}
		tok, err := ctl(v.dir, "token", "create", "acme")
		if err != nil {
			return err
		}
		if _, err := agent(state, "enroll", "-vault", v.addr, "-token", strings.TrimSpace(tok), "-name", "bench"); err != nil {
			return err
		}
		_, err = agent(state, "config", "set", "home", "-path", src)
		return err
	}

	// A single vault and the pair (a, b and a witness) run side by side,
	// so each round backs up the same corpus to both at about the same
	// load (the order alternates): the ratios are of the same moment.
	single, err := vault("single")
	if err != nil {
		return err
	}
	sst := filepath.Join(root, "agent-single")
	if err := enrol(single, sst); err != nil {
		return err
	}
	pairArgs := func(id string) []string {
		return []string{"-pair-id", id, "-pair-listen", freeAddr(), "-pair-heartbeat", "500ms", "-pair-degrade-after", "2s"}
	}
	a, err := vault("a", append(pairArgs("a"), "-pair-form")...)
	if err != nil {
		return err
	}
	if err := waitFor("a to lead", func() bool { st, ok := status(a.dir); return ok && st.State == "Leader" }); err != nil {
		return err
	}
	tok, _ := ctl(a.dir, "pair", "create")
	b, err := vault("b", append(pairArgs("b"), "-pair-join", strings.TrimSpace(tok))...)
	if err != nil {
		return err
	}
	wtok, _ := ctl(a.dir, "pair", "create")
	w := &proc{dir: filepath.Join(root, "w"), ready: "vaultd: witness", prof: profFile(*profDir, "w")}
	w.args = append([]string{"witness", "-data", w.dir}, append(pairArgs("w"), "-pair-join", strings.TrimSpace(wtok))...)
	procs = append(procs, w)
	if err := w.start(); err != nil {
		return err
	}
	if err := waitFor("the pair whole", func() bool { return whole(a.dir) }); err != nil {
		return err
	}
	st := filepath.Join(root, "agent-pair")
	if err := enrol(a, st); err != nil {
		return err
	}
	// Round r: a new corpus of mib MiB (every chunk new: an initial
	// backup's work; the first round is the vaults' very first backup),
	// then mib/16 MiB more (an incremental backup).
	type round struct{ sInit, pInit, sIncr, pIncr time.Duration }
	var rs []round
	// CPU time the vaults spent on the initial backups (the single vault;
	// the pair's three processes): on a loaded machine the share of CPU a
	// backup gets, not the wall clock, is what a ratio of speeds compares.
	var sCPU, pCPU time.Duration
	var memCPU [3]time.Duration // a, b, w
	both := func(r int, init bool) (time.Duration, time.Duration, error) {
		var ds [2]time.Duration
		for i := 0; i < 2; i++ {
			k := (i + r) % 2 // 0: single, 1: pair
			vs := [][]*proc{{single}, {a, b, w}}[k]
			c0 := cpu(vs...)
			m0 := [3]time.Duration{cpu(a), cpu(b), cpu(w)}
			phase := "incr"
			if init {
				phase = "init"
			}
			d, err := backupProf([]string{sst, st}[k], profFile(*profDir, fmt.Sprintf("%s-%s-%d", []string{"single", "pair"}[k], phase, r)))
			if err != nil {
				return 0, 0, err
			}
			if init {
				*[]*time.Duration{&sCPU, &pCPU}[k] += cpu(vs...) - c0
				if k == 1 {
					for j, p := range []*proc{a, b, w} {
						memCPU[j] += cpu(p) - m0[j]
					}
				}
			}
			ds[k] = d
		}
		return ds[0], ds[1], nil
	}
	for r := 0; r < *rounds; r++ {
		os.RemoveAll(src)
		if err := corpus(src, *mib, uint64(10+r)); err != nil {
			return err
		}
		var x round
		if x.sInit, x.pInit, err = both(r, true); err != nil {
			return err
		}
		if err := corpus(src, max(*mib/16, 1), uint64(100+r)); err != nil {
			return err
		}
		if x.sIncr, x.pIncr, err = both(r, false); err != nil {
			return err
		}
		rs = append(rs, x)
	}
	single.stop()

	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	fmt.Fprintf(out, "pair vs single vault, %d MiB corpus (random data), loopback, %d rounds\n", *mib, len(rs))
	fmt.Fprintf(out, "%-22s %12s %12s %7s %10s %10s %7s\n", "round", "single init", "pair init", "ratio", "single inc", "pair inc", "ratio")
	var ri, rn []float64
	for i, x := range rs {
		ri = append(ri, x.sInit.Seconds()/x.pInit.Seconds())
		rn = append(rn, x.sIncr.Seconds()/x.pIncr.Seconds())
		fmt.Fprintf(out, "%-22d %6.1f MiB/s %6.1f MiB/s %6.2fx %8.2f s %8.2f s %6.2fx\n", i+1,
			rate(*mib, x.sInit), rate(*mib, x.pInit), ri[i], x.sIncr.Seconds(), x.pIncr.Seconds(), rn[i])
	}
	medf := func(v []float64) float64 {
		v = append([]float64(nil), v...)
		sort.Float64s(v)
		return v[len(v)/2]
	}
	if len(rs) > 0 { // -rounds 0: the catch-up alone
		fmt.Fprintf(out, "median ratio pair/single: initial %.2fx, incremental %.2fx (target: at least 0.75x)\n", medf(ri), medf(rn))
		fmt.Fprintf(out, "vault CPU time of the initial backups: single %.1f s, pair %.1f s (%.2fx; leader %.1f s, other member %.1f s, witness %.1f s)\n",
			sCPU.Seconds(), pCPU.Seconds(), pCPU.Seconds()/sCPU.Seconds(), memCPU[0].Seconds(), memCPU[1].Seconds(), memCPU[2].Seconds())
	}
	if *roundsOnly {
		for _, p := range []*proc{a, b, w} {
			p.stop()
		}
		return nil
	}

	// Failover: kill the leader, time until a small backup is acknowledged
	// by the new one; restart the dead member and wait for the pair whole.
	// The survivor's state is watched meanwhile: when it stood for
	// election (Candidate) and when it led, so the time splits into raft
	// noticing, the election, and the agent finding the new leader.
	var times, noticed, elected, plain []time.Duration
	for i := 0; i < 3; i++ { // the same small backup without a failover
		os.WriteFile(filepath.Join(src, fmt.Sprintf("plain-%d", i)), []byte(time.Now().String()), 0o644)
		d, err := backup(st)
		if err != nil {
			return err
		}
		plain = append(plain, d)
	}
	for i := 0; i < *failovers; i++ {
		lead, other := a, b
		if s, _ := status(b.dir); s.State == "Leader" {
			lead, other = b, a
		}
		os.WriteFile(filepath.Join(src, fmt.Sprintf("failover-%d", i)), []byte(time.Now().String()), 0o644)
		t0 := time.Now()
		if *freeze {
			lead.cmd.Process.Signal(syscall.SIGSTOP)
		} else {
			lead.kill()
		}
		watch := make(chan [2]time.Duration, 1)
		go func() {
			var cand time.Duration
			for time.Since(t0) < 2*time.Minute {
				s, _ := status(other.dir)
				if s.State == "Candidate" && cand == 0 {
					cand = time.Since(t0)
				}
				if s.State == "Leader" {
					if cand == 0 {
						cand = time.Since(t0)
					}
					watch <- [2]time.Duration{cand, time.Since(t0)}
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			watch <- [2]time.Duration{}
		}()
		if _, err := backup(st); err != nil {
			return fmt.Errorf("backup after failover %d: %w", i, err)
		}
		times = append(times, time.Since(t0))
		w := <-watch
		noticed, elected = append(noticed, w[0]), append(elected, w[1])
		lead.kill() // a stopped process dies of SIGKILL too
		if err := lead.start(); err != nil {
			return err
		}
		if err := waitFor("the pair whole", func() bool { return whole(other.dir) }); err != nil {
			return err
		}
	}
	med := func(ds []time.Duration) time.Duration {
		ds = append([]time.Duration(nil), ds...)
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })

	// Catch-up: the follower misses a corpus, then comes back.
	lead, follower := a, b
	if s, _ := status(b.dir); s.State == "Leader" {
		lead, follower = b, a
	}
	follower.kill()
	if err := corpus(src, *mib/2, 3); err != nil {
		return err
	}
	if _, err := backup(st); err != nil {
		return err
	}
	// The disk's write rate on this machine swings with the other
	// processes' writes: it is measured just before the catch-up and just
	// after, and the catch-up compared with their mean.
	diskBefore, err := diskRate(root, *mib/2)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := follower.start(); err != nil {
		return err
	}
	// The job's rate counts from the moment the follower serves (or the
	// job's start, if later), not from its restart: a vaultd's start
	// (opening its catalog, raft log and index) is no write to the disk,
	// and the disk's figure it is judged against has no process start in
	// it either. Restart to whole, below, counts from t0.
	t1 := time.Now()
	if err := waitFor("the follower to catch up", func() bool { return whole(lead.dir) }); err != nil {
		return err
	}
	catch := time.Since(t0)
	// The job records the member caught up, then itself ended: whole
	// may be seen between the two.
	var jobBytes int64
	var jobTime time.Duration
	var jerr error
	if werr := waitFor("the catch-up job to end", func() bool {
		jobBytes, jobTime, jerr = catchUpJob(lead.dir, t1)
		return jerr == nil
	}); werr != nil {
		return fmt.Errorf("%w: %v", werr, jerr)
	}

	// The disk's write rate, measured now on the same file system: as
	// much as the catch-up copied, written in 1 MiB blocks and synced.
	diskAfter, err := diskRate(root, *mib/2)
	if err != nil {
		return err
	}
	disk := max(diskIdle, (diskBefore+diskAfter)/2)

	if len(times) > 0 { // -failovers 0: the catch-up alone
		how := "kill -9"
		if *freeze {
			how = "SIGSTOP"
		}
		fmt.Fprintf(out, "failover (%s to the next acknowledged backup), %d runs: median %.2f s, max %.2f s\n",
			how, len(times), times[len(times)/2].Seconds(), times[len(times)-1].Seconds())
		fmt.Fprintf(out, "  medians: survivor stands for election %.2f s, leads %.2f s, agent's backup acknowledged %.2f s (%.2f s without a failover)\n",
			med(noticed).Seconds(), med(elected).Seconds(), med(times).Seconds(), med(plain).Seconds())
	}
	fmt.Fprintf(out, "catch-up of %d MiB missed by the follower (restart to whole): %.1f s, %.1f MiB/s\n", *mib/2, catch.Seconds(), rate(*mib/2, catch))
	jobRate := float64(jobBytes) / (1 << 20) / jobTime.Seconds()
	fmt.Fprintf(out, "  the catch-up job: %.1f MiB copied in %.2f s from the follower serving (%.2f s after its restart), %.1f MiB/s\n",
		float64(jobBytes)/(1<<20), jobTime.Seconds(), t1.Sub(t0).Seconds(), jobRate)
	fmt.Fprintf(out, "disk write rate (%d MiB written and synced; before any vault ran, then just before and after the catch-up): %.1f, %.1f and %.1f MiB/s; catch-up job %.2fx of the highest (idle, or the mean around the catch-up), restart to whole %.2fx (target: at least 0.5x)\n",
		*mib/2, diskIdle, diskBefore, diskAfter, jobRate/disk, rate(*mib/2, catch)/disk)
	return nil
}

// catchUpJob reads the catch-up jobs that copied something and ended
// after t0 from the leader's admin socket: the bytes they copied and the
// time from the first one's start (t0 at the earliest) to the last one's
// end (a run that fails is started again).
func catchUpJob(dir string, t0 time.Time) (int64, time.Duration, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(dir, "admin.sock"))
	}}}
	resp, err := hc.Get("http://vault/admin/jobs")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var jobs []struct {
		Kind     string    `json:"kind"`
		Started  time.Time `json:"started"`
		Ended    time.Time `json:"ended"`
		Progress struct {
			Bytes int64 `json:"bytes"`
		} `json:"progress"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&jobs); err != nil {
		return 0, 0, fmt.Errorf("read the jobs: %w", err)
	}
	var n int64
	var first, last time.Time
	for _, j := range jobs {
		// A run may have started before the member came back (it
		// failed at its first copy): counted from t0 then.
		if j.Kind != "catch-up" || !j.Ended.After(t0) || j.Progress.Bytes == 0 {
			continue
		}
		n += j.Progress.Bytes
		st := j.Started
		if st.Before(t0) {
			st = t0
		}
		if first.IsZero() || st.Before(first) {
			first = st
		}
		if j.Ended.After(last) {
			last = j.Ended
		}
	}
	if n == 0 {
		return 0, 0, errors.New("no catch-up job copied anything on the leader")
	}
	return n, last.Sub(first), nil
}

// cpu is the user and system time the processes used so far.
func cpu(ps ...*proc) time.Duration {
	var t time.Duration
	for _, p := range ps {
		if p.cmd == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: utime and
		// stime are the 12th and 13th, in clock ticks (100 a second).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 12 {
			var u, s int64
			fmt.Sscan(f[11], &u)
			fmt.Sscan(f[12], &s)
			t += time.Duration(u+s) * 10 * time.Millisecond
		}
	}
	return t
}

// diskRate writes mib MiB of random data to a file under dir in 1 MiB
// blocks, syncs it, and returns the rate in MiB/s.
func diskRate(dir string, mib int) (float64, error) {
	f, err := os.Create(filepath.Join(dir, "disk-rate"))
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(4, 7))
	for j := range buf {
		buf[j] = byte(r.Uint32())
	}
	// Other files' dirty pages (the corpus just written, the vaults'
	// packs) go first, or the file system's journal could flush them in
	// this file's fsync and count them against the disk.
	syscall.Sync()
	t := time.Now()
	for i := 0; i < mib; i++ {
		if _, err := f.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return float64(mib) / time.Since(t).Seconds(), nil
}
