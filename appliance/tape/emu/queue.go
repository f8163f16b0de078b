package emu

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"vaultnode/appliance/tape/scsi"
)

// Queue is a drive handle with the sg driver's asynchronous interface
// over a Tape (drive.Queuer): Start takes a command and returns, Finish
// runs the oldest one on the Tape and answers it. Commands thus run in
// order and later than issued, as queued WRITEs do, while the caller
// already fills other buffers.
//
// It checks what a real device relies on: a command's data must not change
// between Start and Finish (the device reads it, with direct I/O, until the
// command completes; a changed buffer is counted in Reused and answered
// with a transport error), and no synchronous Exec may run while commands
// are queued (counted in ExecQueued).
type Queue struct {
	Tape *Tape
	// Fail answers the WRITEs with these numbers (from 1) with MEDIUM
	// ERROR (3/0C/00, write error) without writing them; EarlyWarning
	// writes them and answers the early warning (NO SENSE, EOM, 0/00/02).
	Fail, EarlyWarning map[int]bool
	// Started, if set, is called after each Start with the number of
	// commands outstanding.
	Started func(outstanding int)

	mu         sync.Mutex
	pending    []pendingCmd
	writes     int
	Reused     int
	ExecQueued int
	MaxQueued  int
}

type pendingCmd struct {
	c     scsi.Command
	data  []byte // a copy of c.Data at Start
	write int    // WRITE number, 0 for other commands
}

// Exec runs c at once.
func (q *Queue) Exec(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	q.mu.Lock()
	if len(q.pending) > 0 {
		q.ExecQueued++
		n := len(q.pending)
		q.mu.Unlock()
		return scsi.Response{}, fmt.Errorf("%s with %d commands queued: %w", c.Name(), n, scsi.ErrTransport)
	}
	q.mu.Unlock()
	return q.Tape.Exec(ctx, c)
}

// Start queues c.
func (q *Queue) Start(ctx context.Context, c scsi.Command) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	q.mu.Lock()
	p := pendingCmd{c: c, data: bytes.Clone(c.Data)}
	if len(c.CDB) > 0 && c.CDB[0] == 0x0A {
		q.writes++
		p.write = q.writes
	}
	q.pending = append(q.pending, p)
	n := len(q.pending)
	q.MaxQueued = max(q.MaxQueued, n)
	started := q.Started
	q.mu.Unlock()
	if started != nil {
		started(n)
	}
	return nil
}

// Finish runs the oldest queued command and answers it.
func (q *Queue) Finish(ctx context.Context) (scsi.Response, error) {
	q.mu.Lock()
	if len(q.pending) == 0 {
		q.mu.Unlock()
		return scsi.Response{}, fmt.Errorf("finish: no command queued: %w", scsi.ErrTransport)
	}
	p := q.pending[0]
	q.pending = q.pending[1:]
	if !bytes.Equal(p.data, p.c.Data) {
		q.Reused++
		q.mu.Unlock()
		return scsi.Response{}, fmt.Errorf("%s: its buffer changed while it was queued: %w", p.c.Name(), scsi.ErrTransport)
	}
	fail, warn := q.Fail[p.write], q.EarlyWarning[p.write]
	q.mu.Unlock()
	if fail {
		return sense(scsi.KeyMediumError, 0x0C, 0x00), nil
	}
	r, err := q.Tape.Exec(ctx, p.c)
	if err == nil && r.Status == scsi.StatusGood && warn {
		return streamSense(scsi.KeyNoSense, 0, 0x02, false, true, false, 0), nil
	}
	return r, err
}
