// Command abuse measures what one attacking company costs another on one
// vault (issue 10, "Benchmark"): company calm backs up a generated corpus
// alone; then company evil attacks (uploads trickling a byte every 20 s,
// 24 downloads never read, the memory-exhaustion commit) while company
// victim backs up the same corpus. It reports vaultd's peak RSS and the
// victim's backup time against calm's, with the targets: peak RSS under
// 256 MB, the victim within 1.5x of its time alone.
//
//	abuse [-bin ./bin] [-work DIR] [-scale 0.25] [-out out/bench/abuse.json] [-keep]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"vaultnode/internal/corpus"
	"vaultnode/internal/hostile"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "abuse:", err)
		os.Exit(1)
	}
}

// Targets of issue 10.
const (
	rssTarget   = 256 << 20
	ratioTarget = 1.5
)

type results struct {
	CorpusBytes       int64          `json:"corpus_bytes"`
	AloneSeconds      float64        `json:"alone_seconds"`
	AttackedSeconds   float64        `json:"attacked_seconds"`
	Ratio             float64        `json:"ratio"`
	AlonePeakRSS      int64          `json:"alone_peak_rss_bytes"`
	AttackedPeakRSS   int64          `json:"attacked_peak_rss_bytes"`
	PeakRSSResettable bool           `json:"peak_rss_resettable"` // false: the attacked peak includes the calm run
	Attacks           map[string]any `json:"attacks"`
	RSSOK             bool           `json:"rss_ok"`
	RatioOK           bool           `json:"ratio_ok"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("abuse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin", "`directory` holding vaultd, vaultctl and vault-agent")
	work := fs.String("work", "", "working `directory` (default: a temporary one)")
	scale := fs.Float64("scale", 0.25, "corpus scale (1: about 1 GiB)")
	out := fs.String("out", "out/bench/abuse.json", "results `file` (JSON)")
	keep := fs.Bool("keep", false, "keep the working directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if *bin, err = filepath.Abs(*bin); err != nil {
		return err
	}
	if *work == "" {
		if *work, err = os.MkdirTemp("", "vaultnode-abuse-"); err != nil {
			return err
		}
	}
	if !*keep {
		defer os.RemoveAll(*work)
	}
	src := filepath.Join(*work, "corpus")
	st, err := corpus.Generate(src, corpus.Options{Scale: *scale})
	if err != nil {
		return fmt.Errorf("generate corpus: %w", err)
	}
	fmt.Fprintf(stdout, "corpus: %d files, %.0f MB of data\n", st.Files, float64(st.DataBytes)/1e6)

	v, err := startVault(ctx, *bin, filepath.Join(*work, "vault"))
	if err != nil {
		return err
	}
	defer v.stop()
	for _, c := range []string{"calm", "victim", "evil"} {
		if _, err := v.ctl("company", "create", c); err != nil {
			return err
		}
	}
	calm, err := v.agent(ctx, filepath.Join(*work, "calm"), "calm", src)
	if err != nil {
		return err
	}
	victim, err := v.agent(ctx, filepath.Join(*work, "victim"), "victim", src)
	if err != nil {
		return err
	}

	res := results{CorpusBytes: st.DataBytes, Attacks: map[string]any{}}
	res.PeakRSSResettable = resetPeakRSS(v.pid()) == nil
	alone, err := calm.backup(ctx)
	if err != nil {
		return fmt.Errorf("backup alone: %w", err)
	}
	res.AloneSeconds = alone.Seconds()
	res.AlonePeakRSS, _ = hostile.VmHWM(v.pid())
	resetPeakRSS(v.pid())

	attacked, tallies, err := underAttack(ctx, v, victim)
	if err != nil {
		return err
	}
	res.AttackedSeconds = attacked.Seconds()
	if res.AttackedPeakRSS, err = hostile.VmHWM(v.pid()); err != nil {
		return err
	}
	for name, t := range tallies {
		res.Attacks[name] = t.Count
	}
	res.Ratio = res.AttackedSeconds / res.AloneSeconds
	res.RSSOK, res.RatioOK = res.AttackedPeakRSS < rssTarget, res.Ratio <= ratioTarget

	status := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	fmt.Fprintf(stdout, "%-34s %9.1fs  (vaultd peak RSS %.0f MB)\n", "victim's backup alone", res.AloneSeconds, float64(res.AlonePeakRSS)/1e6)
	fmt.Fprintf(stdout, "%-34s %9.1fs  (vaultd peak RSS %.0f MB)\n", "victim's backup under attack", res.AttackedSeconds, float64(res.AttackedPeakRSS)/1e6)
	fmt.Fprintf(stdout, "target: victim within %.1fx of alone: %.2fx  %s\n", ratioTarget, res.Ratio, status(res.RatioOK))
	fmt.Fprintf(stdout, "target: vaultd peak RSS under %d MB: %.0f MB  %s\n", rssTarget>>20, float64(res.AttackedPeakRSS)/1e6, status(res.RSSOK))
	if !res.PeakRSSResettable {
		fmt.Fprintln(stdout, "note: the peak RSS could not be reset; the attacked peak includes the run alone")
	}
	for name, t := range tallies {
		fmt.Fprintf(stdout, "attack %-28s %s\n", name+":", t.String())
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	return os.WriteFile(*out, append(b, '\n'), 0o644)
}

// underAttack runs the attacks, waits until all are in flight, times the
// victim's backup, and stops them.
func underAttack(ctx context.Context, v *vault, victim *agent) (time.Duration, map[string]*hostile.Tally, error) {
	var evil []*hostile.Agent
	for i := 0; i < 3; i++ {
		tok, err := v.ctl("token", "create", "evil")
		if err != nil {
			return 0, nil, err
		}
		a, err := hostile.Enroll(ctx, v.addr, strings.TrimSpace(tok), fmt.Sprintf("evil%d", i))
		if err != nil {
			return 0, nil, err
		}
		defer a.Close()
		evil = append(evil, a)
	}
	actx, stop := context.WithCancel(ctx)
	defer stop()
	type attack struct {
		name string
		run  func(*hostile.Tally, func()) error
	}
	// The downloads and the commit upload a chunk first, through the
	// company's two upload slots, which the slow uploads hold 30 s at a
	// time: they go first, or they may wait out the run.
	phases := [][]attack{{
		{"stalled downloads", func(t *hostile.Tally, ready func()) error {
			return evil[1].StalledDownloads(actx, 4, 24, 45*time.Second, t, ready)
		}},
		{"memory-exhaustion commit", func(t *hostile.Tally, ready func()) error {
			return evil[2].BigListingCommits(actx, t, ready)
		}},
	}, {
		{"slow uploads", func(t *hostile.Tally, ready func()) error {
			return evil[0].SlowUploads(actx, 2, 4, 20*time.Second, t, ready)
		}},
	}}
	tallies := map[string]*hostile.Tally{}
	n := 0
	for _, phase := range phases {
		n += len(phase)
	}
	errs := make(chan error, n) // one error per attack at most: none blocks
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }() // an early return stops the attacks before waiting for them
	for _, phase := range phases {
		var readyWG sync.WaitGroup
		for _, at := range phase {
			t := &hostile.Tally{}
			tallies[at.name] = t
			var once sync.Once
			readyWG.Add(1)
			wg.Add(1)
			go func() { // owner: underAttack, which stops and waits for it
				defer wg.Done()
				if err := at.run(t, func() { once.Do(readyWG.Done) }); err != nil {
					errs <- fmt.Errorf("attack %s: %w", at.name, err)
				}
				once.Do(readyWG.Done)
			}()
		}
		readyWG.Wait()
	}
	select {
	case err := <-errs:
		return 0, nil, err
	default:
	}
	d, err := victim.backup(ctx)
	stop()
	wg.Wait()
	close(errs)
	for e := range errs {
		err = errors.Join(err, e)
	}
	return d, tallies, err
}

// vault is a running vaultd.
type vault struct {
	bin, dir, addr string
	cmd            *exec.Cmd
	done           chan struct{}
}

func (v *vault) pid() int { return v.cmd.Process.Pid }

func startVault(ctx context.Context, bin, dir string) (*vault, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(dir + "-vaultd.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "vaultd"), "-data", dir, "-listen", addr, "-portal", "off")
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vaultd: %w", err)
	}
	v := &vault{bin: bin, dir: dir, addr: addr, cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() { // owner: vaultd's life (ends when it closes stdout)
		sc := bufio.NewScanner(out)
		var once sync.Once
		for sc.Scan() {
			if strings.Contains(sc.Text(), "serving agents on") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() { cmd.Wait(); logf.Close(); close(v.done) }() // owner: vaultd's life
	select {
	case <-ready:
		return v, nil
	case <-v.done:
		return nil, fmt.Errorf("vaultd exited before serving; see %s", logf.Name())
	case <-time.After(time.Minute):
		v.stop()
		return nil, errors.New("vaultd did not serve within a minute")
	case <-ctx.Done():
		v.stop()
		return nil, ctx.Err()
	}
}

func (v *vault) stop() {
	v.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-v.done:
	case <-time.After(30 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
}

func (v *vault) ctl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(v.bin, "vaultctl"), append([]string{"-data", v.dir}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vaultctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// agent is a real vault-agent state directory protecting one tree.
type agent struct {
	bin, state string
}

func (v *vault) agent(ctx context.Context, state, company, src string) (*agent, error) {
	tok, err := v.ctl("token", "create", company)
	if err != nil {
		return nil, err
	}
	a := &agent{bin: v.bin, state: state}
	if _, err := a.run(ctx, "enroll", "-vault", v.addr, "-token", strings.TrimSpace(tok), "-name", company+"-pc"); err != nil {
		return nil, err
	}
	if _, err := a.run(ctx, "config", "set", "corpus", "-path", src); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *agent) run(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(a.bin, "vault-agent"), append([]string{"-state", a.state}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vault-agent %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// backup runs one backup and returns its wall time.
func (a *agent) backup(ctx context.Context) (time.Duration, error) {
	began := time.Now()
	_, err := a.run(ctx, "backup", "corpus")
	return time.Since(began), err
}

// resetPeakRSS resets the process's VmHWM (Linux: clear_refs 5).
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
