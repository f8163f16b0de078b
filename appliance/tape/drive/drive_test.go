package drive

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

type instant struct{ *clock.Fake }

func (c instant) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

func newDrive(t *testing.T, quirks bool) (*emu.Tape, *Drive) {
	t.Helper()
	return newDriveOn(t, quirks, false)
}

func newDriveOn(t *testing.T, quirks, zeroResid bool) (*emu.Tape, *Drive) {
	t.Helper()
	tape := emu.NewTape("SN-DRIVE-A", 3)
	tape.TgtQuirks, tape.ZeroResid = quirks, zeroResid
	return tape, New(&scsi.Retry{Next: tape, Clock: instant{clock.NewFake(time.Unix(0, 0))}}, nil)
}

func block(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// The LAB.md sequence: variable WRITE(6) of 1000 B, 64 KiB and 12 B, a
// filemark, REWIND, READ back byte-exact, READ into the filemark, SPACE,
// SPACE to EOD; on an emulated drive that behaves like a real one and on
// one with tgt's quirks (ILI with SILI, resid 0, READ POSITION stub).
func TestWriteReadBack(t *testing.T) {
	for _, tc := range []struct {
		name              string
		quirks, zeroResid bool
	}{{"ssc", false, false}, {"ssc behind qemu scsi-generic", false, true}, {"tgt", true, true}} {
		quirks := tc.quirks
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, d := newDriveOn(t, tc.quirks, tc.zeroResid)
			if err := d.Ready(ctx); err != nil { // 3 x "becoming ready", retried
				t.Fatal(err)
			}
			if err := d.SetVariable(ctx); err != nil {
				t.Fatal(err)
			}
			id, err := d.Identify(ctx)
			if err != nil || id.Serial != "SN-DRIVE-A" || id.PeripheralType != scsi.TypeSequential {
				t.Fatalf("identity %+v, %v", id, err)
			}
			file1 := [][]byte{block(1000, 1), block(65536, 2), block(12, 3)}
			file2 := [][]byte{block(300, 4)}
			for _, f := range [][][]byte{file1, file2} {
				for _, b := range f {
					if err := d.WriteBlock(ctx, b); err != nil {
						t.Fatal(err)
					}
				}
				if err := d.WriteFilemarks(ctx, 1); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 256<<10)
			for i, want := range file1 {
				n, err := d.ReadBlock(ctx, buf)
				if err != nil {
					t.Fatalf("block %d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], want) {
					t.Fatalf("block %d: read %d bytes, want %d identical", i, n, len(want))
				}
			}
			if _, err := d.ReadBlock(ctx, buf); !errors.Is(err, ErrFilemark) {
				t.Fatalf("read at filemark: %v", err)
			}
			n, err := d.ReadBlock(ctx, buf)
			if err != nil || !bytes.Equal(buf[:n], file2[0]) {
				t.Fatalf("first block of file 2: %d, %v", n, err)
			}
			if err := d.SpaceEOD(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ReadBlock(ctx, buf); !errors.Is(err, ErrEndOfData) {
				t.Fatalf("read at EOD: %v", err)
			}
			if err := d.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.SpaceFiles(ctx, 1); err != nil {
				t.Fatal(err)
			}
			pos, err := d.Position(ctx)
			// Reaching file 1 from anywhere: with LOCATE where the block
			// is known, by REWIND + SPACE where it is not (tgt).
			m, merr := d.MarkHere(ctx, 1)
			if merr != nil || m.BlockKnown == quirks || m.File != 1 {
				t.Fatalf("mark of file 1: %+v, %v", m, merr)
			}
			if err := d.SpaceEOD(ctx); err != nil {
				t.Fatal(err)
			}
			if err := d.SeekFile(ctx, m); err != nil {
				t.Fatal(err)
			}
			if n, err := d.ReadBlock(ctx, buf); err != nil || !bytes.Equal(buf[:n], file2[0]) {
				t.Fatalf("after seek to file 1: %d, %v", n, err)
			}
			if quirks {
				if !errors.Is(err, scsi.ErrPositionUnknown) {
					t.Fatalf("tgt READ POSITION stub taken as %+v, %v", pos, err)
				}
				// A caller that has a block number from elsewhere still
				// gets there: LOCATE refused, SPACE used.
				if err := d.SeekFile(ctx, Mark{File: 1, Block: 4, BlockKnown: true}); err != nil {
					t.Fatal(err)
				}
				if n, err := d.ReadBlock(ctx, buf); err != nil || !bytes.Equal(buf[:n], file2[0]) {
					t.Fatalf("after seek to file 1 without LOCATE: %d, %v", n, err)
				}
				if err := d.Locate(ctx, 1); !errors.Is(err, ErrUnsupported) {
					t.Errorf("LOCATE on tgt: %v, want ErrUnsupported", err)
				}
				if _, err := d.TapeAlerts(ctx); !errors.Is(err, ErrUnsupported) {
					t.Errorf("TapeAlert on tgt: %v, want ErrUnsupported", err)
				}
				return
			}
			if err != nil || pos != (scsi.Position{Block: 4, File: 1}) {
				t.Fatalf("position %+v, %v", pos, err)
			}
			// LOCATE straight to the 64 KiB block of file 1.
			if err := d.Locate(ctx, 1); err != nil {
				t.Fatal(err)
			}
			if n, err := d.ReadBlock(ctx, buf); err != nil || !bytes.Equal(buf[:n], file1[1]) {
				t.Fatalf("after locate: %d, %v", n, err)
			}
			if err := d.Locate(ctx, 99); !errors.Is(err, ErrEndOfData) {
				t.Errorf("locate past EOD: %v", err)
			}
		})
	}
}

func TestReadBlockTooLarge(t *testing.T) {
	ctx := context.Background()
	_, d := newDrive(t, false)
	if err := d.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteBlock(ctx, block(5000, 9)); err != nil {
		t.Fatal(err)
	}
	if err := d.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := d.ReadBlock(ctx, buf)
	if !errors.Is(err, ErrBlockTooLarge) || n != 4096 || !bytes.Equal(buf, block(5000, 9)[:4096]) {
		t.Fatalf("n %d err %v", n, err)
	}
}

func TestEndOfMedium(t *testing.T) {
	ctx := context.Background()
	tape, d := newDrive(t, false)
	tape.Capacity, tape.EarlyWarning = 10000, 6000
	if err := d.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := d.WriteBlock(ctx, block(3000, 1)); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	if err := d.WriteBlock(ctx, block(3000, 1)); !errors.Is(err, ErrEarlyWarning) {
		t.Fatalf("past early warning: %v", err)
	}
	if err := d.WriteBlock(ctx, block(3000, 1)); !errors.Is(err, ErrEndOfMedium) {
		t.Fatalf("past capacity: %v", err)
	}
}

func TestNotReadyAndAlerts(t *testing.T) {
	ctx := context.Background()
	tape, d := newDrive(t, false)
	if err := d.Unload(ctx); err != nil {
		t.Fatal(err)
	}
	err := d.Ready(ctx)
	if s, ok := scsi.AsSense(err); !ok || !s.Is(scsi.KeyNotReady, 0x3A, 0) {
		t.Fatalf("no cartridge: %v", err)
	}
	tape.SetAlert(20)
	tape.SetAlert(4)
	got, err := d.TapeAlerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{4, 20}, []int{got[0].Flag, got[1].Flag}); diff != "" || len(got) != 2 {
		t.Errorf("alerts %v", got)
	}
}

// A drive without MODE SELECT(10) (tgt) in fixed-block mode is put in
// variable mode with MODE SELECT(6).
func TestSetVariableModeSelect6(t *testing.T) {
	ctx := context.Background()
	tape, d := newDrive(t, true)
	c, _ := scsi.ModeSelect6BlockSize(512)
	if r, err := tape.Exec(ctx, c); err != nil || r.Status != scsi.StatusGood {
		t.Fatalf("set fixed mode: %+v, %v", r, err)
	}
	if bd, err := d.Mode(ctx); err != nil || bd.BlockLength != 512 {
		t.Fatalf("mode %+v, %v", bd, err)
	}
	if err := d.SetVariable(ctx); err != nil {
		t.Fatal(err)
	}
	if bd, err := d.Mode(ctx); err != nil || bd.BlockLength != 0 {
		t.Fatalf("mode after SetVariable %+v, %v", bd, err)
	}
}

// TestWriteAfterReset: a WRITE the drive answers with a unit attention
// after a reset is ErrPositionLost, through the handle the product uses
// (scsi.Retry) and through the queue, and is not executed: the tape stays
// at its beginning, where the reset left it, holding what was flushed.
func TestWriteAfterReset(t *testing.T) {
	ctx := context.Background()
	for _, depth := range []int{1, 4} {
		tape, d := newDrive(t, false)
		if err := d.Ready(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteBlock(ctx, block(100, 1)); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteFilemarks(ctx, 1); err != nil {
			t.Fatal(err)
		}
		tape.Reset()
		q := d.Queue(depth)
		if err := q.Submit(ctx, block(200, 2)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := q.Reap(ctx); !errors.Is(err, ErrPositionLost) {
			t.Fatalf("depth %d: WRITE after a reset: %v", depth, err)
		}
		if err := d.Rewind(ctx); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1000)
		if n, err := d.ReadBlock(ctx, buf); err != nil || !bytes.Equal(buf[:n], block(100, 1)) {
			t.Fatalf("depth %d: first block after the refused WRITE: %d bytes, %v", depth, n, err)
		}
	}
}
