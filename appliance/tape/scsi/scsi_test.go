package scsi

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"vaultnode/internal/clock"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func must(t *testing.T) func(Command, error) Command {
	return func(c Command, err error) Command {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// The CDBs below are written from SSC-4/SMC-3/SPC-4 tables and checked
// against what PBS (pbs-tape sg_tape.rs, sg_pt_changer.rs) and mtx send.
func TestEncoders(t *testing.T) {
	m := must(t)
	tests := []struct {
		name    string
		c       Command
		cdb     string
		dir     Direction
		datalen int
		timeout time.Duration
	}{
		{"inquiry", Inquiry(96), "12 00 00 00 60 00", DirFromDevice, 96, TimeoutShort},
		{"inquiry vpd 80", InquiryVPD(VPDSerial, 255), "12 01 80 00 ff 00", DirFromDevice, 255, TimeoutShort},
		{"test unit ready", TestUnitReady(), "00 00 00 00 00 00", DirNone, 0, TimeoutShort},
		{"request sense", RequestSense(false), "03 00 00 00 fc 00", DirFromDevice, 252, TimeoutShort},
		{"mode sense 10", ModeSense10(0x00, 4096), "5a 00 00 00 00 00 00 10 00 00", DirFromDevice, 4096, TimeoutShort},
		{"mode select variable", m(ModeSelectBlockSize(0)), "55 10 00 00 00 00 00 00 10 00", DirToDevice, 16, TimeoutShort},
		{"read element status drives", ReadElementStatus(ElementDrive, 0, 1000, 0xffff, false, true), "b8 04 00 00 03 e8 01 00 ff ff 00 00", DirFromDevice, 65535, TimeoutShort},
		{"read element status slots from 1024", ReadElementStatus(ElementStorage, 1024, 0xffff, 4096, true, false), "b8 12 04 00 ff ff 00 00 10 00 00 00", DirFromDevice, 4096, TimeoutShort},
		{"move medium 1024 to 1", MoveMedium(16, 1024, 1), "a5 00 00 10 04 00 00 01 00 00 00 00", DirNone, 0, TimeoutMove},
		{"initialize element status", InitializeElementStatus(), "07 00 00 00 00 00", DirNone, 0, TimeoutInit},
		{"read 6 variable sili", m(Read6(make([]byte, 65536), true)), "08 02 01 00 00 00", DirFromDevice, 65536, TimeoutIO},
		{"read 6 variable", m(Read6(make([]byte, 1000), false)), "08 00 00 03 e8 00", DirFromDevice, 1000, TimeoutIO},
		{"write 6 variable", m(Write6(make([]byte, 12))), "0a 00 00 00 0c 00", DirToDevice, 12, TimeoutIO},
		{"write filemarks", m(WriteFilemarks(1)), "10 00 00 00 01 00", DirNone, 0, TimeoutIO},
		{"rewind", Rewind(), "01 00 00 00 00 00", DirNone, 0, TimeoutPosition},
		{"space 1 filemark", m(Space(SpaceFilemarks, 1)), "11 01 00 00 01 00", DirNone, 0, TimeoutPosition},
		{"space back 2 blocks", m(Space(SpaceBlocks, -2)), "11 00 ff ff fe 00", DirNone, 0, TimeoutPosition},
		{"space eod", m(Space(SpaceEOD, 99)), "11 03 00 00 00 00", DirNone, 0, TimeoutPosition},
		{"locate 10", Locate10(0x01020304), "2b 00 00 01 02 03 04 00 00 00", DirNone, 0, TimeoutPosition},
		{"locate 16", Locate16(0x0102030405060708), "92 00 00 00 01 02 03 04 05 06 07 08 00 00 00 00", DirNone, 0, TimeoutPosition},
		{"read position long", ReadPositionLong(), "34 06 00 00 00 00 00 00 00 00", DirFromDevice, 32, TimeoutShort},
		{"load", LoadUnload(true), "1b 00 00 00 01 00", DirNone, 0, TimeoutMove},
		{"unload", LoadUnload(false), "1b 00 00 00 00 00", DirNone, 0, TimeoutMove},
		{"log sense tapealert", LogSense(PageTapeAlert, 1024), "4d 00 6e 00 00 00 00 04 00 00", DirFromDevice, 1024, TimeoutShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(unhex(t, tt.cdb), tt.c.CDB); diff != "" {
				t.Errorf("CDB (-want +got):\n%s", diff)
			}
			if tt.c.Dir != tt.dir || len(tt.c.Data) != tt.datalen || tt.c.Timeout != tt.timeout {
				t.Errorf("dir %d len %d timeout %v, want %d %d %v", tt.c.Dir, len(tt.c.Data), tt.c.Timeout, tt.dir, tt.datalen, tt.timeout)
			}
		})
	}
	sel := must(t)(ModeSelectBlockSize(0x40000))
	if want := unhex(t, "00 00 00 10 00 00 00 08  00 00 00 00 00 04 00 00"); !bytes.Equal(sel.Data, want) {
		t.Errorf("MODE SELECT data %x, want %x", sel.Data, want)
	}
}

func TestEncoderLimits(t *testing.T) {
	if _, err := Write6(make([]byte, MaxTransfer6+1)); err == nil {
		t.Error("WRITE(6) of 16 MiB accepted")
	}
	if _, err := Space(SpaceBlocks, 1<<23); err == nil {
		t.Error("SPACE count 2^23 accepted")
	}
	if _, err := ModeSelectBlockSize(1 << 24); err == nil {
		t.Error("block size 2^24 accepted")
	}
}

func TestParseSense(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Sense
		text string
	}{
		// tgt, short variable READ of a 1000-byte block into 65536 bytes
		// with SILI=1 (LAB.md bug 4): NO SENSE, ILI, VALID, INFORMATION =
		// 64536 residue.
		{"tgt ILI residue", "f0 00 20 00 00 fc 18 0a 00 00 00 00 00 00 00 00 00 00",
			Sense{Key: KeyNoSense, ILI: true, InfoValid: true, Information: 64536}, "incorrect length"},
		// READ into a filemark: NO SENSE + FILEMARK, 00/01 (LAB.md).
		{"filemark", "f0 00 80 00 00 00 01 0a 00 00 00 00 00 01 00 00 00 00",
			Sense{Key: KeyNoSense, Filemark: true, ASCQ: 1, InfoValid: true, Information: 1}, "filemark detected"},
		// Block longer than the buffer: negative residue.
		{"overlength", "f0 00 20 ff ff ff 00 0a 00 00 00 00 00 00 00 00 00 00",
			Sense{Key: KeyNoSense, ILI: true, InfoValid: true, Information: -256}, ""},
		{"becoming ready", "70 00 02 00 00 00 00 0a 00 00 00 00 04 01 00 00 00 00",
			Sense{Key: KeyNotReady, ASC: 4, ASCQ: 1}, "becoming ready"},
		{"source empty", "70 00 05 00 00 00 00 0a 00 00 00 00 3b 0e 00 00 00 00",
			Sense{Key: KeyIllegalRequest, ASC: 0x3b, ASCQ: 0x0e}, "medium source element empty (re-read the inventory"},
		{"end of medium write", "70 00 4d 00 00 00 00 0a 00 00 00 00 00 02 00 00 00 00",
			Sense{Key: KeyVolumeOverflow, EOM: true, ASCQ: 2}, "end of medium"},
		{"short fixed without ASC", "70 00 06 00 00 00 00 00",
			Sense{Key: KeyUnitAttention}, "unit attention"},
		{"deferred", "71 00 03 00 00 00 00 0a 00 00 00 00 0c 00 00 00 00 00",
			Sense{Deferred: true, Key: KeyMediumError, ASC: 0x0c}, "deferred"},
		// Descriptor format: information descriptor + stream commands
		// descriptor (ILI), as a drive with D_SENSE=1 sends it.
		{"descriptor", "72 00 00 00 00 00 00 10  00 0a 80 00 00 00 00 00 00 00 01 00  04 02 00 20",
			Sense{Key: KeyNoSense, ILI: true, InfoValid: true, Information: 256}, ""},
		{"descriptor write protect", "72 07 27 00 00 00 00 00",
			Sense{Key: KeyDataProtect, ASC: 0x27}, "write-protect tab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSense(unhex(t, tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if !strings.Contains(got.String(), tt.text) {
				t.Errorf("String() = %q, want it to contain %q", got.String(), tt.text)
			}
		})
	}
	r, ok := Sense{ILI: true, InfoValid: true, Information: 64536}.Residue()
	if !ok || r != 64536 {
		t.Errorf("Residue = %d %v", r, ok)
	}
	if _, ok := (Sense{Filemark: true, InfoValid: true, Information: 1}).Residue(); ok {
		t.Error("Residue without ILI reported")
	}
}

func TestParseSenseHostile(t *testing.T) {
	for name, in := range map[string]string{
		"empty":                    "",
		"unknown response code":    "7f 00 00 00 00 00 00 00",
		"fixed too short":          "70 00 05",
		"descriptor past the end":  "72 00 00 00 00 00 00 08 00 0a 80 00",
		"descriptor len past buf":  "72 00 00 00 00 00 00 ff 04 f0 00 00",
		"descriptor too short hdr": "72 00 00",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseSense(unhex(t, in)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
	// A fixed sense whose additional length lies past the buffer is read
	// up to the buffer: the key survives, ASC is absent.
	s, err := ParseSense(unhex(t, "70 00 03 00 00 00 00 ff 00 00"))
	if err != nil || s.Key != KeyMediumError || s.ASC != 0 {
		t.Fatalf("got %+v, %v", s, err)
	}
}

func TestResponseErr(t *testing.T) {
	c := TestUnitReady()
	if err := (Response{Status: StatusGood}).Err(c); err != nil {
		t.Fatal(err)
	}
	err := Response{Status: StatusCheckCondition, Sense: unhex(t, "70 00 02 00 00 00 00 0a 00 00 00 00 3a 00 00 00 00 00")}.Err(c)
	s, ok := AsSense(err)
	if !errors.Is(err, ErrCheckCondition) || !ok || !s.Is(KeyNotReady, 0x3a, 0) {
		t.Fatalf("err = %v", err)
	}
	if want := "TEST UNIT READY: not ready: medium not present (load a cartridge)"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q, want prefix %q", err, want)
	}
	if err := (Response{Status: StatusCheckCondition}).Err(c); !errors.Is(err, ErrCheckCondition) || !errors.Is(err, ErrMalformed) {
		t.Errorf("check condition without sense: %v", err)
	}
	if err := (Response{Status: StatusReservationConflict}).Err(c); !errors.Is(err, ErrStatus) {
		t.Errorf("reservation conflict: %v", err)
	}
}

// tgt's INQUIRY answers as seen in the guest (LAB.md): IET VIRTUAL-CHANGER.
func TestParseInquiry(t *testing.T) {
	b := append(unhex(t, "08 80 05 02 1f 00 00 00"), []byte("IET     VIRTUAL-CHANGER 0001")...)
	got, err := ParseInquiry(b)
	if err != nil {
		t.Fatal(err)
	}
	want := InquiryData{PeripheralType: TypeChanger, Removable: true, Vendor: "IET", Product: "VIRTUAL-CHANGER", Revision: "0001"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
	b[0] = 0x7F // qualifier 3: no device
	if _, err := ParseInquiry(b); !errors.Is(err, ErrMalformed) {
		t.Errorf("qualifier 3: %v", err)
	}
	if _, err := ParseInquiry(b[:20]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short: %v", err)
	}
	sn, err := ParseSerialVPD(append(unhex(t, "01 80 00 0a"), []byte("HU1234\x01 \x00\x00")...))
	if err != nil || sn != "HU1234?" {
		t.Fatalf("serial %q, %v", sn, err)
	}
	if _, err := ParseSerialVPD(unhex(t, "01 80 00 ff 41")); !errors.Is(err, ErrMalformed) {
		t.Errorf("serial length past buffer: %v", err)
	}
}

// tgt's MODE SENSE in the guest: block length 0, variable mode (LAB.md).
func TestParseModeSense(t *testing.T) {
	got, err := ParseModeSense10(unhex(t, "00 0e 00 10 00 00 00 08  40 00 00 00 00 00 00 00"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (BlockDescriptor{BufferedMode: 1, Density: 0x40}); got != want {
		t.Errorf("got %+v want %+v", got, want)
	}
	got, err = ParseModeSense10(unhex(t, "00 0e 00 90 00 00 00 08  00 00 00 00 00 01 00 00"))
	if err != nil || !got.WriteProtected || got.BlockLength != 0x10000 {
		t.Errorf("got %+v, %v", got, err)
	}
	if _, err := ParseModeSense10(unhex(t, "00 0e 00 00 00 00 00 40 00 00")); !errors.Is(err, ErrMalformed) {
		t.Errorf("descriptor length past data: %v", err)
	}
}

func TestParsePosition(t *testing.T) {
	b := make([]byte, 32)
	b[0] = 0x80
	copy(b[8:16], unhex(t, "00 00 00 00 00 00 01 00"))
	copy(b[16:24], unhex(t, "00 00 00 00 00 00 00 03"))
	got, err := ParsePosition(b)
	if err != nil || got != (Position{BOP: true, Block: 256, File: 3}) {
		t.Fatalf("got %+v, %v", got, err)
	}
	// tgt 1.0.85's stub (LAB.md bug 3): byte 0 = 20, rest zero. It must
	// not be taken for "block 0".
	stub := make([]byte, 32)
	stub[0] = 20
	if _, err := ParsePosition(stub); !errors.Is(err, ErrPositionUnknown) {
		t.Errorf("tgt stub: %v, want ErrPositionUnknown", err)
	}
	// The long form's stub as tgt 1.0.85 sends it (bs_ssc.c: data[0] = 32
	// for service action 06h), captured through QEMU: "block 0" without
	// BOP, wherever the tape is.
	long := make([]byte, 32)
	long[0] = 32
	if _, err := ParsePosition(long); !errors.Is(err, ErrPositionUnknown) {
		t.Errorf("tgt long-form stub: %v, want ErrPositionUnknown", err)
	}
	if _, err := ParsePosition(stub[:20]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short: %v", err)
	}
}

func TestParseTapeAlert(t *testing.T) {
	// Page 2E with flags 3 (hard error), 20 (clean now) and 62 set, 4
	// unset; each parameter: code, control, length 1, value.
	b := unhex(t, "2e 00 00 14  00 03 03 01 01  00 04 03 01 00  00 14 03 01 01  00 3e 03 01 01")
	got, err := ParseTapeAlert(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []TapeAlert{{3, "hard error", SevWarning}, {20, "clean now", SevCritical}, {62, "reserved flag 62", SevWarning}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
	if want := "TapeAlert 20 (critical): clean now"; got[1].String() != want {
		t.Errorf("%q", got[1])
	}
	for name, in := range map[string]string{
		"page length past buffer": "2e 00 01 00 00 03 03 01 01",
		"parameter past page":     "2e 00 00 05 00 03 03 09 01",
		"cut header":              "2e 00 00 02 00 03",
		"wrong page":              "2f 00 00 00",
	} {
		if _, err := ParseTapeAlert(unhex(t, in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

type scripted struct {
	replies []Response
	calls   int
}

func (s *scripted) Exec(ctx context.Context, c Command) (Response, error) {
	r := s.replies[min(s.calls, len(s.replies)-1)]
	s.calls++
	return r, nil
}

// instant is a fake clock whose waits fire at once and are recorded.
type instant struct {
	*clock.Fake
	waits []time.Duration
}

func (c *instant) After(d time.Duration) <-chan time.Time {
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

func TestRetry(t *testing.T) {
	ready := Response{Status: StatusCheckCondition, Sense: unhex(t, "70 00 02 00 00 00 00 0a 00 00 00 00 04 01 00 00")}
	ua := Response{Status: StatusCheckCondition, Sense: unhex(t, "70 00 06 00 00 00 00 0a 00 00 00 00 28 00 00 00")}
	noMedium := Response{Status: StatusCheckCondition, Sense: unhex(t, "70 00 02 00 00 00 00 0a 00 00 00 00 3a 00 00 00")}
	good := Response{Status: StatusGood}
	tests := []struct {
		name    string
		replies []Response
		calls   int
		waits   int
		status  byte
	}{
		{"becoming ready then good", []Response{ready, ready, ready, good}, 4, 3, StatusGood},
		{"unit attention then good", []Response{ua, good}, 2, 0, StatusGood},
		{"unit attention forever", []Response{ua}, 5, 0, StatusCheckCondition},
		{"busy then good", []Response{{Status: StatusBusy}, good}, 2, 1, StatusGood},
		{"medium not present is final", []Response{noMedium, good}, 1, 0, StatusCheckCondition},
		{"never ready gives up", []Response{ready}, 11, 10, StatusCheckCondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &scripted{replies: tt.replies}
			clk := &instant{Fake: clock.NewFake(time.Unix(0, 0))}
			r := &Retry{Next: dev, Clock: clk, ReadyWait: 10 * time.Second, Interval: time.Second}
			resp, err := r.Exec(context.Background(), TestUnitReady())
			if err != nil {
				t.Fatal(err)
			}
			if dev.calls != tt.calls || len(clk.waits) != tt.waits || resp.Status != tt.status {
				t.Errorf("calls %d waits %d status %d, want %d %d %d", dev.calls, len(clk.waits), resp.Status, tt.calls, tt.waits, tt.status)
			}
		})
	}
	// A command at the current position is repeated while BUSY, never
	// after a unit attention or "not ready": the position may be lost.
	write, err := Write6(make([]byte, 512))
	if err != nil {
		t.Fatal(err)
	}
	eod, _ := Space(SpaceEOD, 0)
	blocks, _ := Space(SpaceBlocks, -1)
	reset := Response{Status: StatusCheckCondition, Sense: unhex(t, "70 00 06 00 00 00 00 0a 00 00 00 00 29 00 00 00")}
	for _, tt := range []struct {
		name    string
		c       Command
		replies []Response
		calls   int
		status  byte
	}{
		{"WRITE after a reset", write, []Response{reset, good}, 1, StatusCheckCondition},
		{"WRITE becoming ready", write, []Response{ready, good}, 1, StatusCheckCondition},
		{"WRITE busy", write, []Response{{Status: StatusBusy}, good}, 2, StatusGood},
		{"SPACE blocks after a reset", blocks, []Response{reset, good}, 1, StatusCheckCondition},
		{"SPACE to end of data after a reset", eod, []Response{reset, good}, 2, StatusGood},
		{"REWIND after a reset", Rewind(), []Response{reset, good}, 2, StatusGood},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev := &scripted{replies: tt.replies}
			r := &Retry{Next: dev, Clock: &instant{Fake: clock.NewFake(time.Unix(0, 0))}}
			resp, err := r.Exec(context.Background(), tt.c)
			if err != nil {
				t.Fatal(err)
			}
			if dev.calls != tt.calls || resp.Status != tt.status {
				t.Errorf("calls %d status %d, want %d %d", dev.calls, resp.Status, tt.calls, tt.status)
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &Retry{Next: &scripted{replies: []Response{ready}}, Clock: clock.NewFake(time.Unix(0, 0))}
	if _, err := r.Exec(ctx, TestUnitReady()); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}
