// Command rpo measures continuous protection: the recovery point (time from
// a write's close to the moment the vault can restore that content) under a
// steady load of file changes, and the CPU and memory of the idle agent
// watching a large tree. Part of `make bench`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"vaultnode/agentkit/client"
	"vaultnode/agentkit/restore"
	"vaultnode/agentkit/state"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "rpo:", err)
		os.Exit(1)
	}
}

// Results are what the benchmark measured.
type Results struct {
	Files         int     `json:"files"`
	Rate          int     `json:"changes_per_second"`
	Writes        int     `json:"writes"`
	Seen          int     `json:"writes_restorable"`
	MedianSeconds float64 `json:"rpo_median_s"`
	P99Seconds    float64 `json:"rpo_p99_s"`
	MaxSeconds    float64 `json:"rpo_max_s"`
	IdleFiles     int     `json:"idle_files"`
	IdleCPU       float64 `json:"idle_cpu_fraction"`
	IdleRSSMB     float64 `json:"idle_rss_mb"`
	Backend       string  `json:"capture"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rpo", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory with vaultd and vault-agent")
	work := fs.String("work", "out/rpo", "work directory (replaced)")
	files := fs.Int("files", 100000, "files in the tree under load")
	rate := fs.Int("rate", 100, "file changes per second")
	dur := fs.Duration("duration", 20*time.Second, "length of the load")
	idle := fs.Int("idle-files", 1000000, "files in the tree the idle agent watches (0: skip)")
	out := fs.String("out", "out/bench/rpo.json", "results file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	os.RemoveAll(*work)
	if err := os.MkdirAll(*work, 0o755); err != nil {
		return err
	}
	w, err := filepath.Abs(*work)
	if err != nil {
		return err
	}
	b, _ := filepath.Abs(*bin)
	var res Results
	res.Files, res.Rate = *files, *rate
	if err := measureRPO(ctx, b, w, *files, *rate, *dur, &res, stderr); err != nil {
		return err
	}
	if *idle > 0 {
		if err := measureIdle(ctx, b, w, *idle, &res, stderr); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "continuous protection (%s):\n", res.Backend)
	fmt.Fprintf(stdout, "  recovery point under %d changes/s on %d files: median %.2f s, p99 %.2f s, max %.2f s (%d of %d writes seen)  targets: median < 2 s %s, p99 < 10 s %s\n",
		res.Rate, res.Files, res.MedianSeconds, res.P99Seconds, res.MaxSeconds, res.Seen, res.Writes,
		verdict(res.MedianSeconds < 2), verdict(res.P99Seconds < 10))
	if res.IdleFiles > 0 {
		fmt.Fprintf(stdout, "  idle agent watching %d files: %.2f%% of a core, %.0f MB resident  targets: < 1%% %s, < 150 MB %s\n",
			res.IdleFiles, 100*res.IdleCPU, res.IdleRSSMB, verdict(res.IdleCPU < 0.01), verdict(res.IdleRSSMB < 150))
	}
	os.MkdirAll(filepath.Dir(*out), 0o755)
	j, _ := json.MarshalIndent(res, "", "  ")
	return os.WriteFile(*out, j, 0o644)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

type setup struct {
	vault, agent *exec.Cmd
	state        string
	root         string
}

func (s *setup) stop() {
	for _, c := range []*exec.Cmd{s.agent, s.vault} {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				c.Process.Kill()
			}
		}
	}
}

func sh(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// start makes a tree of n files, a vault and an enrolled agent protecting
// the tree continuously, and waits for the first version.
func start(ctx context.Context, bin, dir string, n int, stderr io.Writer) (*setup, error) {
	s := &setup{state: filepath.Join(dir, "agent"), root: filepath.Join(dir, "tree")}
	fmt.Fprintf(stderr, "rpo: making %d files in %s\n", n, s.root)
	for i := range n {
		d := filepath.Join(s.root, strconv.Itoa(i/1000))
		if i%1000 == 0 {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(filepath.Join(d, strconv.Itoa(i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "vault")
	addr := "127.0.0.1:17991"
	s.vault = exec.Command(filepath.Join(bin, "vaultd"), "-data", data, "-listen", addr, "-portal", "off", "-log-level", "warn")
	s.vault.Stderr = stderr
	if err := s.vault.Start(); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(data, "admin.sock")); err == nil {
			break
		}
		if i > 200 {
			s.stop()
			return nil, errors.New("vaultd did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctl := filepath.Join(bin, "vaultctl")
	agent := filepath.Join(bin, "vault-agent")
	if _, err := sh(ctl, "-data", data, "company", "create", "rpo"); err != nil {
		s.stop()
		return nil, err
	}
	tok, err := sh(ctl, "-data", data, "token", "create", "rpo")
	if err == nil {
		_, err = sh(agent, "-state", s.state, "enroll", "-vault", addr, "-token", tok)
	}
	if err == nil {
		_, err = sh(agent, "-state", s.state, "config", "set", "live", "-path", s.root, "-mode", "continuous", "-interval", "5m")
	}
	if err != nil {
		s.stop()
		return nil, err
	}
	s.agent = exec.Command(agent, "-state", s.state, "run", "-poll", "5s")
	s.agent.Stderr = io.Discard
	if err := s.agent.Start(); err != nil {
		s.stop()
		return nil, err
	}
	fmt.Fprintf(stderr, "rpo: waiting for the first checkpoint\n")
	for {
		out, _ := sh(agent, "-state", s.state, "versions", "live")
		if strings.Contains(out, "live@1") {
			return s, nil
		}
		select {
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func measureRPO(ctx context.Context, bin, dir string, n, rate int, dur time.Duration, res *Results, stderr io.Writer) error {
	s, err := start(ctx, bin, filepath.Join(dir, "load"), n, stderr)
	if err != nil {
		return err
	}
	defer s.stop()
	st, err := state.Open(s.state)
	if err != nil {
		return err
	}
	id, cert, pool, err := st.Load()
	if err != nil {
		return err
	}
	c := client.New(id.Vault, cert, pool, nil)
	comp, err := c.Computer(ctx)
	if err != nil {
		return err
	}
	key := [32]byte(comp.ChunkKey)
	// The writer: rate changes per second, each a rewrite of a random
	// file with new content, closed at a recorded instant.
	closed := map[string]time.Time{} // rel path -> close time of its latest write
	seenAt := map[string]time.Time{}
	var rpos []float64
	lctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	writes := make(chan [2]any, 1024)
	go func() {
		defer close(writes)
		// Paced by the clock, not by ticks (which a busy machine drops): at
		// any moment, rate × elapsed writes have been made.
		begin := time.Now()
		for i := 0; ; i++ {
			due := begin.Add(time.Duration(i) * time.Second / time.Duration(rate))
			select {
			case <-lctx.Done():
				return
			case <-time.After(time.Until(due)):
			}
			f := (i * 7919) % n
			p := filepath.Join(s.root, strconv.Itoa(f/1000), strconv.Itoa(f))
			if err := os.WriteFile(p, []byte(fmt.Sprintf("file %d rewritten %d at %d\n", f, i, time.Now().UnixNano())), 0o644); err != nil {
				continue
			}
			writes <- [2]any{strings.TrimPrefix(p, "/"), time.Now()}
		}
	}()
	// The observer: polls the vault's journal and reads each new record's
	// listing: its files are restorable from the moment it is seen.
	var seenRecords int
	base := uint64(0)
	deadline := time.Now().Add(dur + 15*time.Second)
	loadDone := false
	for time.Now().Before(deadline) {
		for !loadDone {
			select {
			case w, ok := <-writes:
				if !ok {
					loadDone = true
					break
				}
				closed[w[0].(string)] = w[1].(time.Time)
				res.Writes++
				continue
			default:
			}
			break
		}
		ms, err := c.Versions(ctx, "live")
		if err == nil && len(ms) > 0 && ms[len(ms)-1].Seq != base {
			base, seenRecords = ms[len(ms)-1].Seq, 0
			// A checkpoint: every file as of its start is restorable.
			m := ms[len(ms)-1]
			now := time.Now()
			for p, t := range closed {
				if _, ok := seenAt[p]; !ok && t.Before(m.Started) {
					seenAt[p] = now
					rpos = append(rpos, now.Sub(t).Seconds())
				}
			}
		}
		js, err := c.JournalOf(ctx, "live", base)
		if err == nil && len(js) > seenRecords {
			now := time.Now()
			for _, j := range js[seenRecords:] {
				rd, stop, err := restore.OpenListing(ctx, c, key, j.Listing)
				if err != nil {
					continue
				}
				for {
					nd, err := rd.Next()
					if err != nil {
						break
					}
					p := string(nd.Path)
					if t, ok := closed[p]; ok {
						if _, done := seenAt[p]; !done {
							seenAt[p] = now
							rpos = append(rpos, now.Sub(t).Seconds())
						}
					}
				}
				stop()
			}
			seenRecords = len(js)
		}
		if loadDone && len(seenAt) >= len(closed) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.Seen = len(rpos)
	if len(rpos) == 0 {
		return errors.New("no write became restorable")
	}
	sort.Float64s(rpos)
	res.MedianSeconds = rpos[len(rpos)/2]
	res.P99Seconds = rpos[min(len(rpos)-1, len(rpos)*99/100)]
	res.MaxSeconds = rpos[len(rpos)-1]
	res.Backend = captureOf(s.state)
	return nil
}

func captureOf(st string) string {
	out, err := exec.Command("sh", "-c", "printf 'GET /status HTTP/1.0\\r\\n\\r\\n' | nc -U "+filepath.Join(st, "agent.sock")+" 2>/dev/null").Output()
	if err != nil || len(out) == 0 {
		return "continuous"
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Split(l, "\t"); len(f) >= 3 && f[0] == "live" {
			return f[2]
		}
	}
	return "continuous"
}

// measureIdle starts the agent on a large tree and measures its CPU and
// resident memory over 30 s with no change.
func measureIdle(ctx context.Context, bin, dir string, n int, res *Results, stderr io.Writer) error {
	s, err := start(ctx, bin, filepath.Join(dir, "idle"), n, stderr)
	if err != nil {
		return err
	}
	defer s.stop()
	time.Sleep(5 * time.Second) // let the first checkpoint's aftermath settle
	pid := s.agent.Process.Pid
	c0, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
	}
	c1, err := cpuSeconds(pid)
	if err != nil {
		return err
	}
	res.IdleFiles = n
	res.IdleCPU = (c1 - c0) / time.Since(t0).Seconds()
	res.IdleRSSMB, err = rssMB(pid)
	return err
}

func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100, nil
}

func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024, nil
		}
	}
	return 0, errors.New("no VmRSS")
}
