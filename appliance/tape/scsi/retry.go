package scsi

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"vaultnode/internal/clock"
)

// Executor runs one command. *Device implements it on Linux; tests use an
// emulated device.
type Executor interface {
	Exec(ctx context.Context, c Command) (Response, error)
}

// Retry is an Executor decorator that repeats a command the device did not
// execute: while the unit reports "becoming ready" (2/04/01) or "operation
// in progress" (2/04/07), while it is BUSY, and a few times after a UNIT
// ATTENTION (reset, medium changed, door opened), which reports an event
// and not a failure of the command. Every other answer is passed through.
//
// A command that acts at the current position (Command.Relative: READ,
// WRITE, WRITE FILEMARKS, SPACE) is repeated only while the unit is BUSY:
// a unit attention or "not ready" means the drive was reset or its
// cartridge changed, its position and block mode may be lost, and the
// caller must find its place again (the tape job stops, and the next one
// resumes after the last complete file). Linux's st driver does the same:
// after a reset it refuses to write until the tape is repositioned.
type Retry struct {
	Next  Executor
	Clock clock.Clock
	Log   *zap.Logger
	// ReadyWait bounds the total wait for a unit becoming ready (default
	// 10 minutes: an LTO drive threading a cartridge takes under 2).
	ReadyWait time.Duration
	// Interval between tries while not ready (default 1 s).
	Interval time.Duration
	// MaxAttention bounds the retries after UNIT ATTENTION (default 4).
	MaxAttention int
}

// Exec runs c, retrying as documented on Retry.
func (r *Retry) Exec(ctx context.Context, c Command) (Response, error) {
	wait, interval, maxUA := r.ReadyWait, r.Interval, r.MaxAttention
	if wait <= 0 {
		wait = 10 * time.Minute
	}
	if interval <= 0 {
		interval = time.Second
	}
	if maxUA <= 0 {
		maxUA = 4
	}
	log := r.Log
	if log == nil {
		log = zap.NewNop()
	}
	var waited time.Duration
	attention := 0
	for {
		resp, err := r.Next.Exec(ctx, c)
		if err != nil {
			return resp, err
		}
		pause := false
		switch resp.Status {
		case StatusBusy, StatusTaskSetFull:
			pause = true
		case StatusCheckCondition:
			s, perr := ParseSense(resp.Sense)
			if perr != nil {
				return resp, nil
			}
			switch {
			case c.LosesPosition(s):
				log.Warn("unit attention or not ready during a positional command: the position may be lost, not repeating it",
					zap.String("command", c.Name()), zap.Stringer("sense", s))
				return resp, nil
			case s.Key == KeyUnitAttention:
				attention++
				if attention > maxUA {
					return resp, nil
				}
				log.Info("unit attention, repeating command", zap.String("command", c.Name()), zap.Stringer("sense", s))
				continue
			case s.BecomingReady() || s.Is(KeyNotReady, 0x04, 0x07):
				pause = true
			}
		}
		if !pause {
			return resp, nil
		}
		if waited >= wait {
			log.Warn("unit still not ready, giving up", zap.String("command", c.Name()), zap.Duration("waited", waited))
			return resp, nil
		}
		select {
		case <-ctx.Done():
			return Response{}, fmt.Errorf("wait for unit to become ready for %s: %w", c.Name(), ctx.Err())
		case <-r.Clock.After(interval):
		}
		waited += interval
	}
}

// Unwrap returns the decorated executor (the drive reaches the sg
// driver's asynchronous interface through it: queued WRITEs are not
// retried, see drive.BlockQueue).
func (r *Retry) Unwrap() Executor { return r.Next }
