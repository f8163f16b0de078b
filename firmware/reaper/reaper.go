// Package reaper starts child processes and reaps every exited child,
// including orphans re-parented to PID 1.
//
// os/exec's Wait races with a PID 1 that reaps with wait4(-1), so every
// process the firmware starts goes through a Reaper: it registers the pid
// under the same lock the reaping loop takes, so no exit is ever lost or
// stolen. Commands must have nil or *os.File standard streams (no copying
// goroutines inside os/exec); Output gives the combined output through a pipe.
package reaper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Exit is how a started process ended.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// Err is nil for a clean exit, otherwise an error describing it.
func (e Exit) Err() error {
	switch {
	case e.Status.Exited() && e.Status.ExitStatus() == 0:
		return nil
	case e.Status.Exited():
		return fmt.Errorf("exit status %d", e.Status.ExitStatus())
	case e.Status.Signaled():
		return fmt.Errorf("killed by signal %v", e.Status.Signal())
	default:
		return fmt.Errorf("wait status %#x", uint32(e.Status))
	}
}

// Reaper owns the reaping of child processes.
type Reaper struct {
	log *zap.Logger

	mu      sync.Mutex
	waiters map[int]chan Exit
	orphans int
}

// New returns a Reaper; call Run to start reaping.
func New(log *zap.Logger) *Reaper {
	return &Reaper{log: log, waiters: map[int]chan Exit{}}
}

// Orphans is the number of exited processes reaped that nobody started
// through this Reaper.
func (r *Reaper) Orphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// Run reaps children on every SIGCHLD until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	defer signal.Stop(ch)
	for {
		r.reap()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if w, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			w <- Exit{Pid: pid, Status: ws}
			continue
		}
		r.orphans++
		r.log.Debug("reaped orphan", zap.Int("pid", pid), zap.Uint32("status", uint32(ws)))
	}
}

// Start starts cmd and returns its pid and a channel that receives its exit
// once. cmd.Stdin, Stdout and Stderr must be nil or *os.File. The caller
// must not use cmd.Process afterwards: it is released once the exit is reaped.
func (r *Reaper) Start(cmd *exec.Cmd) (int, <-chan Exit, error) {
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		switch f.(type) {
		case nil, *os.File:
		default:
			return 0, nil, fmt.Errorf("start %s: standard streams must be files", cmd.Path)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	ch := make(chan Exit, 1)
	r.waiters[pid] = ch
	// The process handle (a pidfd) is not needed: the exit comes from wait4.
	proc := cmd.Process
	out := make(chan Exit, 1)
	go func() { // ends when the process exits and is reaped
		e := <-ch
		_ = proc.Release()
		out <- e
	}()
	return pid, out, nil
}

// Wait starts cmd and waits for it; on ctx done it kills the process.
func (r *Reaper) Wait(ctx context.Context, cmd *exec.Cmd) error {
	pid, done, err := r.Start(cmd)
	if err != nil {
		return err
	}
	select {
	case e := <-done:
		return e.Err()
	case <-ctx.Done():
		_ = unix.Kill(pid, unix.SIGKILL)
		<-done
		return ctx.Err()
	}
}

// Output runs cmd and returns its combined standard output and error.
func (r *Reaper) Output(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("make pipe: %w", err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	pid, done, err := r.Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	var buf bytes.Buffer
	copied := make(chan struct{})
	go func() { // ends when every holder of the pipe's write end is gone
		_, _ = io.Copy(&buf, pr)
		close(copied)
	}()
	var e Exit
	select {
	case e = <-done:
	case <-ctx.Done():
		_ = unix.Kill(pid, unix.SIGKILL)
		e = <-done
	}
	select { // a daemonised grandchild may keep the pipe open
	case <-copied:
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	pr.Close()
	<-copied
	if ctx.Err() != nil {
		return buf.Bytes(), fmt.Errorf("run %s: %w", cmd.Path, ctx.Err())
	}
	if err := e.Err(); err != nil {
		return buf.Bytes(), fmt.Errorf("run %s: %w: %s", cmd.Path, err, bytes.TrimSpace(buf.Bytes()))
	}
	return buf.Bytes(), nil
}
