package emu

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"vaultnode/appliance/tape/scsi"
)

func write(t *testing.T, tp *Tape, p []byte) scsi.Response {
	t.Helper()
	c, err := scsi.Write6(p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tp.Exec(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mark(t *testing.T, tp *Tape) {
	t.Helper()
	c, _ := scsi.WriteFilemarks(1)
	if r, err := tp.Exec(context.Background(), c); err != nil || r.Status != scsi.StatusGood {
		t.Fatalf("write filemark: %+v %v", r, err)
	}
}

// A cartridge moved into an attached drive is loaded there; its image
// keeps what reached the tape; a failing drive loses its buffer (the
// blocks after the last filemark) and nothing before it.
func TestMediaImageAndLostBuffer(t *testing.T) {
	dir := t.TempDir()
	l := New(16)
	l.AddSlots(1024, "TAPE01L5")
	l.AddDrive(1, "SN-A")
	l.KeepMedia(dir)
	tp := NewEmptyTape("SN-A")
	l.AttachDrive(1, tp)
	ctx := context.Background()
	if r, _ := l.Exec(ctx, scsi.MoveMedium(16, 1024, 1)); r.Status != scsi.StatusGood {
		t.Fatalf("load: %+v", r)
	}
	write(t, tp, []byte("one"))
	mark(t, tp)
	write(t, tp, []byte("two"))
	tp.FailWritesAfter(1)
	write(t, tp, []byte("three"))
	if r := write(t, tp, []byte("four")); r.Status != scsi.StatusCheckCondition || r.Sense[2]&0x0F != scsi.KeyHardwareError {
		t.Fatalf("failing write: %+v", r)
	}
	// Still threaded: the library refuses to take it.
	if r, _ := l.Exec(ctx, scsi.MoveMedium(16, 1, 1024)); r.Status == scsi.StatusGood {
		t.Fatal("moved a cartridge the drive still holds")
	}
	if r, _ := tp.Exec(ctx, scsi.LoadUnload(false)); r.Status != scsi.StatusGood {
		t.Fatalf("unload: %+v", r)
	}
	if r, _ := l.Exec(ctx, scsi.MoveMedium(16, 1, 1024)); r.Status != scsi.StatusGood {
		t.Fatalf("move back: %+v", r)
	}
	m, err := OpenMedia(filepath.Join(dir, "TAPE01L5.img"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Files() != 1 {
		t.Fatalf("image holds %d filemarks, want 1", m.Files())
	}
	b, err := m.ReadFile(0)
	if err != nil || !bytes.Equal(b, []byte("one")) {
		t.Fatalf("file 0: %q %v", b, err)
	}
	if _, err := m.ReadFile(1); err == nil {
		t.Fatal("the lost buffer reached the image")
	}
}
