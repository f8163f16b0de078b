package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"vaultnode/internal/clock"
)

// usage is what one measured child process cost.
type usage struct {
	wall   time.Duration
	cpu    time.Duration // user + system
	maxRSS int64         // bytes
	minflt int64         // minor page faults
	stdout []byte
}

// command is one child process to run and measure.
type command struct {
	name   string   // program path
	args   []string // arguments
	env    []string // extra environment
	logTo  string   // file for stderr (and stdout unless captured)
	stdout bool     // capture stdout into usage.stdout
}

// runner runs child processes, timing them with its clock.
type runner struct {
	clk clock.Clock
}

// run runs c to completion and returns its wall time and rusage.
func (r runner) run(ctx context.Context, c command) (usage, error) {
	cmd := exec.CommandContext(ctx, c.name, c.args...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	var log io.Writer = io.Discard
	if c.logTo != "" {
		f, err := os.OpenFile(c.logTo, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return usage{}, fmt.Errorf("open log: %w", err)
		}
		defer f.Close()
		fmt.Fprintf(f, "\n$ %s %s\n", c.name, strings.Join(c.args, " "))
		log = f
	}
	cmd.Stderr = log
	cmd.Stdout = log
	if c.stdout {
		cmd.Stdout = io.MultiWriter(&out, log)
	}
	start := r.clk.Now()
	err := cmd.Start()
	var hwm int64
	if err == nil {
		stop := make(chan struct{})
		polled := make(chan int64, 1)
		go func() { polled <- pollHWM(cmd.Process.Pid, stop) }()
		err = cmd.Wait()
		close(stop)
		hwm = <-polled
	}
	u := usage{wall: r.clk.Now().Sub(start), stdout: out.Bytes()}
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			u.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			u.minflt = ru.Minflt
			// ru_maxrss counts the memory of this process (the benchmark)
			// that the child shared between its start and its exec (Go
			// starts children with vfork): with a corpus of a million files
			// in memory here, every child looked 400 MB large. VmHWM of the
			// child's own address space, polled while it runs, is its own.
			u.maxRSS = ru.Maxrss * 1024
			if hwm > 0 {
				u.maxRSS = hwm
			}
		}
	}
	if err != nil {
		return u, fmt.Errorf("run %s %s: %w%s", filepath.Base(c.name), strings.Join(c.args, " "), err, tail(c.logTo))
	}
	return u, nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\n  " + strings.Join(lines, "\n  ") + "\n  (log: " + path + ")"
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times; 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// procStats are a running process's figures from /proc/PID/stat.
type procStats struct {
	cpu    time.Duration // user + system
	minflt int64         // minor page faults
}

func procStat(pid int) (procStats, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStats{}, fmt.Errorf("read process times: %w", err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStats{}, errors.New("read process times: malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// After the command name: state is field 3, minflt 10, utime 14, stime 15.
	if len(f) < 13 {
		return procStats{}, errors.New("read process times: short /proc stat")
	}
	mf, err0 := strconv.ParseInt(f[7], 10, 64)
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err0, err1, err2); err != nil {
		return procStats{}, fmt.Errorf("read process times: %w", err)
	}
	return procStats{cpu: time.Duration(ut+st) * time.Second / clockTicks, minflt: mf}, nil
}

// procPeakRSS returns VmHWM, the peak resident set of a running process
// (since its start or since resetPeakRSS).
func procPeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read process status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read process status: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("read process status: no VmHWM")
}

// procAnonRSS reads the resident memory of process pid that no file backs
// (RssAnon: heap, stacks); VmHWM also counts the pages of files it maps,
// such as the vault's index, which the kernel can drop at any time.
func procAnonRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read process status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("read process status: %w", err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("read process status: no RssAnon")
}

// pollAnon polls procAnonRSS every 50 ms until stop is closed and returns
// the largest seen.
func pollAnon(pid int, stop <-chan struct{}) int64 {
	var best int64
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if v, err := procAnonRSS(pid); err == nil {
			best = max(best, v)
		}
		select {
		case <-stop:
			return best
		case <-t.C:
		}
	}
}

// resetPeakRSS sets VmHWM back to the current RSS (Linux >= 4.0).
func resetPeakRSS(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak RSS: %w", err)
	}
	return nil
}

// diskUsage sums the allocated bytes of every file under dir, like du.
func diskUsage(dir string) (int64, error) {
	var total int64
	err := filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure disk usage: %w", err)
	}
	return total, nil
}

// dropCaches writes dirty pages back and empties the page cache, so the
// next phase reads from disk. It fails where /proc/sys is read-only.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop page caches: %w", err)
	}
	return nil
}

// hostBusy returns the CPU time the whole machine has spent busy (all CPUs,
// everything but idle and iowait), from /proc/stat.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read host CPU times: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("read host CPU times: malformed /proc/stat")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal (guest is in user).
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read host CPU times: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}

// pollHWM reads the peak resident size (VmHWM) of process pid every 20 ms
// until stop is closed or the process is gone, and returns the largest seen
// (0 when never read, e.g. a process that ended within the first poll).
func pollHWM(pid int, stop <-chan struct{}) int64 {
	var best int64
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if v, err := procPeakRSS(pid); err == nil {
			best = max(best, v)
		}
		select {
		case <-stop:
			return best
		case <-t.C:
		}
	}
}
