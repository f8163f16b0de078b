package tape

import (
	"context"
	"errors"
	"sync/atomic"

	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/format"
)

// streamDepth is how many full blocks wait for the drive while the job
// fills the next: enough that the drive always has a WRITE ready when
// the previous one returns, small enough that an early warning is seen
// within a few MiB.
const streamDepth = 4

// streamBuffers is every block buffer of a stream: one being written by
// the drive, streamDepth queued and one being filled.
const streamBuffers = streamDepth + 2

// blockStream is the daily job's block writer as a pipeline: the job (the
// producer) fills format.RecordSize blocks and queues them; one goroutine
// (the stream's writer, owned by the stream: Close and abort wait for it)
// writes them to the drive one after the other, so that the drive does not
// wait for the job's reading and the job does not wait for the drive.
// Every block is exactly RecordSize bytes, the last one padded with zeros
// (docs/tape.md: tgt corrupts reads of shorter blocks). The buffers are
// reused from file to file: nothing is allocated per block.
//
// The first error of either side stops both: a drive error is returned by
// the producer's next Write or by Close; abort (the producer failed) stops
// the writer after its current WRITE. Only the job's goroutine calls the
// methods, and it uses the drive only when no stream is open.
type blockStream struct {
	cur    []byte      // the block being filled
	full   chan []byte // filled blocks, in order, for the writer
	free   chan []byte // written blocks, for the producer to fill again
	done   chan struct{}
	stop   chan struct{}
	cancel context.CancelFunc
	werr   error // the writer's error; read after done is closed

	queued int64 // bytes in whole blocks handed to the writer
	warn   atomic.Bool
	err    error // the producer's sticky error
	ended  bool  // the writer was told to stop (Close or abort)
	closed bool  // full is closed (Close)
}

// newStream starts a stream to dev with the buffers in spare (allocating
// what is missing).
func newStream(ctx context.Context, dev format.BlockDevice, spare [][]byte) *blockStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &blockStream{full: make(chan []byte, streamDepth), free: make(chan []byte, streamBuffers),
		done: make(chan struct{}), stop: make(chan struct{}), cancel: cancel}
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
	go s.write(ctx, dev)
	return s
}

// write is the writer goroutine.
func (s *blockStream) write(ctx context.Context, dev format.BlockDevice) {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			return
		case b, ok := <-s.full:
			if !ok {
				return
			}
			select {
			case <-s.stop:
				return
			default:
			}
			err := dev.WriteBlock(ctx, b)
			if errors.Is(err, drive.ErrEarlyWarning) {
				s.warn.Store(true)
				err = nil
			}
			if err != nil {
				s.werr = err
				return
			}
			s.free <- b // never blocks: free holds every buffer
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
	select {
	case s.full <- s.cur:
	case <-s.done:
		return s.failed()
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
// (for a block up to streamDepth blocks back): finish the file and go on
// on the next cartridge.
func (s *blockStream) EarlyWarning() bool { return s.warn.Load() }

// Written is the bytes of whole blocks handed to the drive; after a
// successful Close, every one of them is written.
func (s *blockStream) Written() int64 { return s.queued }

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

// abort stops the writer after its current WRITE (if it still runs) and
// gives back the buffers for the next stream.
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
