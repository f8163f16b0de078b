package e2e

import (
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
	holder := exec.Command("flock", "-n", "-o", lock, "sleep", "300") // -o: sleep does not hold it
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(-holder.Process.Pid, syscall.SIGKILL) // and its sleep
	// Held once a second flock(1) finds it busy (exit 1).
	for start := time.Now(); exec.Command("flock", "-n", lock, "true").Run() == nil; time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("flock did not take the lock")
		}
	}

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

	holder.Process.Kill()
	holder.Wait()
	for start := time.Now(); !strings.Contains(e.a.run("versions", "home").stdout, "home@1"); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > 60*time.Second {
			t.Fatal("the daemon did not synchronize within 60 s of the lock's holder being killed")
		}
	}
	d.kill()
	if s := e.a.backup("home"); s.Version != 2 {
		t.Fatalf("vault-agent backup once the daemon is gone made version %d, want 2", s.Version)
	}
}
