package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// daemonProc is a running `vault-agent run`.
type daemonProc struct {
	cmd *exec.Cmd
	log *syncBuffer // read while the daemon writes it
}

func startDaemon(t *testing.T, a *agent) *daemonProc {
	t.Helper()
	d := &daemonProc{log: &syncBuffer{}}
	d.cmd = exec.Command(filepath.Join(binDir, "vault-agent"), "-state", a.state, "-v", "run", "-poll", "1s")
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
		if t.Failed() {
			t.Logf("agent daemon log:\n%s", d.log.String())
		}
	})
	return d
}

// eventually waits until latest restores exactly what src holds now, and
// returns how long that took.
func (e *env) eventually(config, src string) time.Duration {
	e.t.Helper()
	took, last, ok := e.latestMatches(e.a, config, src, 60*time.Second)
	if !ok {
		e.t.Fatalf("%s@latest never matched the source within 60 s; last difference: %s", config, last)
	}
	return took
}

// latestMatches restores CONFIG@latest with agent a, again and again for at
// most within, until it equals what src holds now. It returns how long
// that took, or ok false and the last difference (or failed restore).
func (e *env) latestMatches(a *agent, config, src string, within time.Duration) (took time.Duration, last string, ok bool) {
	e.t.Helper()
	want := snapshot(e.t, src)
	start := time.Now()
	for time.Since(start) < within {
		to := filepath.Join(e.root, fmt.Sprintf("latest-%d", time.Now().UnixNano()))
		r := a.run("restore", config+"@latest", "-to", to, "-setid")
		if r.code == 0 {
			got := snapshot(e.t, filepath.Join(to, src))
			os.RemoveAll(to)
			if d := diffStates(want, got); d == "" {
				return time.Since(start), "", true
			} else {
				last = d
			}
		} else {
			last = r.String()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, last, false
}

func diffStates(want, got map[string]entryState) string {
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			return p + " missing"
		}
		if p == "." {
			continue // the root directory's mtime changes with every entry
		}
		if w.Type == "dir" {
			w.Mtime, g.Mtime = 0, 0 // directory times settle at the next checkpoint
		}
		if w != g {
			return fmt.Sprintf("%s differs: want %+v, got %+v", p, w, g)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			return p + " should not exist"
		}
	}
	return ""
}

// TestContinuous runs the daemon in continuous mode and checks that
// creates, writes, renames, deletes and changes inside new directories
// reach the vault within seconds, that nothing is lost across a restart of
// the agent, and that a burst of events beyond the kernel queue recovers.
func TestContinuous(t *testing.T) {
	e := newEnv(t)
	live := filepath.Join(e.root, "live")
	os.MkdirAll(filepath.Join(live, "docs"), 0o755)
	os.WriteFile(filepath.Join(live, "docs", "a.txt"), []byte("first"), 0o644)
	e.a.must("config", "set", "live", "-path", live, "-mode", "continuous", "-interval", "1m")
	d := startDaemon(t, e.a)
	e.eventually("live", live)

	step := func(name string, fn func()) {
		t.Helper()
		fn()
		took := e.eventually("live", live)
		t.Logf("%-28s restorable after %v", name, took.Round(10*time.Millisecond))
	}
	step("create", func() { os.WriteFile(filepath.Join(live, "docs", "b.txt"), []byte("second"), 0o644) })
	step("write", func() {
		f, _ := os.OpenFile(filepath.Join(live, "docs", "a.txt"), os.O_APPEND|os.O_WRONLY, 0)
		f.WriteString(" and more")
		f.Close()
	})
	step("rename", func() { os.Rename(filepath.Join(live, "docs", "b.txt"), filepath.Join(live, "docs", "c.txt")) })
	step("delete", func() { os.Remove(filepath.Join(live, "docs", "a.txt")) })
	step("new directory with content", func() {
		p := filepath.Join(live, "new", "deeper", "deepest")
		os.MkdirAll(p, 0o755)
		os.WriteFile(filepath.Join(p, "f.bin"), bytes.Repeat([]byte("x"), 3<<20), 0o644)
	})
	step("directory rename", func() { os.Rename(filepath.Join(live, "new"), filepath.Join(live, "moved")) })

	// Restart: changes made while the agent is down are found when it
	// comes back.
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	os.WriteFile(filepath.Join(live, "while-down.txt"), []byte("made while the agent was down"), 0o644)
	os.Remove(filepath.Join(live, "docs", "c.txt"))
	startDaemon(t, e.a)
	e.eventually("live", live)

	// A burst of 5,000 files: past the kernel queue or the pending limit
	// the agent rescans, and the vault still ends up with all of them.
	step("burst of 5000 files", func() {
		for i := range 5000 {
			dir := filepath.Join(live, "burst", fmt.Sprint(i/1000))
			if i%1000 == 0 {
				os.MkdirAll(dir, 0o755)
			}
			os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), []byte(fmt.Sprint(i)), 0o644)
		}
	})
	// Versions stay few: journal records, not one version per change.
	out := e.a.must("versions", "live")
	if n := strings.Count(out, "live@"); n > 6 {
		t.Fatalf("%d versions for a handful of changes: continuous mode should record journal entries\n%s", n, out)
	}
	st := e.v.mustCtl("status")
	if !strings.Contains(st, "live") || !strings.Contains(st, "continuous") {
		t.Fatalf("vaultctl status does not show the continuous configuration:\n%s", st)
	}
}

// countingProxy forwards TCP connections to target and counts the bytes
// sent towards it, sampling the count every 50 ms.
type countingProxy struct {
	addr    string
	sent    atomic.Int64
	mu      sync.Mutex
	samples []sample
}

type sample struct {
	at    time.Time
	bytes int64
}

func startProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{addr: ln.Addr().String()}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				v, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer v.Close()
				go io.Copy(c, v)
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						p.sent.Add(int64(n))
						if _, werr := v.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tk.C:
				p.mu.Lock()
				p.samples = append(p.samples, sample{now, p.sent.Load()})
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// steadyRate is the rate in bits/s between the first sample past first+skip
// bytes and the last sample before the total minus skip.
func (p *countingProxy) steadyRate(skip int64) (float64, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := p.samples[len(p.samples)-1].bytes
	var a, b *sample
	for i := range p.samples {
		s := &p.samples[i]
		if a == nil && s.bytes >= skip {
			a = s
		}
		if s.bytes <= total-skip {
			b = s
		}
	}
	if a == nil || b == nil || !b.at.After(a.at) {
		return 0, 0
	}
	d := b.at.Sub(a.at)
	return float64(b.bytes-a.bytes) * 8 / d.Seconds(), d
}

// TestBandwidthLimit: the limit set with `vault-agent limit` reaches the
// agent's uploads. A TCP proxy between the agent and the vault counts the
// bytes on the wire. The agent runs on the wall clock, so the test asserts
// only what a busy machine cannot break: the upload took at least as long as
// the limit allows for those bytes (load only makes it slower). That the
// limiter keeps to its rate exactly is tested on a fake clock in
// agentkit/bwlimit; the rate on the wall clock is measured by `make bench`.
func TestBandwidthLimit(t *testing.T) {
	e := newEnv(t)
	const size = 12 << 20
	data := make([]byte, size)
	rand.Read(data) // incompressible: the bytes on the wire are the file's
	if err := os.WriteFile(filepath.Join(e.src, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, e.v.addr)
	idPath := filepath.Join(e.a.state, "identity.json")
	id, err := os.ReadFile(idPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(idPath, bytes.Replace(id, []byte(e.v.addr), []byte(p.addr), 1), 0o600)
	const limit = 2e6 // 16 Mbit/s in bytes per second
	e.a.must("limit", "16Mbit/s")
	start := time.Now()
	e.a.must("backup", "home")
	took := time.Since(start)
	wire := p.sent.Load()
	time.Sleep(100 * time.Millisecond) // one more sample for the log
	rate, over := p.steadyRate(1 << 20)
	t.Logf("%d bytes on the wire in %v; %.2f Mbit/s over the steady %v (16 Mbit/s limit; not asserted: the wall clock is the machine's load)",
		wire, took.Round(time.Millisecond), rate/1e6, over.Round(time.Millisecond))
	if wire < size {
		t.Fatalf("only %d bytes went through the proxy, the file has %d: the backup did not use it", wire, size)
	}
	// The limiter meters request bodies (the file's chunks, at least
	// size bytes) and may let a second's worth through at once; what is
	// left must take its time.
	if min := time.Duration(float64(size-limit) / limit * float64(time.Second)); took < min {
		t.Fatalf("the backup sent %d bytes in %v; a 16 Mbit/s limit needs at least %v: the limit was not applied", wire, took, min)
	}
}
