package scsi

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// tag is a 36-byte primary volume tag field: 32 bytes of barcode padded
// with spaces, 2 reserved bytes, 2 bytes of sequence number.
func tag(s string) string {
	return hex.EncodeToString([]byte(fmt.Sprintf("%-32s", s))) + "00000000"
}

// tgt's storage element page for two slots (LAB.md setup: slots from 1024,
// TAPE01L5 in 1024, 1025 empty): PVolTag, 52-byte descriptors (12 + 36
// volume tag + 4-byte empty identification descriptor).
func tgtSlots() string {
	return "0400 0002 00 000070" + // header: first 1024, 2 elements, 112 bytes follow
		"02 80 0034 00 000068" + // SE page, PVolTag, 52-byte descriptors, 104 bytes
		"0400 09 00 0000 000000 00 0000" + tag("TAPE01L5") + "00000000" +
		"0401 08 00 0000 000000 00 0000" + tag("") + "00000000"
}

func TestParseElementStatusSlots(t *testing.T) {
	got, err := ParseElementStatus(unhex(t, tgtSlots()))
	if err != nil {
		t.Fatal(err)
	}
	want := ElementPage{Available: 112, Elements: []ElementStatus{
		{Type: ElementStorage, Address: 1024, Full: true, Access: true, VolumeTag: "TAPE01L5"},
		{Type: ElementStorage, Address: 1025, Access: true},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
}

func TestParseElementStatusDrive(t *testing.T) {
	// A drive holding TAPE01L5 moved from slot 1024 (LAB.md: "DTE@1
	// [TAPE01L5 from 1024]"), with a DVCID serial: code set 2 (ASCII),
	// type 0 (serial only, as the Quantum Superloader 3 sends it per PBS),
	// length 10, padded to a 64-byte descriptor.
	in := "0001 0001 00 000048" +
		"04 80 0040 00 000040" +
		"0001 09 00 0000 000000 80 0400" + tag("TAPE01L5") +
		"02 00 00 0a" + hex.EncodeToString([]byte("SN00000001")) + "0000"
	got, err := ParseElementStatus(unhex(t, in))
	if err != nil {
		t.Fatal(err)
	}
	want := []ElementStatus{{Type: ElementDrive, Address: 1, Full: true, Access: true, SourceValid: true, Source: 1024,
		VolumeTag: "TAPE01L5", DeviceID: "SN00000001", DeviceSerial: "SN00000001"}}
	if diff := cmp.Diff(want, got.Elements); diff != "" {
		t.Error(diff)
	}
}

// A DVCID-only request (no VOLTAG) answered with a T10 vendor
// identification (code set 2, type 1, 34 bytes: vendor, product, serial).
func TestParseElementStatusT10DeviceID(t *testing.T) {
	id := "IBM     ULT3580-TD5     1013000655"
	in := "0001 0001 00 00003a" +
		"04 00 0032 00 000032" +
		"0001 08 00 0000 000000 00 0000" +
		"02 01 00 22" + hex.EncodeToString([]byte(id))
	got, err := ParseElementStatus(unhex(t, in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Elements) != 1 || got.Elements[0].DeviceSerial != "1013000655" || got.Elements[0].DeviceID != id {
		t.Fatalf("got %+v", got.Elements)
	}
}

// tgt answers a type-1 (MTE) request with "first element address
// reported" 32, the mail slot's address, instead of 16 (LAB.md bug 2).
// The decoder takes addresses from the descriptors only.
func TestParseElementStatusTgtMTEHeader(t *testing.T) {
	in := "0020 0001 00 00003c" +
		"01 80 0034 00 000034" +
		"0010 00 00 0000 000000 00 0000" + tag("") + "00000000"
	got, err := ParseElementStatus(unhex(t, in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Elements) != 1 || got.Elements[0].Address != 16 || got.Elements[0].Type != ElementTransport {
		t.Fatalf("got %+v", got.Elements)
	}
}

func TestParseElementStatusTruncated(t *testing.T) {
	// The allocation length cut the report in the second descriptor: the
	// first is returned and Truncated says to ask again from 1025.
	b := unhex(t, tgtSlots())
	got, err := ParseElementStatus(b[:8+8+52+20])
	if err != nil {
		t.Fatal(err)
	}
	if !got.Truncated || len(got.Elements) != 1 || got.Elements[0].Address != 1024 {
		t.Fatalf("got %+v", got)
	}
}

func TestParseElementStatusHostile(t *testing.T) {
	for name, in := range map[string]string{
		"short header": "0400 0002 00",
		// tgt's type-0 corruption (LAB.md bug 1): a page that claims
		// 52-byte descriptors but carries 36.
		"descriptors not a multiple": "0001 0001 00 00002c 01 80 0034 00 000024" + "0010 00 00 0000 000000 00 0000" + strings.Repeat("00", 24),
		"zero descriptor length":     "0001 0001 00 000010 02 00 0000 00 000008 0000000000000000",
		"voltag longer than desc":    "0001 0001 00 000014 02 80 000c 00 00000c 0400 01 00 0000 000000 00 0000",
		"page past report":           "0001 0001 00 000010 02 00 000c 00 0000ff 0400 01 00 0000 000000 00 0000",
		"bad element type":           "0001 0001 00 000014 07 00 000c 00 00000c 0400 01 00 0000 000000 00 0000",
		"page header cut":            "0001 0001 00 000004 02 00 000c 00",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseElementStatus(unhex(t, in)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

// tgt 1.0.85's answer when no element is at or past the starting address,
// as captured through QEMU's scsi-generic path (resid 0, so the buffer's
// zeros follow): "0 elements, 8 bytes of report" and no page header.
func TestParseElementStatusTgtNoElements(t *testing.T) {
	b := make([]byte, 64)
	copy(b, []byte{0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08})
	p, err := ParseElementStatus(b)
	if err != nil || len(p.Elements) != 0 {
		t.Fatalf("got %+v, %v", p, err)
	}
}
