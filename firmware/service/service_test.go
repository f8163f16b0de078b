package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/reaper"
	"vaultnode/internal/clock"
)

func testPolicy() Policy {
	return Policy{BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxCrashes: 3,
		Window: time.Minute, StopTimeout: 200 * time.Millisecond, HealthInterval: 20 * time.Millisecond}
}

// start runs a supervisor over specs until the test ends.
func start(t *testing.T, specs []Spec) *Supervisor {
	t.Helper()
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	r := reaper.New(log)
	rctx, rcancel := context.WithCancel(context.Background()) // outlives the supervisor
	rdone := make(chan struct{})
	go func() { defer close(rdone); r.Run(rctx) }()
	s, err := New(log, clock.Real{}, r, testPolicy(), specs)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; rcancel(); <-rdone })
	return s
}

func waitState(t *testing.T, s *Supervisor, name string, want State) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.WaitFor(ctx, name, func(st Status) bool { return st.State == want })
	if err != nil {
		t.Fatalf("%s never reached %s (now %+v): %v", name, want, st, err)
	}
	return st
}

func TestTableValidation(t *testing.T) {
	tests := []struct {
		name  string
		specs []Spec
		ok    bool
	}{
		{"empty", nil, true},
		{"chain", []Spec{{Name: "b", Command: "x", Needs: []string{"a"}}, {Name: "a", Command: "x"}}, true},
		{"duplicate", []Spec{{Name: "a", Command: "x"}, {Name: "a", Command: "y"}}, false},
		{"unknown dependency", []Spec{{Name: "a", Command: "x", Needs: []string{"nope"}}}, false},
		{"cycle", []Spec{{Name: "a", Command: "x", Needs: []string{"b"}}, {Name: "b", Command: "x", Needs: []string{"a"}}}, false},
		{"no command", []Spec{{Name: "a"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(zaptest.NewLogger(t), clock.Real{}, nil, testPolicy(), tt.specs)
			if (err == nil) != tt.ok {
				t.Fatalf("New: err=%v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			if tt.name == "chain" && s.Status()[0].Name != "a" {
				t.Fatalf("dependency not ordered first: %+v", s.Status())
			}
		})
	}
}

func TestRestartPolicies(t *testing.T) {
	dir := t.TempDir()
	counter := filepath.Join(dir, "n")
	// fails twice, then succeeds
	flaky := `n=$(cat ` + counter + ` 2>/dev/null || echo 0); n=$((n+1)); echo $n > ` + counter + `; [ $n -ge 3 ]`
	s := start(t, []Spec{
		{Name: "crasher", Command: "/bin/sh", Args: []string{"-c", "echo boom; exit 3"}, Restart: Forever},
		{Name: "steady", Command: "/bin/sleep", Args: []string{"1000"}, Restart: Forever},
		{Name: "oneshot", Command: "/bin/true", Restart: Once},
		{Name: "oneshot-bad", Command: "/bin/false", Restart: Once},
		{Name: "flaky", Command: "/bin/sh", Args: []string{"-c", flaky}, Restart: UntilSuccess},
	})
	tests := []struct {
		name              string
		state             State
		restarts, crashes int
	}{
		{"crasher", Failed, 2, 3},
		{"oneshot", Done, 0, 0},
		{"oneshot-bad", Exited, 0, 0},
		{"flaky", Done, 2, 2},
		{"steady", Running, 0, 0},
	}
	for _, tt := range tests {
		st := waitState(t, s, tt.name, tt.state)
		if st.Restarts != tt.restarts || st.Crashes != tt.crashes {
			t.Errorf("%s: restarts=%d crashes=%d, want %d and %d", tt.name, st.Restarts, st.Crashes, tt.restarts, tt.crashes)
		}
	}
	if st := waitState(t, s, "crasher", Failed); st.LastExit != "exit status 3" {
		t.Errorf("crasher last exit %q", st.LastExit)
	}
}

func TestDependenciesWaitForHealth(t *testing.T) {
	dir := t.TempDir()
	flag := filepath.Join(dir, "healthy")
	marker := filepath.Join(dir, "b-started")
	s := start(t, []Spec{
		{Name: "b", Command: "/bin/sh", Args: []string{"-c", "touch " + marker + "; exec sleep 1000"}, Needs: []string{"a"}},
		{Name: "a", Command: "/bin/sleep", Args: []string{"1000"}, Health: func(context.Context) error {
			_, err := os.Stat(flag)
			return err
		}},
	})
	waitState(t, s, "a", Running)
	if st := s.Status(); st[1].State != Waiting {
		t.Fatalf("b started before a was healthy: %+v", st)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("b ran before a was healthy")
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitState(t, s, "b", Running)
}

func TestStopKillsStubbornService(t *testing.T) {
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := reaper.New(log)
	go r.Run(ctx)
	s, err := New(log, clock.Real{}, r, testPolicy(), []Spec{
		{Name: "stubborn", Command: "/bin/sh", Args: []string{"-c", "trap '' TERM; while :; do sleep 0.01; done"}},
		{Name: "polite", Command: "/bin/sleep", Args: []string{"1000"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(sctx) }()
	st := waitState(t, s, "stubborn", Running)
	waitState(t, s, "polite", Running)
	stop()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after stop")
	}
	for _, st := range s.Status() {
		if st.State != Stopped {
			t.Errorf("%s is %s after stop", st.Name, st.State)
		}
	}
	if err := unix.Kill(st.Pid, 0); err == nil {
		t.Errorf("process %d still alive", st.Pid)
	}
}

func TestReapsOrphans(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become subreaper: %v", err)
	}
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := reaper.New(log)
	go r.Run(ctx)
	// The shell exits at once, leaving its background child to us.
	out, err := r.Output(ctx, execCommand("/bin/sh", "-c", "(sleep 0.05 &) ; echo hi"))
	if err != nil || string(out) != "hi\n" {
		t.Fatalf("output %q, %v", out, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for r.Orphans() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("orphan never reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLogArgsRedactsSecrets: a Secret flag's value (a join token) never
// reaches the "service started" line, in either flag form; Args run as given.
func TestLogArgsRedactsSecrets(t *testing.T) {
	sp := Spec{Args: []string{"-data", "/d", "-pair-join", "vnpair1.tok", "-x", "-pair-join=vnpair1.tok2", "-pair-join"}, Secret: []string{"-pair-join"}}
	got := strings.Join(sp.logArgs(), " ")
	if strings.Contains(got, "vnpair1") {
		t.Fatalf("logged args %q hold the token", got)
	}
	if want := "-data /d -pair-join [redacted] -x -pair-join=[redacted] -pair-join"; got != want {
		t.Fatalf("logged args %q, want %q", got, want)
	}
	if sp.Args[3] != "vnpair1.tok" {
		t.Fatalf("the command's own args changed: %q", sp.Args)
	}
}
