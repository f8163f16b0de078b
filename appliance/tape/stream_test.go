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
		s := newStream(ctx, d, spare)
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
	s := newStream(ctx, drive.New(tp, nil), nil)
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
	s := newStream(context.Background(), dev, nil)
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
