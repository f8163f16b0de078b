package tape

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"

	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
	"vaultnode/internal/clock"
)

// streamDepth is how many full blocks wait for the writer while the job
// fills the next: enough that the writer always has a block ready when the
// drive finishes one, small enough that an early warning is seen within a
// few MiB.
const streamDepth = 4

// streamInFlight is how many WRITEs a stream may keep outstanding on a
// drive that can queue them (drive.BlockQueue over the sg driver's
// asynchronous interface), and so how many buffers sit at the drive.
// Measured in the lab (docs/tape.md, BenchmarkTapeWritePaths): 4 queued
// WRITEs with direct I/O had the best median over two runs.
const streamInFlight = 4

// streamDepthDrive is how many WRITEs the tape job keeps outstanding: one.
// The WRITEs go out with the SIMPLE task attribute (the sg driver gives
// no other), and a transport may run SIMPLE commands in any order. In the
// lab (tgt over iSCSI) four queued WRITEs reached the tape out of order in
// about one run in ten of TestTapeJob: a block three places early, and a
// tar member came back cut in two (docs/tape.md, "A block out of order").
// The order of the blocks is the format; speed comes after it.
const streamDepthDrive = 1

// streamBuffers is every block buffer of a stream: streamInFlight at the
// drive, streamDepth queued and one being filled.
const streamBuffers = streamInFlight + streamDepth + 1

// blockQueue is how the stream's writer hands blocks to the drive:
// *drive.BlockQueue (several WRITEs outstanding, or one synchronous WRITE
// per block when the drive's handle cannot queue).
type blockQueue interface {
	Submit(ctx context.Context, p []byte) error
	Reap(ctx context.Context) (p []byte, seq int64, err error)
	Outstanding() int
	Depth() int
}

// queueDrive is a drive that gives a blockQueue (*drive.Drive).
type queueDrive interface {
	Queue(depth int) *drive.BlockQueue
}

// syncQueue is a blockQueue of depth 1 over any BlockDevice.
type syncQueue struct {
	dev format.BlockDevice
	p   []byte
	err error
	seq int64
	out bool
}

func (q *syncQueue) Submit(ctx context.Context, p []byte) error {
	if q.out {
		return drive.ErrQueueFull
	}
	q.seq++
	q.p, q.err, q.out = p, q.dev.WriteBlock(ctx, p), true
	return nil
}

func (q *syncQueue) Reap(context.Context) ([]byte, int64, error) {
	if !q.out {
		return nil, 0, errors.New("reap a block: none outstanding")
	}
	p := q.p
	q.p, q.out = nil, false
	return p, q.seq, q.err
}

func (q *syncQueue) Outstanding() int {
	if q.out {
		return 1
	}
	return 0
}

func (q *syncQueue) Depth() int { return 1 }

// blockStream is the daily job's block writer as a pipeline: the job (the
// producer) fills format.RecordSize blocks and queues them; one goroutine
// (the stream's writer, owned by the stream: Close and abort wait for it)
// hands them to the drive in order, keeping up to streamInFlight WRITEs
// outstanding, so that the drive does not wait for the job's reading nor
// for the turnaround of each command, and the job does not wait for the
// drive. Every block is exactly RecordSize bytes, the last one padded with
// zeros (docs/tape.md: tgt corrupts reads of shorter blocks). The buffers
// are reused from file to file: nothing is allocated per block. A buffer
// goes back to the producer only once the drive completed its WRITE (with
// direct I/O the device reads it until then).
//
// The first error of either side stops both: a drive error is returned by
// the producer's next Write or by Close; abort (the producer failed) stops
// the writer from issuing more WRITEs and waits for those outstanding. A
// failed block stops the stream; the WRITEs already queued behind it still
// run (a device cannot take them back) and the error says how many of them
// the drive acknowledged: the file is torn either way and never gets its
// filemark, so nothing of it is recorded. Only the job's goroutine calls
// the methods, and it uses the drive only when no stream is open.
type blockStream struct {
	cur    []byte      // the block being filled
	full   chan []byte // filled blocks, in order, for the writer
	free   chan []byte // written blocks, for the producer to fill again
	done   chan struct{}
	stop   chan struct{}
	cancel context.CancelFunc
	werr   error // the writer's error; read after done is closed

	queued int64 // bytes in whole blocks handed to the writer
	now    func() time.Time
	first  time.Time // when the first block was handed to the writer
	warn   atomic.Bool
	err    error // the producer's sticky error
	ended  bool  // the writer was told to stop (Close or abort)
	closed bool  // full is closed (Close)
	// sums, when keepSums was set before the first Write, holds each
	// block's XXH64 in order, for reading the file back: it finds blocks
	// changed, lost or out of place by accident (the tape path is not an
	// adversary's; the chunks in them carry their own authentication), at
	// memory speed even in the lab's emulated guest, where BLAKE3 halved
	// the job's streaming rate.
	keepSums bool
	sums     []uint64
}

// newStream starts a stream to dev with the buffers in spare (allocating
// what is missing).
func newStream(ctx context.Context, clk clock.Clock, dev format.BlockDevice, spare [][]byte) *blockStream {
	return newStreamDepth(ctx, clk, dev, spare, streamDepthDrive)
}

// newStreamDepth is newStream keeping up to depth (1 to streamInFlight)
// WRITEs outstanding on a drive that can queue them.
func newStreamDepth(ctx context.Context, clk clock.Clock, dev format.BlockDevice, spare [][]byte, depth int) *blockStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &blockStream{full: make(chan []byte, streamDepth), free: make(chan []byte, streamBuffers),
		done: make(chan struct{}), stop: make(chan struct{}), cancel: cancel, now: clk.Now}
	for i := range streamBuffers {
		var b []byte
		if i < len(spare) {
			b = spare[i][:0]
		} else {
			b = make([]byte, 0, format.RecordSize)
		}
		if i == 0 {
			s.cur = b
		} else {
			s.free <- b
		}
	}
	var q blockQueue = &syncQueue{dev: dev}
	if qd, ok := dev.(queueDrive); ok {
		q = qd.Queue(max(1, min(depth, streamInFlight)))
	}
	go s.write(ctx, q)
	return s
}

// write is the writer goroutine.
func (s *blockStream) write(ctx context.Context, q blockQueue) {
	defer close(s.done)
	var (
		failed         error // the first block that failed
		behind, wrote  int   // blocks reaped after it, and of those written
		stopped, drain bool
	)
	reap := func() {
		p, seq, err := q.Reap(ctx)
		if p != nil {
			s.free <- p[:0] // never blocks: free holds every buffer
		}
		ok := err == nil || errors.Is(err, drive.ErrEarlyWarning)
		if errors.Is(err, drive.ErrEarlyWarning) {
			s.warn.Store(true)
		}
		switch {
		case failed != nil:
			behind++
			if ok {
				wrote++
			}
		case !ok:
			failed = fmt.Errorf("block %d of the file: %w", seq, err)
		}
	}
	for {
		if failed != nil || drain {
			for q.Outstanding() > 0 {
				reap()
			}
			switch {
			case failed != nil && behind > 0:
				s.werr = fmt.Errorf("%w; the drive had %d more blocks queued behind it and wrote %d of them: the file is torn and gets no filemark", failed, behind, wrote)
			case failed != nil:
				s.werr = failed
			case stopped:
				// abort: no error of the writer's own
			}
			return
		}
		if q.Outstanding() >= q.Depth() {
			reap()
			continue
		}
		var b []byte
		ok := true
		if q.Outstanding() == 0 {
			select {
			case <-s.stop:
				stopped, drain = true, true
				continue
			case b, ok = <-s.full:
			}
		} else {
			select {
			case <-s.stop:
				stopped, drain = true, true
				continue
			case b, ok = <-s.full:
			default:
				reap() // nothing to issue: collect the oldest WRITE meanwhile
				continue
			}
		}
		if !ok {
			drain = true
			continue
		}
		select {
		case <-s.stop:
			s.free <- b[:0]
			stopped, drain = true, true
			continue
		default:
		}
		if err := q.Submit(ctx, b); err != nil {
			s.free <- b[:0]
			// The blocks before it come first: a failure among them is
			// the one to report (the queue refuses blocks after it).
			for failed == nil && q.Outstanding() > 0 {
				reap()
			}
			if failed == nil {
				failed = fmt.Errorf("issue a block of the file: %w", err)
			}
		}
	}
}

// Write buffers p and queues every full block.
func (s *blockStream) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	done := 0
	for len(p) > 0 {
		k := copy(s.cur[len(s.cur):format.RecordSize], p)
		s.cur = s.cur[:len(s.cur)+k]
		p, done = p[k:], done+k
		if len(s.cur) == format.RecordSize {
			if err := s.send(); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

// send queues the filled block and takes an empty one.
func (s *blockStream) send() error {
	if s.keepSums {
		s.sums = append(s.sums, xxhash.Sum64(s.cur))
	}
	select {
	case s.full <- s.cur:
	case <-s.done:
		return s.failed()
	}
	if s.queued == 0 {
		s.first = s.now()
	}
	s.queued += format.RecordSize
	select {
	case s.cur = <-s.free:
		s.cur = s.cur[:0]
		return nil
	case <-s.done:
		s.cur = nil
		return s.failed()
	}
}

// failed is the error once the writer stopped on its own.
func (s *blockStream) failed() error {
	s.err = s.werr
	if s.err == nil {
		s.err = errors.New("tape block writer stopped")
	}
	return s.err
}

// EarlyWarning says the drive reported the end of medium early warning
// (for a block up to streamDepth+streamInFlight blocks back): finish the
// file and go on on the next cartridge.
func (s *blockStream) EarlyWarning() bool { return s.warn.Load() }

// Written is the bytes of whole blocks handed to the drive; after a
// successful Close, every one of them is written.
func (s *blockStream) Written() int64 { return s.queued }

// FirstQueued is when the first block was handed to the writer (zero
// before): the start of the file's streaming.
func (s *blockStream) FirstQueued() time.Time { return s.first }

// Sums is each block's XXH64, in the order handed to the drive (nil
// unless keepSums was set before the first Write).
func (s *blockStream) Sums() []uint64 { return s.sums }

// Pending is the bytes buffered in the block being filled.
func (s *blockStream) Pending() int { return len(s.cur) }

// Close pads the last block with zeros, queues it and waits until the
// drive wrote every block. It does not write the filemark: that is the
// caller's commit step.
func (s *blockStream) Close() error {
	if s.err != nil {
		return s.err
	}
	if len(s.cur) > 0 {
		clear(s.cur[len(s.cur):format.RecordSize])
		s.cur = s.cur[:format.RecordSize]
		if err := s.send(); err != nil {
			return err
		}
	}
	s.ended, s.closed = true, true
	close(s.full)
	<-s.done
	s.cancel()
	if s.werr != nil {
		s.err = s.werr
		return s.err
	}
	s.err = errors.New("tape block stream closed")
	return nil
}

// abort stops the writer from issuing more WRITEs, waits for those
// outstanding (if it still runs) and gives back the buffers for the next
// stream.
func (s *blockStream) abort() [][]byte {
	if !s.ended {
		s.ended = true
		close(s.stop)
		s.cancel()
		<-s.done
		if s.err == nil {
			s.err = errors.New("tape block stream aborted")
		}
	}
	spare := make([][]byte, 0, streamBuffers)
	if s.cur != nil {
		spare = append(spare, s.cur)
		s.cur = nil
	}
	for len(s.free) > 0 {
		spare = append(spare, <-s.free)
	}
	for !s.closed && len(s.full) > 0 {
		spare = append(spare, <-s.full)
	}
	return spare
}
