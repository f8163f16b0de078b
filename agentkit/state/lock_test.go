package state

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain is also the other process of TestLockAcrossProcesses: it takes
// the lock, says so, and waits to be killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("VAULTNODE_LOCK_HOLDER"); dir != "" {
		d, err := Open(dir)
		if err == nil {
			_, err = d.Lock("c")
		}
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("locked\n")
		time.Sleep(time.Hour) // until killed
	}
	os.Exit(m.Run())
}

// TestLockAcrossProcesses: a synchronization of a configuration refuses to
// start while another process holds its lock, names that process, and
// starts once it is killed: the kernel releases a dead holder's lock.
func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "VAULTNODE_LOCK_HOLDER="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "locked" {
	}
	if sc.Text() != "locked" {
		t.Fatalf("the holder did not take the lock: %v", sc.Err())
	}

	_, err = d.Lock("c")
	var busy *BusyError
	if !errors.As(err, &busy) || !errors.Is(err, ErrBusy) {
		t.Fatalf("Lock while another process holds it: %v", err)
	}
	if busy.PID != cmd.Process.Pid || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("busy error names pid %d (%q), the holder is %d", busy.PID, err, cmd.Process.Pid)
	}
	other, err := d.Lock("other")
	if err != nil {
		t.Fatalf("another configuration's lock: %v", err)
	}
	other.Release()

	cmd.Process.Kill() // SIGKILL: no chance to release it
	cmd.Wait()
	l, err := d.Lock("c")
	if err != nil {
		t.Fatalf("Lock after its holder was killed: %v", err)
	}
	defer l.Release()

	// In this process too: a second synchronization of the same
	// configuration is refused, and runs once the first releases it.
	if _, err := d.Lock("c"); !errors.As(err, &busy) || busy.PID != os.Getpid() || !strings.Contains(err.Error(), "this process") {
		t.Fatalf("second Lock in the same process: %v", err)
	}
	l.Release()
	l2, err := d.Lock("c")
	if err != nil {
		t.Fatalf("Lock after Release: %v", err)
	}
	l2.Release()
}
