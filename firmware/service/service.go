// Package service supervises the appliance's long-running processes.
//
// The service set is data: a table of Specs (name, command, restart policy,
// dependencies, health check). A Supervisor starts each service once its
// dependencies are ready, restarts crashed services with exponential backoff,
// counts restarts, and marks a service failed once it crashed MaxCrashes
// times within Window, while the rest keep running. Shutdown stops services
// in reverse dependency order, each with a deadline (SIGTERM to its process
// group, then SIGKILL).
package service

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"vaultnode/firmware/reaper"
	"vaultnode/internal/clock"
)

// Restart says when a service that exited is started again.
type Restart int

const (
	// Forever restarts the service whenever it exits.
	Forever Restart = iota
	// Once runs the service a single time.
	Once
	// UntilSuccess restarts the service until it exits with status 0.
	UntilSuccess
)

func (r Restart) String() string {
	switch r {
	case Forever:
		return "forever"
	case Once:
		return "once"
	case UntilSuccess:
		return "until-success"
	}
	return fmt.Sprintf("restart(%d)", int(r))
}

// Spec describes one service.
type Spec struct {
	Name    string
	Command string
	Args    []string
	Env     []string // added to the firmware's environment
	Dir     string
	Restart Restart
	// Needs names services that must be ready first: running and healthy,
	// or, for Once and UntilSuccess services, finished successfully.
	Needs []string
	// Health, if set, is polled while the service runs; the service is
	// ready only once it returns nil.
	Health func(ctx context.Context) error
	// Secret names flags of Args whose values never reach the log (a
	// pair's join token): "-flag value" and "-flag=value" alike.
	Secret []string
}

// logArgs are sp.Args with the values of its Secret flags replaced.
func (sp *Spec) logArgs() []string {
	if len(sp.Secret) == 0 {
		return sp.Args
	}
	out := slices.Clone(sp.Args)
	for i := 0; i < len(out); i++ {
		for _, f := range sp.Secret {
			switch {
			case out[i] == f && i+1 < len(out):
				out[i+1] = "[redacted]"
				i++
			case strings.HasPrefix(out[i], f+"="):
				out[i] = f + "=[redacted]"
			}
		}
	}
	return out
}

// Policy holds the supervision parameters shared by every service.
type Policy struct {
	BackoffMin, BackoffMax time.Duration
	// MaxCrashes crashes within Window mark a service failed.
	MaxCrashes int
	Window     time.Duration
	// StopTimeout is how long a service has to exit after SIGTERM.
	StopTimeout    time.Duration
	HealthInterval time.Duration
}

// DefaultPolicy is the policy of the appliance.
func DefaultPolicy() Policy {
	return Policy{
		BackoffMin:     500 * time.Millisecond,
		BackoffMax:     30 * time.Second,
		MaxCrashes:     5,
		Window:         2 * time.Minute,
		StopTimeout:    10 * time.Second,
		HealthInterval: 2 * time.Second,
	}
}

// State is where a service is in its life.
type State string

const (
	Waiting State = "waiting" // for its dependencies
	Running State = "running"
	Backoff State = "backoff" // crashed, waiting to restart
	Done    State = "done"    // finished as its restart policy wants
	Exited  State = "exited"  // a Once service that failed
	Failed  State = "failed"  // crashed too often, given up
	Stopped State = "stopped" // stopped by shutdown
)

// Status is a snapshot of one service.
type Status struct {
	Name     string
	State    State
	Pid      int
	Checked  bool // the service has a health check
	Healthy  bool
	Restarts int
	Crashes  int
	LastExit string
	Since    time.Time
}

// Ready reports whether dependents may start.
func (s Status) Ready() bool { return s.State == Done || s.State == Running && s.Healthy }

// ErrInvalid is wrapped by New for a table that cannot run.
var ErrInvalid = errors.New("invalid service table")

// Supervisor runs a service table.
type Supervisor struct {
	log    *zap.Logger
	clk    clock.Clock
	reaper *reaper.Reaper
	policy Policy
	specs  []Spec // in dependency order

	mu      sync.Mutex
	status  map[string]*Status
	changed chan struct{} // closed and replaced on every change
}

// New checks the table (unique names, known dependencies, no cycles) and
// returns a Supervisor for it.
func New(log *zap.Logger, clk clock.Clock, r *reaper.Reaper, p Policy, specs []Spec) (*Supervisor, error) {
	ordered, err := order(specs)
	if err != nil {
		return nil, err
	}
	s := &Supervisor{log: log, clk: clk, reaper: r, policy: p, specs: ordered,
		status: map[string]*Status{}, changed: make(chan struct{})}
	for _, sp := range ordered {
		s.status[sp.Name] = &Status{Name: sp.Name, State: Waiting, Since: clk.Now(), Checked: sp.Health != nil}
	}
	return s, nil
}

// order sorts specs so that every service comes after its dependencies.
func order(specs []Spec) ([]Spec, error) {
	byName := map[string]Spec{}
	for _, sp := range specs {
		if sp.Name == "" || sp.Command == "" {
			return nil, fmt.Errorf("%w: service %q needs a name and a command", ErrInvalid, sp.Name)
		}
		if _, dup := byName[sp.Name]; dup {
			return nil, fmt.Errorf("%w: service %q is listed twice", ErrInvalid, sp.Name)
		}
		byName[sp.Name] = sp
	}
	var out []Spec
	mark := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch mark[name] {
		case 1:
			return fmt.Errorf("%w: dependency cycle %v", ErrInvalid, append(path, name))
		case 2:
			return nil
		}
		mark[name] = 1
		for _, d := range byName[name].Needs {
			if _, ok := byName[d]; !ok {
				return fmt.Errorf("%w: service %q needs unknown service %q", ErrInvalid, name, d)
			}
			if err := visit(d, append(path, name)); err != nil {
				return err
			}
		}
		mark[name] = 2
		out = append(out, byName[name])
		return nil
	}
	for _, sp := range specs {
		if err := visit(sp.Name, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Status returns a snapshot of every service, in table order.
func (s *Supervisor) Status() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, 0, len(s.specs))
	for _, sp := range s.specs {
		out = append(out, *s.status[sp.Name])
	}
	return out
}

// Changed returns a channel closed at the next status change.
func (s *Supervisor) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// WaitFor blocks until cond holds for the named service's status, or ctx ends.
func (s *Supervisor) WaitFor(ctx context.Context, name string, cond func(Status) bool) (Status, error) {
	for {
		s.mu.Lock()
		st, ok := s.status[name]
		if !ok {
			s.mu.Unlock()
			return Status{}, fmt.Errorf("wait for %s: no such service", name)
		}
		cur, ch := *st, s.changed
		s.mu.Unlock()
		if cond(cur) {
			return cur, nil
		}
		select {
		case <-ctx.Done():
			return cur, fmt.Errorf("wait for %s: %w", name, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Supervisor) update(name string, f func(*Status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status[name]
	old := *st
	f(st)
	if st.State != old.State {
		st.Since = s.clk.Now()
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Run starts the services and supervises them until ctx is done, then
// stops them in reverse dependency order and returns.
func (s *Supervisor) Run(ctx context.Context) {
	type running struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	rs := make([]running, len(s.specs))
	for i, sp := range s.specs {
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		rs[i] = running{cancel, make(chan struct{})}
		go func() { // owned by Run: cancelled and awaited below
			defer close(rs[i].done)
			s.supervise(sctx, sp)
		}()
	}
	<-ctx.Done()
	for i := len(rs) - 1; i >= 0; i-- {
		rs[i].cancel()
		<-rs[i].done
	}
}

func (s *Supervisor) depsReady(sp Spec) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range sp.Needs {
		if !s.status[d].Ready() {
			return false
		}
	}
	return true
}

func (s *Supervisor) supervise(ctx context.Context, sp Spec) {
	log := s.log.With(zap.String("service", sp.Name))
	var crashes []time.Time
	consecutive := 0
	for {
		for !s.depsReady(sp) {
			ch := s.Changed()
			if s.depsReady(sp) {
				break
			}
			select {
			case <-ctx.Done():
				s.update(sp.Name, func(st *Status) { st.State = Stopped })
				return
			case <-ch:
			}
		}
		started := s.clk.Now()
		exit, err := s.runOnce(ctx, log, sp)
		if ctx.Err() != nil {
			s.update(sp.Name, func(st *Status) { st.State, st.Pid, st.Healthy = Stopped, 0, false })
			log.Info("service stopped")
			return
		}
		lastExit := ""
		if err != nil {
			lastExit = err.Error()
		} else if e := exit.Err(); e != nil {
			lastExit = e.Error()
		} else {
			lastExit = "exit status 0"
		}
		ok := err == nil && exit.Err() == nil
		switch {
		case sp.Restart == Once && ok, sp.Restart == UntilSuccess && ok:
			s.update(sp.Name, func(st *Status) { st.State, st.Pid, st.Healthy, st.LastExit = Done, 0, false, lastExit })
			log.Info("service finished")
			return
		case sp.Restart == Once:
			s.update(sp.Name, func(st *Status) { st.State, st.Pid, st.Healthy, st.LastExit = Exited, 0, false, lastExit })
			log.Warn("service exited", zap.String("exit", lastExit))
			return
		}
		now := s.clk.Now()
		if now.Sub(started) >= s.policy.Window {
			consecutive = 0
		}
		consecutive++
		crashes = append(crashes, now)
		for len(crashes) > 0 && now.Sub(crashes[0]) > s.policy.Window {
			crashes = crashes[1:]
		}
		if len(crashes) >= s.policy.MaxCrashes {
			s.update(sp.Name, func(st *Status) {
				st.State, st.Pid, st.Healthy, st.LastExit = Failed, 0, false, lastExit
				st.Crashes++
			})
			log.Error("service failed: crashed too often, not restarting",
				zap.Int("crashes", len(crashes)), zap.Duration("window", s.policy.Window), zap.String("exit", lastExit))
			return
		}
		wait := s.policy.BackoffMin << (consecutive - 1)
		if wait > s.policy.BackoffMax || wait <= 0 {
			wait = s.policy.BackoffMax
		}
		s.update(sp.Name, func(st *Status) {
			st.State, st.Pid, st.Healthy, st.LastExit = Backoff, 0, false, lastExit
			st.Crashes++
		})
		log.Warn("service crashed, restarting", zap.String("exit", lastExit), zap.Duration("backoff", wait))
		t := s.clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			s.update(sp.Name, func(st *Status) { st.State = Stopped })
			return
		case <-t.C():
		}
		s.update(sp.Name, func(st *Status) { st.Restarts++ })
	}
}

// runOnce starts the service, follows its health and waits for it to exit
// or for ctx to end (then stops it).
func (s *Supervisor) runOnce(ctx context.Context, log *zap.Logger, sp Spec) (reaper.Exit, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return reaper.Exit{}, fmt.Errorf("make pipe: %w", err)
	}
	cmd := exec.Command(sp.Command, sp.Args...)
	cmd.Env = append(os.Environ(), sp.Env...)
	cmd.Dir = sp.Dir
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pid, done, err := s.reaper.Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		return reaper.Exit{}, err
	}
	s.update(sp.Name, func(st *Status) { st.State, st.Pid, st.Healthy = Running, pid, sp.Health == nil })
	log.Info("service started", zap.Int("pid", pid), zap.String("command", sp.Command), zap.Strings("args", sp.logArgs()))

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by runOnce: ends at EOF, after the process group is gone
		defer wg.Done()
		copyLines(log, pr)
	}()
	hctx, hcancel := context.WithCancel(ctx)
	if sp.Health != nil {
		wg.Add(1)
		go func() { // owned by runOnce: cancelled below
			defer wg.Done()
			s.watchHealth(hctx, log, sp)
		}()
	}
	defer func() {
		hcancel()
		_ = unix.Kill(-pid, unix.SIGKILL) // leftovers of the group
		wg.Wait()
		pr.Close()
	}()

	select {
	case e := <-done:
		return e, nil
	case <-ctx.Done():
	}
	_ = unix.Kill(-pid, unix.SIGTERM)
	t := s.clk.NewTimer(s.policy.StopTimeout)
	defer t.Stop()
	select {
	case e := <-done:
		return e, nil
	case <-t.C():
		log.Warn("service did not stop in time, killing it", zap.Duration("deadline", s.policy.StopTimeout))
		_ = unix.Kill(-pid, unix.SIGKILL)
		return <-done, nil
	}
}

func (s *Supervisor) watchHealth(ctx context.Context, log *zap.Logger, sp Spec) {
	interval := s.policy.HealthInterval / 4 // quicker until first healthy
	for {
		t := s.clk.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := sp.Health(cctx)
		cancel()
		healthy := err == nil
		var was bool
		s.update(sp.Name, func(st *Status) { was, st.Healthy = st.Healthy, healthy })
		if healthy != was {
			if healthy {
				log.Info("service healthy")
			} else {
				log.Warn("service unhealthy", zap.Error(err))
			}
		}
		if healthy {
			interval = s.policy.HealthInterval
		}
	}
}

func copyLines(log *zap.Logger, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		log.Info(sc.Text())
	}
}
