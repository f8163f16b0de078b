package hwtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQEMU runs a shell script in QEMU's place (through Options.Wrap, the
// QEMU arguments are ignored): a real process whose console output and
// death Boot sees as a VM's. Each run appends a line to the file $RUNS.
func fakeQEMU(t *testing.T, script string) (Options, string) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	return Options{Dir: dir, Wrap: []string{"sh", "-c", "echo run >> \"$RUNS\"; " + script, "fake-qemu"},
		Env: []string{"RUNS=" + runs}}, runs
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// TestBootAgainAfterEarlyDeath: a VM that dies of a signal in the kernel's
// boot, before the image's PID 1 printed its banner, is booted once more,
// and the log says how the first one ended.
func TestBootAgainAfterEarlyDeath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o, runs := fakeQEMU(t, `if [ "$(wc -l < "$RUNS")" -eq 1 ]; then echo '[    0.777683] pci 0000:00:06.0: BAR 4'; kill -KILL $$; fi
echo; echo 'vaultnode firmware test starting'; exec sleep 60`)
	var log logLines
	vm, err := Boot(ctx, o, log.logf)
	if err != nil {
		t.Fatalf("Boot: %v\nlog: %s", err, log.String())
	}
	defer vm.Kill()
	if got := countLines(t, runs); got != 2 {
		t.Errorf("QEMU ran %d times, want 2", got)
	}
	for _, want := range []string{"died before the image's init started", "signal: killed", "BAR 4"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log lacks %q:\n%s", want, log.String())
		}
	}
	// The banner does not move Expect's cursor: the console is read from
	// the start of this boot.
	if _, err := vm.Expect(ctx, "firmware test starting"); err != nil {
		t.Errorf("Expect after Boot: %v", err)
	}
	vm.Kill()
	_, err = vm.Expect(ctx, "never printed")
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "killed by the test") {
		t.Errorf("Expect on a killed VM: %v, want ErrExited killed by the test", err)
	}
}

// TestBootDiesTwice: a second early death is an error naming how QEMU
// ended; a death after the banner is the image's, never booted again.
func TestBootDiesTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o, runs := fakeQEMU(t, `echo 'Kernel panic - not syncing'; exit 0`)
	var log logLines
	_, err := Boot(ctx, o, log.logf)
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "died twice") || !strings.Contains(err.Error(), "exit status 0") {
		t.Errorf("Boot of a VM that always dies: %v", err)
	}
	if got := countLines(t, runs); got != 2 {
		t.Errorf("QEMU ran %d times, want 2", got)
	}

	o, runs = fakeQEMU(t, `echo 'vaultnode firmware test starting'; exit 3`)
	vm, err := Boot(ctx, o, log.logf)
	if err != nil {
		t.Fatalf("Boot: %v", err)
	}
	_, err = vm.Expect(ctx, "VAULTNODE-READY")
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Expect on a VM that died after its banner: %v, want ErrExited with exit status 3", err)
	}
	if got := countLines(t, runs); got != 1 {
		t.Errorf("QEMU ran %d times, want 1: a death after the banner is not booted again", got)
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}
