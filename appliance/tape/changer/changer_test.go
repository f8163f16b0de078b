package changer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/scsi"
	"vaultnode/internal/clock"
)

// catalog records only what Reconcile tells it: barcode -> address.
type catalog struct {
	at    map[string]uint16
	calls int
}

func (c *catalog) Reconcile(ctx context.Context, inv Inventory) error {
	c.calls++
	c.at = map[string]uint16{}
	for _, e := range inv.All() {
		if e.Full && e.Barcode != "" {
			c.at[e.Barcode] = e.Address
		}
	}
	return nil
}

// instant is a fake clock whose waits fire at once.
type instant struct{ *clock.Fake }

func (c instant) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

// library builds the hwtest's layout: picker 16, 8 slots from 1024
// (a cleaning cartridge in the last), IE 32, 2 drives at 1 and 2.
func library(t *testing.T) (*emu.Library, *Library) {
	t.Helper()
	e := emu.New(16)
	e.AddSlots(1024, "TAPE01L5", "TAPE02L5", "TAPE03L5", "", "", "-", "", "CLN001L1")
	e.AddIE(32)
	e.AddDrive(1, "SN-DRIVE-A")
	e.AddDrive(2, "SN-DRIVE-B")
	e.RejectType0 = true       // the changer must ask one type per request,
	e.PageLimit = 3            // page by starting address,
	e.RejectVoltagDVCID = true // and ask drive serials on their own
	h := &scsi.Retry{Next: e, Clock: instant{clock.NewFake(time.Unix(0, 0))}}
	return e, New(h, nil)
}

func TestInventory(t *testing.T) {
	_, l := library(t)
	inv, err := l.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var slots []string
	for _, s := range inv.Slots {
		slots = append(slots, s.String())
	}
	want := []string{"slot 1024 [TAPE01L5]", "slot 1025 [TAPE02L5]", "slot 1026 [TAPE03L5]", "slot 1027", "slot 1028",
		"slot 1029 [unlabelled cartridge]", "slot 1030", "slot 1031 [CLN001L1]"}
	if diff := cmp.Diff(want, slots); diff != "" {
		t.Errorf("slots (-want +got):\n%s", diff)
	}
	if len(inv.Transports) != 1 || inv.Transports[0].Address != 16 || len(inv.IE) != 1 || inv.IE[0].Address != 32 {
		t.Errorf("picker %v IE %v", inv.Transports, inv.IE)
	}
	if d, ok := inv.DriveBySerial("SN-DRIVE-B"); !ok || d.Address != 2 {
		t.Errorf("drive by serial: %v %v", d, ok)
	}
	if c := inv.Cleaning(); len(c) != 1 || c[0].Barcode != "CLN001L1" {
		t.Errorf("cleaning %v", c)
	}
}

func TestInventoryWithoutDVCID(t *testing.T) {
	e, l := library(t)
	e.RejectDVCID = true
	inv, err := l.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Drives) != 2 || inv.Drives[0].Serial != "" {
		t.Errorf("drives %+v", inv.Drives)
	}
}

func TestMove(t *testing.T) {
	ctx := context.Background()
	e, l := library(t)
	cat := &catalog{}
	if _, err := l.Sync(ctx, cat); err != nil {
		t.Fatal(err)
	}
	inv, err := l.Load(ctx, "TAPE02L5", 1, cat)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := inv.At(1); d.Barcode != "TAPE02L5" || !d.SourceValid || d.Source != 1025 {
		t.Errorf("drive after load: %+v", d)
	}
	if cat.at["TAPE02L5"] != 1 {
		t.Errorf("catalog has TAPE02L5 at %d", cat.at["TAPE02L5"])
	}
	if _, err := l.Unload(ctx, 1, cat); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.Where("TAPE02L5"); a != 1025 || cat.at["TAPE02L5"] != 1025 {
		t.Errorf("after unload: library %d catalog %d, want 1025 (its source slot)", a, cat.at["TAPE02L5"])
	}
}

func TestMoveRefusedBeforeTheMechanics(t *testing.T) {
	ctx := context.Background()
	e, l := library(t)
	cat := &catalog{}
	for name, tc := range map[string]struct {
		src, dst uint16
		want     error
	}{
		"source empty":       {1027, 1, ErrSourceEmpty},
		"destination full":   {1024, 1025, ErrDestFull},
		"no such element":    {1024, 999, ErrNoSuchElement},
		"picker as endpoint": {16, 1, ErrNoSuchElement},
	} {
		if _, err := l.Move(ctx, tc.src, tc.dst, cat); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if e.Moves() != 0 || cat.calls != 0 {
		t.Errorf("%d moves reached the library, catalog told %d times", e.Moves(), cat.calls)
	}
}

// The library itself refuses a bad move with the SMC sense codes.
func TestEmulatorRefusals(t *testing.T) {
	e, _ := library(t)
	for name, tc := range map[string]struct {
		src, dst       uint16
		key, asc, ascq byte
	}{
		"source empty":     {1027, 1, scsi.KeyIllegalRequest, 0x3B, 0x0E},
		"destination full": {1024, 1025, scsi.KeyIllegalRequest, 0x3B, 0x0D},
		"bad address":      {1024, 999, scsi.KeyIllegalRequest, 0x21, 0x01},
	} {
		c := scsi.MoveMedium(16, tc.src, tc.dst)
		r, err := e.Exec(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := scsi.AsSense(r.Err(c))
		if !s.Is(tc.key, tc.asc, tc.ascq) {
			t.Errorf("%s: sense %v", name, s)
		}
	}
}

// Physical truth first: a move the library fails halfway leaves the
// cartridge in the picker, and the catalog must say so, never "in the
// drive" (Bareos #2014, #1804, #2655).
func TestMoveFailsHalfway(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		fail    emu.MoveFailure
		wantAt  uint16
		wantErr bool
	}{
		{"stuck in picker", emu.MoveStuckInPicker, 16, true},
		{"not started", emu.MoveNotStarted, 1024, true},
		{"arrived despite error", emu.MoveDoneButError, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, l := library(t)
			cat := &catalog{}
			e.FailNextMove(tt.fail)
			_, err := l.Move(ctx, 1024, 1, cat)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if got, _ := e.Where("TAPE01L5"); got != tt.wantAt {
				t.Fatalf("emulator has TAPE01L5 at %d, want %d", got, tt.wantAt)
			}
			if cat.at["TAPE01L5"] != tt.wantAt {
				t.Errorf("catalog has TAPE01L5 at %d, library at %d", cat.at["TAPE01L5"], tt.wantAt)
			}
			if tt.wantErr {
				var me *MoveError
				if !errors.As(err, &me) || !errors.Is(err, ErrMoveFailed) || me.Where.Address != tt.wantAt {
					t.Fatalf("err = %#v", err)
				}
				if s, ok := scsi.AsSense(err); !ok || !s.Is(scsi.KeyHardwareError, 0x15, 0x01) {
					t.Errorf("sense %v %v", s, ok)
				}
				if !strings.Contains(err.Error(), "mechanical positioning error") {
					t.Errorf("message %q", err)
				}
			}
		})
	}
}

// If the library cannot be read after a failed move, the catalog is not
// touched at all; the next Sync tells it the truth.
func TestMoveStateUnknownLeavesCatalog(t *testing.T) {
	ctx := context.Background()
	e, l := library(t)
	cat := &catalog{}
	if _, err := l.Sync(ctx, cat); err != nil {
		t.Fatal(err)
	}
	calls := cat.calls
	h := &readFailAfterMove{Handle: l.h}
	l.h = h
	e.FailNextMove(emu.MoveStuckInPicker)
	_, err := l.Move(ctx, 1024, 1, cat)
	if !errors.Is(err, ErrStateUnknown) {
		t.Fatalf("err = %v", err)
	}
	if cat.calls != calls || cat.at["TAPE01L5"] != 1024 {
		t.Errorf("catalog told %d more times, has TAPE01L5 at %d", cat.calls-calls, cat.at["TAPE01L5"])
	}
	h.broken = false
	if _, err := l.Sync(ctx, cat); err != nil {
		t.Fatal(err)
	}
	if cat.at["TAPE01L5"] != 16 {
		t.Errorf("after sync catalog has %d, want the picker 16", cat.at["TAPE01L5"])
	}
}

// readFailAfterMove breaks the transport for every command after the
// first MOVE MEDIUM: the library is gone.
type readFailAfterMove struct {
	Handle
	moved, broken bool
}

var errGone = errors.New("library gone")

func (h *readFailAfterMove) Exec(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	if h.moved && h.broken {
		return scsi.Response{}, errGone
	}
	r, err := h.Handle.Exec(ctx, c)
	if c.CDB[0] == 0xA5 && !h.moved {
		h.moved, h.broken = true, true
	}
	return r, err
}

func TestImportExport(t *testing.T) {
	ctx := context.Background()
	e, l := library(t)
	cat := &catalog{}
	if _, err := l.Export(ctx, "TAPE03L5", cat); err != nil {
		t.Fatal(err)
	}
	if cat.at["TAPE03L5"] != 32 {
		t.Fatalf("catalog has TAPE03L5 at %d, want IE 32", cat.at["TAPE03L5"])
	}
	if _, err := l.Export(ctx, "TAPE01L5", cat); !errors.Is(err, ErrNoFreeSlot) {
		t.Errorf("second export into a full mail slot: %v", err)
	}
	// The operator takes it out and puts another one in; the library
	// raises a unit attention, which the retry layer absorbs.
	mustMove(t, e.Insert(32, "") != nil) // IE is full: refused
	if _, err := e.Exec(ctx, scsi.MoveMedium(16, 32, 1026)); err != nil {
		t.Fatal(err)
	}
	if err := e.Insert(32, "TAPE09L5"); err != nil {
		t.Fatal(err)
	}
	inv, err := l.Import(ctx, 32, cat)
	if err != nil {
		t.Fatal(err)
	}
	if a := cat.at["TAPE09L5"]; a != 1027 {
		t.Errorf("imported cartridge at %d, want first empty slot 1027", a)
	}
	if ie, _ := inv.At(32); ie.Full {
		t.Errorf("IE still full: %+v", ie)
	}
}

func mustMove(t *testing.T, ok bool) {
	t.Helper()
	if !ok {
		t.Fatal("emulator accepted an insert into a full element")
	}
}
