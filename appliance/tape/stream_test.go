package tape

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"vaultnode/appliance/tape/drive"
	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/format"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// TestStreamBlocks: what goes through the pipeline reaches the drive in
// order, in blocks of exactly RecordSize, the last one padded with zeros;
// the buffers are reused by the next stream.
func TestStreamBlocks(t *testing.T) {
	ctx := context.Background()
	tp := emu.NewTape("SN-STREAM", 0)
	d := drive.New(tp, nil)
	data := make([]byte, 11*format.RecordSize+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	var spare [][]byte
	for file := range 2 {
		s := newStream(ctx, clock.Real{}, d, spare)
		for p := data; len(p) > 0; {
			n := min(len(p), 1+r.IntN(300<<10))
			if _, err := s.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if got, want := s.Written(), int64(12*format.RecordSize); got != want {
			t.Fatalf("file %d: written %d, want %d", file, got, want)
		}
		if s.EarlyWarning() {
			t.Fatalf("file %d: early warning on a blank cartridge", file)
		}
		if err := d.WriteFilemarks(ctx, 1); err != nil {
			t.Fatal(err)
		}
		spare = s.abort()
		if len(spare) != streamBuffers {
			t.Fatalf("file %d: %d buffers back, want %d", file, len(spare), streamBuffers)
		}
	}
	if err := d.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(data), make([]byte, 12*format.RecordSize-len(data))...)
	buf := make([]byte, 2*format.RecordSize)
	for file := range 2 {
		var got []byte
		for {
			n, err := d.ReadBlock(ctx, buf)
			if errors.Is(err, drive.ErrFilemark) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != format.RecordSize {
				t.Fatalf("file %d: a block of %d bytes", file, n)
			}
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("file %d: %d bytes read back differ from the %d written", file, len(got), len(want))
		}
	}
}

// TestStreamDriveError: a drive that fails mid-file stops the producer
// with the drive's error, and the early warning reaches it.
func TestStreamDriveError(t *testing.T) {
	ctx := context.Background()
	tp := emu.NewTape("SN-STREAM", 0)
	tp.EarlyWarning = 2 * format.RecordSize
	tp.FailWritesAfter(5)
	s := newStream(ctx, clock.Real{}, drive.New(tp, nil), nil)
	blk := make([]byte, format.RecordSize)
	var err error
	for range 100 {
		if _, err = s.Write(blk); err != nil {
			break
		}
	}
	if err == nil {
		err = s.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "hardware error") {
		t.Fatalf("write to a failing drive: %v", err)
	}
	if !s.EarlyWarning() {
		t.Fatal("early warning before the failure not reported")
	}
	if _, err2 := s.Write(blk); err2 == nil {
		t.Fatal("write after the drive failed succeeded")
	}
	s.abort()
}

// blockingDev holds every WRITE until release is closed, counting them.
type blockingDev struct {
	release chan struct{}
	writes  *atomic.Int32
}

func (b blockingDev) WriteBlock(ctx context.Context, p []byte) error {
	<-b.release
	b.writes.Add(1)
	return nil
}

func (b blockingDev) ReadBlock(ctx context.Context, buf []byte) (int, error) {
	return 0, errors.New("no reads")
}

// TestStreamAbort: abort with the queue full stops the writer after the
// WRITE it is in; the queued blocks never reach the drive.
func TestStreamAbort(t *testing.T) {
	dev := blockingDev{release: make(chan struct{}), writes: new(atomic.Int32)}
	s := newStream(context.Background(), clock.Real{}, dev, nil)
	blk := make([]byte, format.RecordSize)
	for range streamDepth {
		if _, err := s.Write(blk); err != nil {
			t.Fatal(err)
		}
	}
	spare := make(chan [][]byte)
	go func() { spare <- s.abort() }()
	<-s.stop // abort closes stop, then waits for the WRITE in progress
	close(dev.release)
	back := <-spare
	if n := dev.writes.Load(); n > 1 {
		t.Fatalf("%d blocks written after abort, want at most the one in progress", n)
	}
	if len(back) < streamBuffers-1 {
		t.Fatalf("%d buffers back after abort, want at least %d", len(back), streamBuffers-1)
	}
	if _, err := s.Write(blk); err == nil {
		t.Fatal("write after abort succeeded")
	}
}

// TestStreamQueued: through a drive that keeps several WRITEs outstanding,
// the blocks reach the tape in order and whole, up to streamInFlight are
// outstanding at once, and no buffer is refilled before the drive finished
// its WRITE (the emulated queue compares each block at its start and its
// end).
func TestStreamQueued(t *testing.T) {
	ctx := context.Background()
	q := &emu.Queue{Tape: emu.NewTape("SN-QUEUE", 0)}
	d := drive.New(q, nil)
	data := make([]byte, 40*format.RecordSize+777)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	s := newStreamDepth(ctx, clock.Real{}, d, nil, streamInFlight) // the queue's own behaviour
	for p := data; len(p) > 0; {
		n := min(len(p), 1+r.IntN(600<<10))
		if _, err := s.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFilemarks(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if back := s.abort(); len(back) != streamBuffers {
		t.Fatalf("%d buffers back, want %d", len(back), streamBuffers)
	}
	if q.Reused != 0 || q.ExecQueued != 0 {
		t.Fatalf("%d buffers changed while their WRITE was queued; %d commands ran while WRITEs were queued", q.Reused, q.ExecQueued)
	}
	if q.MaxQueued < 2 || q.MaxQueued > streamInFlight {
		t.Fatalf("at most %d WRITEs outstanding, want 2 to %d", q.MaxQueued, streamInFlight)
	}
	if err := d.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(data), make([]byte, 41*format.RecordSize-len(data))...)
	var got []byte
	buf := make([]byte, 2*format.RecordSize)
	for {
		n, err := d.ReadBlock(ctx, buf)
		if errors.Is(err, drive.ErrFilemark) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%d bytes read back differ from the %d written", len(got), len(want))
	}
}

// TestStreamQueuedErrorInFlight: four WRITEs outstanding and the second
// fails. The stream stops with that block's error, says how many blocks
// the drive had behind it and wrote anyway, gets every buffer back only
// after all four WRITEs finished, and the tape holds no filemark: the torn
// file is never closed, so nothing of it is recorded.
func TestStreamQueuedErrorInFlight(t *testing.T) {
	ctx := context.Background()
	release := make(chan struct{})
	var once bool
	q := &emu.Queue{Tape: emu.NewTape("SN-QUEUE", 0), Fail: map[int]bool{2: true}}
	q.Started = func(int) {
		if !once { // hold the first WRITE until all four blocks are queued
			once = true
			<-release
		}
	}
	d := drive.New(q, nil)
	s := newStreamDepth(ctx, clock.Real{}, d, nil, streamInFlight) // the queue's own behaviour
	blk := make([]byte, format.RecordSize)
	for i := range 4 {
		blk[0] = byte(i + 1)
		if _, err := s.Write(blk); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	err := s.Close()
	if err == nil || !strings.Contains(err.Error(), "block 2 of the file") || !strings.Contains(err.Error(), "2 more blocks queued behind it and wrote 2 of them") {
		t.Fatalf("close after the 2nd of 4 WRITEs failed: %v", err)
	}
	if sn, ok := scsi.AsSense(err); !ok || sn.Key != scsi.KeyMediumError {
		t.Fatalf("the drive's sense is lost from %v", err)
	}
	if q.MaxQueued != 4 {
		t.Fatalf("%d WRITEs were outstanding, want 4", q.MaxQueued)
	}
	if _, err := s.Write(blk); err == nil {
		t.Fatal("write after the failure succeeded")
	}
	if back := s.abort(); len(back) != streamBuffers {
		t.Fatalf("%d buffers back, want %d", len(back), streamBuffers)
	}
	if q.Reused != 0 {
		t.Fatalf("%d buffers changed while their WRITE was queued", q.Reused)
	}
	// On tape: block 1, then 3 and 4 (run by the drive after 2 failed), and
	// no filemark.
	if err := d.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2*format.RecordSize)
	var firsts []byte
	for {
		n, err := d.ReadBlock(ctx, buf)
		if err != nil {
			if !errors.Is(err, drive.ErrEndOfData) {
				t.Fatalf("after %v: %v, want the end of data", firsts, err)
			}
			break
		}
		if n != format.RecordSize {
			t.Fatalf("a block of %d bytes", n)
		}
		firsts = append(firsts, buf[0])
	}
	if !bytes.Equal(firsts, []byte{1, 3, 4}) {
		t.Fatalf("blocks %v on tape, want [1 3 4]", firsts)
	}
}

// TestStreamQueuedAbort: abort with WRITEs outstanding issues no more and
// returns the buffers only once those finished.
func TestStreamQueuedAbort(t *testing.T) {
	ctx := context.Background()
	release := make(chan struct{})
	var once bool
	q := &emu.Queue{Tape: emu.NewTape("SN-QUEUE", 0)}
	q.Started = func(int) {
		if !once {
			once = true
			<-release
		}
	}
	d := drive.New(q, nil)
	s := newStreamDepth(ctx, clock.Real{}, d, nil, streamInFlight) // the queue's own behaviour
	blk := make([]byte, format.RecordSize)
	for range 3 {
		if _, err := s.Write(blk); err != nil {
			t.Fatal(err)
		}
	}
	spare := make(chan [][]byte)
	go func() { spare <- s.abort() }()
	<-s.stop
	close(release)
	back := <-spare
	if len(back) != streamBuffers {
		t.Fatalf("%d buffers back after abort, want %d", len(back), streamBuffers)
	}
	if q.Reused != 0 {
		t.Fatalf("%d buffers changed while their WRITE was queued", q.Reused)
	}
	if got, err := d.Position(ctx); err != nil || got.Block > 1 {
		t.Fatalf("%d blocks written after abort (%v), want at most the one issued", got.Block, err)
	}
}
