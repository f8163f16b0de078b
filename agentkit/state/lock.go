package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBusy means another synchronization of the configuration, in this
// process or another, holds its lock.
var ErrBusy = errors.New("configuration busy")

// BusyError says who holds a configuration's lock.
type BusyError struct {
	Config string
	PID    int // 0 when the holder did not record itself yet
}

func (e *BusyError) Error() string {
	who := "another process on this computer"
	switch {
	case e.PID == os.Getpid():
		who = "this process"
	case e.PID > 0:
		who = fmt.Sprintf("another process on this computer (pid %d)", e.PID)
	}
	return fmt.Sprintf("configuration %q is being synchronized by %s: wait for it to finish, or stop it", e.Config, who)
}

// Is makes errors.Is(err, ErrBusy) true.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// Lock is a configuration's lock: one synchronization at a time owns its
// cache, its temporary files, its system-state staging and its snapshots.
// The kernel releases it when its holder exits, killed or not, so a crash
// never leaves it held.
type Lock struct {
	Config string
	f      *os.File
}

// lockName is the lock's file in a configuration's directory; it holds the
// holder's process id.
const lockName = "lock"

// Lock takes the configuration's lock, or returns a *BusyError (ErrBusy)
// at once when a synchronization holds it.
func (d *Dir) Lock(config string) (*Lock, error) {
	dir, err := d.ConfigDir(config)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open the configuration's lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := os.ReadFile(path)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return nil, &BusyError{Config: config, PID: pid}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Who holds it, for the message of whoever finds it busy; the lock
	// itself is the flock, not this content.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{Config: config, f: f}, nil
}

// Release lets the next synchronization of the configuration run.
func (l *Lock) Release() error {
	l.f.Truncate(0)    // no stale process id for the next one to report
	return l.f.Close() // closing the descriptor releases the flock
}
