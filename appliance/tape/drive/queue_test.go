package drive

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

func qblock(seed byte) []byte {
	b := make([]byte, 1000)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

// readAll rewinds and reads every block up to the first filemark or the
// end of data.
func readAll(t *testing.T, d *Drive) (blocks [][]byte, end error) {
	t.Helper()
	ctx := context.Background()
	if err := d.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := d.ReadBlock(ctx, buf)
		if err != nil {
			return blocks, err
		}
		blocks = append(blocks, bytes.Clone(buf[:n]))
	}
}

// TestBlockQueueErrorInFlight: four WRITEs outstanding, the second fails.
// Reap reports each block's own result in order (the drive still runs the
// two queued behind the failed one, as a real one does), the queue takes
// no more blocks, and the tape holds exactly the blocks reported written.
func TestBlockQueueErrorInFlight(t *testing.T) {
	ctx := context.Background()
	q := &emu.Queue{Tape: emu.NewTape("SN-Q", 0), Fail: map[int]bool{2: true}}
	// Through scsi.Retry, as the product opens drives.
	d := New(&scsi.Retry{Next: q, Clock: clock.Real{}}, nil)
	bq := d.Queue(4)
	if !bq.Queued() {
		t.Fatal("the queue did not find the handle's asynchronous interface through scsi.Retry")
	}
	for i := range 4 {
		if err := bq.Submit(ctx, qblock(byte(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := bq.Submit(ctx, qblock(9)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a fifth block in a queue of 4: %v, want ErrQueueFull", err)
	}
	if q.MaxQueued != 4 {
		t.Fatalf("%d WRITEs outstanding at most, want 4", q.MaxQueued)
	}
	var written [][]byte
	for want := int64(1); want <= 4; want++ {
		p, seq, err := bq.Reap(ctx)
		if seq != want || !bytes.Equal(p, qblock(byte(want))) {
			t.Fatalf("reaped block %d (%d bytes), want block %d", seq, len(p), want)
		}
		switch {
		case want == 2:
			if s, ok := scsi.AsSense(err); !ok || s.Key != scsi.KeyMediumError {
				t.Fatalf("block 2: %v, want the MEDIUM ERROR", err)
			}
		case err != nil:
			t.Fatalf("block %d: %v", want, err)
		default:
			written = append(written, p)
		}
		if want == 2 {
			if err := bq.Submit(ctx, qblock(9)); err == nil || bq.Err() == nil {
				t.Fatalf("a block submitted after a failed one was taken (%v)", err)
			}
		}
	}
	if bq.Outstanding() != 0 {
		t.Fatalf("%d outstanding after reaping all", bq.Outstanding())
	}
	got, end := readAll(t, d)
	if !errors.Is(end, ErrEndOfData) {
		t.Fatalf("after the blocks: %v, want end of data (no filemark)", end)
	}
	if len(got) != len(written) {
		t.Fatalf("%d blocks on tape, %d reported written", len(got), len(written))
	}
	for i := range got {
		if !bytes.Equal(got[i], written[i]) {
			t.Fatalf("block %d on tape is not the %d-th written", i+1, i+1)
		}
	}
	if q.Reused != 0 || q.ExecQueued != 0 {
		t.Fatalf("buffers changed while queued: %d; commands run while WRITEs were queued: %d", q.Reused, q.ExecQueued)
	}
}

// TestBlockQueueEarlyWarning: a block answered with the early warning is
// written; the queue goes on.
func TestBlockQueueEarlyWarning(t *testing.T) {
	ctx := context.Background()
	q := &emu.Queue{Tape: emu.NewTape("SN-Q", 0), EarlyWarning: map[int]bool{2: true, 3: true}}
	d := New(q, nil)
	bq := d.Queue(3)
	for i := range 3 {
		if err := bq.Submit(ctx, qblock(byte(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	for want := int64(1); want <= 3; want++ {
		_, _, err := bq.Reap(ctx)
		if (want >= 2) != errors.Is(err, ErrEarlyWarning) || err != nil && !errors.Is(err, ErrEarlyWarning) {
			t.Fatalf("block %d: %v", want, err)
		}
	}
	if err := bq.Submit(ctx, qblock(4)); err != nil {
		t.Fatalf("after an early warning: %v", err)
	}
	if _, _, err := bq.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := readAll(t, d); len(got) != 4 {
		t.Fatalf("%d blocks on tape, want 4", len(got))
	}
}

// TestBlockQueueSynchronous: a handle that cannot queue (the emulated
// drive alone) gets one WRITE per Submit, with the same results.
func TestBlockQueueSynchronous(t *testing.T) {
	ctx := context.Background()
	tp := emu.NewTape("SN-S", 0)
	d := New(tp, nil)
	bq := d.Queue(8)
	if bq.Queued() {
		t.Fatal("an emulated tape without Start/Finish reported as queueing")
	}
	tp.FailWritesAfter(1)
	if err := bq.Submit(ctx, qblock(1)); err != nil {
		t.Fatal(err)
	}
	if err := bq.Submit(ctx, qblock(2)); err != nil {
		t.Fatal(err)
	}
	if err := bq.Submit(ctx, qblock(3)); err == nil {
		t.Fatal("a block submitted after a failed one was taken")
	}
	if _, _, err := bq.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if _, seq, err := bq.Reap(ctx); err == nil || seq != 2 {
		t.Fatalf("block %d: %v, want block 2 failed", seq, err)
	}
}
