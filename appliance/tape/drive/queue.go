package drive

import (
	"context"
	"errors"
	"fmt"

	"vaultnode/appliance/tape/scsi"
)

// Queuer is a handle that can keep several commands outstanding on the
// device: Start issues one and returns, Finish collects the oldest one
// (*scsi.Device through the sg driver's write(2)/read(2) interface).
// Commands reach the device, and complete, in the order of Start.
type Queuer interface {
	Start(ctx context.Context, c scsi.Command) error
	Finish(ctx context.Context) (scsi.Response, error)
}

// queuer finds a Queuer under h (through decorators such as scsi.Retry
// that Unwrap). A queued WRITE is never retried: a drive that is becoming
// ready or reports a unit attention fails the stream, which the job then
// resumes cleanly (the torn file never got its filemark).
func queuer(h Handle) Queuer {
	for h != nil {
		if q, ok := h.(Queuer); ok {
			return q
		}
		u, ok := h.(interface{ Unwrap() scsi.Executor })
		if !ok {
			return nil
		}
		h = u.Unwrap()
	}
	return nil
}

// MaxDepth bounds a BlockQueue's depth (the sg driver's per-node queue).
const MaxDepth = scsi.MaxQueued

// BlockQueue writes blocks with up to depth WRITEs outstanding, so that
// the drive has the next WRITE as soon as it finishes one (a synchronous
// SG_IO leaves it idle while the kernel and the caller turn around).
// Blocks reach the tape in the order of Submit; Reap returns each block's
// buffer and result in that order. A buffer belongs to the queue from its
// Submit until Reap returned it: the device may read it until then.
//
// After the first block that failed (anything but the early warning) the
// queue takes no more blocks; the blocks already outstanding behind it run
// anyway (a device cannot take back a queued command), and Reap reports
// each one's own result, so the caller knows exactly which blocks the drive
// acknowledged. Their file is torn: it must never get its filemark.
//
// With a handle that cannot queue (an emulated drive, a decorator without
// Unwrap) or depth 1, each Submit is one synchronous WRITE.
type BlockQueue struct {
	d     *Drive
	q     Queuer // nil: synchronous
	depth int
	out   []outBlock // submitted, not reaped, oldest first
	seq   int64      // blocks submitted
	err   error      // the first failure: Submit refuses more blocks
}

type outBlock struct {
	p    []byte
	c    scsi.Command
	seq  int64 // 1-based number of the block in this queue
	err  error // synchronous: the result
	done bool  // synchronous: executed
}

// Queue returns a BlockQueue of depth (1 to MaxDepth) on the drive. The
// drive must not run other commands until every submitted block is
// reaped.
func (d *Drive) Queue(depth int) *BlockQueue {
	depth = max(1, min(depth, MaxDepth))
	b := &BlockQueue{d: d, depth: depth}
	if depth > 1 {
		b.q = queuer(d.h)
	}
	return b
}

// Depth is the most blocks the queue keeps outstanding.
func (b *BlockQueue) Depth() int { return b.depth }

// Outstanding is the blocks submitted and not reaped yet.
func (b *BlockQueue) Outstanding() int { return len(b.out) }

// Queued says whether the queue keeps several WRITEs outstanding (false:
// one synchronous WRITE per Submit).
func (b *BlockQueue) Queued() bool { return b.q != nil }

// Err is the first failure reaped or met by Submit, if any.
func (b *BlockQueue) Err() error { return b.err }

// ErrQueueFull: Submit with Depth blocks outstanding (Reap first).
var ErrQueueFull = errors.New("block queue full")

// Submit queues a WRITE of p as the next block. It fails without writing
// when the queue is full or a block failed before.
func (b *BlockQueue) Submit(ctx context.Context, p []byte) error {
	if b.err != nil {
		return fmt.Errorf("write block %d: not issued after an earlier failure: %w", b.seq+1, b.err)
	}
	if len(b.out) >= b.depth {
		return fmt.Errorf("write block %d: %w (%d outstanding)", b.seq+1, ErrQueueFull, len(b.out))
	}
	c, err := scsi.Write6(p)
	if err != nil {
		return err
	}
	o := outBlock{p: p, c: c, seq: b.seq + 1}
	if b.q == nil {
		o.err, o.done = b.d.WriteBlock(ctx, p), true
		if o.err != nil && !errors.Is(o.err, ErrEarlyWarning) {
			b.err = fmt.Errorf("block %d: %w", o.seq, o.err)
		}
	} else if err := b.q.Start(ctx, c); err != nil {
		// Not issued: the block is not on tape, and none may follow it.
		b.err = fmt.Errorf("block %d not issued: %w", o.seq, err)
		return fmt.Errorf("write block %d: %w", o.seq, err)
	}
	b.seq++
	b.out = append(b.out, o)
	return nil
}

// Reap waits for the oldest outstanding block and returns its buffer (now
// the caller's again) and its result as WriteBlock gives it: nil or
// ErrEarlyWarning (written), ErrEndOfMedium or another error (not
// written). seq is the block's number in this queue, from 1.
func (b *BlockQueue) Reap(ctx context.Context) (p []byte, seq int64, err error) {
	if len(b.out) == 0 {
		return nil, 0, errors.New("reap a block: none outstanding")
	}
	o := b.out[0]
	b.out[0] = outBlock{}
	b.out = b.out[1:]
	err = o.err
	if !o.done {
		resp, ferr := b.q.Finish(ctx)
		if ferr != nil {
			err = writeResult(fmt.Errorf("tape drive: %w", ferr))
		} else {
			err = writeResult(respErr(o.c, resp))
		}
		if err != nil && !errors.Is(err, ErrEarlyWarning) && b.err == nil {
			b.err = fmt.Errorf("block %d: %w", o.seq, err)
		}
	}
	return o.p, o.seq, err
}
