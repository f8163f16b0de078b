package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConfigurationLock: while another process holds a configuration's
// lock (here flock(1), as a second agent would), `vault-agent backup`
// refuses with what to do, and the daemon defers its synchronization
// without reporting an error; killed, the holder lets both run.
func TestConfigurationLock(t *testing.T) {
	e := newEnv(t)
	g := newGen(t, e.src, 11)
	g.makeTree(10, 0)
	lock := filepath.Join(e.a.state, "configs", "home", "lock")
	if err := os.MkdirAll(filepath.Dir(lock), 0o700); err != nil {
		t.Fatal(err)
	}
	var holder *exec.Cmd
	hold := func() {
		// -o: the shell and its sleep do not hold it; flock does, until
		// killed. It says "locked" once it holds it.
		holder = exec.Command("flock", "-n", "-o", lock, "sh", "-c", "echo locked; exec sleep 300")
		holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		var errb bytes.Buffer
		holder.Stderr = &errb
		out, err := holder.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := holder.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "locked\n" {
			t.Fatalf("flock did not take the lock: %q %s", line, errb.String())
		}
	}
	release := func() {
		syscall.Kill(-holder.Process.Pid, syscall.SIGKILL) // SIGKILL, and its sleep
		holder.Wait()
	}
	hold()
	defer func() { syscall.Kill(-holder.Process.Pid, syscall.SIGKILL) }()

	r := e.a.run("backup", "home")
	if r.code == 0 || !strings.Contains(r.stderr, `configuration "home" is being synchronized by another process`) ||
		!strings.Contains(r.stderr, "wait for it to finish") {
		t.Fatalf("vault-agent backup while the configuration is locked: %s", r)
	}
	if out := e.a.must("versions", "home"); strings.Contains(out, "home@") {
		t.Fatalf("a version was made under another's lock:\n%s", out)
	}

	d := startDaemonArgs(t, e.a, "-poll", "1h", "-retry", "1s")
	for start := time.Now(); !strings.Contains(d.log.String(), "synchronization deferred"); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatal("the daemon did not defer its synchronization within 60 s")
		}
	}
	st := e.v.mustCtl("status", "acme")
	for _, line := range strings.Split(st, "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[2] == "home" && (f[4] == "error" || strings.Contains(line, "being synchronized")) {
			t.Fatalf("a deferred synchronization shows as a failure:\n%s", st)
		}
	}
	if !strings.Contains(st, "home") {
		t.Fatalf("vaultctl status does not list the configuration:\n%s", st)
	}

	release()
	for start := time.Now(); !strings.Contains(e.a.run("versions", "home").stdout, "home@1"); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatal("the daemon did not synchronize within 60 s of the lock's holder being killed")
		}
	}
	d.kill()
	if s := e.a.backup("home"); s.Version != 2 {
		t.Fatalf("vault-agent backup once the daemon is gone made version %d, want 2", s.Version)
	}

	// A back-up-now request that meets the lock is deferred; one asked
	// while the daemon waits to try again runs as soon as the lock is
	// free, though the next scheduled synchronization is an hour away.
	d = startDaemonArgs(t, e.a, "-poll", "1h", "-retry", "30s")
	for start := time.Now(); !strings.Contains(d.log.String(), "agent running"); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 30*time.Second {
			t.Fatal("the daemon did not start within 30 s")
		}
	}
	hold()
	deferred := strings.Count(d.log.String(), "synchronization deferred")
	e.a.must("now", "home")
	for start := time.Now(); strings.Count(d.log.String(), "synchronization deferred") == deferred; time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatal("the daemon did not defer the requested synchronization within 60 s")
		}
	}
	release()
	e.a.must("now", "home")
	for start := time.Now(); !strings.Contains(e.a.run("versions", "home").stdout, "home@3"); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatal("a back-up-now request made while the daemon waited to try again did not run within 20 s")
		}
	}
}
