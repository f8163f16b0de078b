package discover

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"vaultnode/appliance/tape/emu"
	"vaultnode/appliance/tape/scsi"
)

// disk answers INQUIRY as a disk: not a changer or a drive.
type disk struct{}

func (disk) Exec(ctx context.Context, c scsi.Command) (scsi.Response, error) {
	return scsi.Response{Status: scsi.StatusGood, Transferred: copy(c.Data, make([]byte, 36))}, nil
}

// changerInq answers INQUIRY as a changer, the rest from the library.
type changerInq struct{ *emu.Library }

func (c changerInq) Exec(ctx context.Context, cmd scsi.Command) (scsi.Response, error) {
	if cmd.CDB[0] == 0x12 {
		d := make([]byte, 36)
		d[0] = scsi.TypeChanger
		copy(d[8:], "VAULTEMU")
		copy(d[16:], "EMULATED-CHANGER")
		return scsi.Response{Status: scsi.StatusGood, Transferred: copy(cmd.Data, d)}, nil
	}
	return c.Library.Exec(ctx, cmd)
}

func opener(devs map[string]Handle) Opener {
	return func(p string) (Handle, func() error, error) {
		h, ok := devs[p]
		if !ok {
			return nil, nil, fmt.Errorf("open %s: no such device", p)
		}
		return h, func() error { return nil }, nil
	}
}

// The drives' device order is the opposite of their bays: only the serial
// numbers pair them. A third bay is empty, a drive of another library is
// standalone, a disk is ignored, a dead node is a problem and no more.
func TestScanMatchesBySerial(t *testing.T) {
	lib := emu.New(16)
	lib.AddSlots(1024, "TAPE01L5", "")
	lib.AddDrive(1, "SN-A")
	lib.AddDrive(2, "SN-B")
	lib.AddDrive(3, "") // empty bay: no DVCID
	lib.RejectType0 = true
	devs := map[string]Handle{
		"/dev/sg0": disk{},
		"/dev/sg1": emu.NewTape("SN-B", 0),
		"/dev/sg2": changerInq{lib},
		"/dev/sg3": emu.NewTape("SN-OTHER", 0),
		"/dev/sg4": emu.NewTape("SN-A", 0),
	}
	paths := []string{"/dev/sg0", "/dev/sg1", "/dev/sg2", "/dev/sg3", "/dev/sg4", "/dev/sg5"}
	res, err := Scan(context.Background(), nil, opener(devs), paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Libraries) != 1 {
		t.Fatalf("libraries %+v", res.Libraries)
	}
	l := res.Libraries[0]
	got := map[uint16]string{}
	for _, d := range l.Drives {
		got[d.Element] = d.Device.Path + " " + d.Device.Serial
	}
	want := map[uint16]string{1: "/dev/sg4 SN-A", 2: "/dev/sg1 SN-B"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("drives (-want +got):\n%s", diff)
	}
	if len(l.Unmatched) != 1 || l.Unmatched[0].Element != 3 || l.Unmatched[0].Serial != "" {
		t.Errorf("unmatched %+v", l.Unmatched)
	}
	if len(res.Standalone) != 1 || res.Standalone[0].Path != "/dev/sg3" {
		t.Errorf("standalone %+v", res.Standalone)
	}
	if len(res.Problems) != 1 {
		t.Errorf("problems %q", res.Problems)
	}
	if l.Changer.Path != "/dev/sg2" || l.Changer.Model != "EMULATED-CHANGER" {
		t.Errorf("changer %+v", l.Changer)
	}
}

// A library that refuses DVCID has no serials: its drives stay unmatched
// (with the reason), never paired by device order.
func TestScanWithoutDVCIDDoesNotGuess(t *testing.T) {
	lib := emu.New(16)
	lib.AddSlots(1024, "TAPE01L5")
	lib.AddDrive(1, "SN-A")
	lib.RejectDVCID = true
	devs := map[string]Handle{"/dev/sg0": changerInq{lib}, "/dev/sg1": emu.NewTape("SN-A", 0)}
	res, err := Scan(context.Background(), nil, opener(devs), []string{"/dev/sg0", "/dev/sg1"})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Libraries[0]
	if len(l.Drives) != 0 || len(l.Unmatched) != 1 || len(res.Standalone) != 1 {
		t.Fatalf("drives %+v unmatched %+v standalone %+v", l.Drives, l.Unmatched, res.Standalone)
	}
}

func TestScanNoLibrary(t *testing.T) {
	devs := map[string]Handle{"/dev/sg0": emu.NewTape("SN-A", 0)}
	res, err := Scan(context.Background(), nil, opener(devs), []string{"/dev/sg0"})
	if !errors.Is(err, ErrNoLibrary) || len(res.Standalone) != 1 {
		t.Fatalf("%+v, %v", res, err)
	}
}
