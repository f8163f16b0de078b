package scsi

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Peripheral device types in INQUIRY byte 0.
const (
	TypeSequential = 0x01 // tape drive
	TypeChanger    = 0x08 // medium changer
)

// InquiryData is the part of standard INQUIRY data vaultnode uses.
type InquiryData struct {
	PeripheralType byte
	Removable      bool
	Vendor         string
	Product        string
	Revision       string
}

// ParseInquiry decodes standard INQUIRY data (at least 36 bytes).
func ParseInquiry(b []byte) (InquiryData, error) {
	if len(b) < 36 {
		return InquiryData{}, fmt.Errorf("parse INQUIRY: %d bytes, need 36: %w", len(b), ErrMalformed)
	}
	if q := b[0] >> 5; q != 0 {
		return InquiryData{}, fmt.Errorf("parse INQUIRY: peripheral qualifier %d, no device at this LUN: %w", q, ErrMalformed)
	}
	return InquiryData{
		PeripheralType: b[0] & 0x1F,
		Removable:      b[1]&0x80 != 0,
		Vendor:         asciiField(b[8:16]),
		Product:        asciiField(b[16:32]),
		Revision:       asciiField(b[32:36]),
	}, nil
}

// ParseSerialVPD decodes the unit serial number page (80h).
func ParseSerialVPD(b []byte) (string, error) {
	if len(b) < 4 {
		return "", fmt.Errorf("parse serial VPD: %d bytes, need 4: %w", len(b), ErrMalformed)
	}
	if b[1] != VPDSerial {
		return "", fmt.Errorf("parse serial VPD: page 0x%02x, want 0x80: %w", b[1], ErrMalformed)
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+n > len(b) {
		return "", fmt.Errorf("parse serial VPD: page length %d past the %d bytes returned: %w", n, len(b)-4, ErrMalformed)
	}
	return asciiField(b[4 : 4+n]), nil
}

// asciiField trims a space/NUL padded field and replaces anything that is
// not printable ASCII, so a device cannot put control characters in logs.
func asciiField(b []byte) string {
	s := []byte(strings.TrimRight(string(b), " \x00"))
	for i, c := range s {
		if c < 0x20 || c > 0x7E {
			s[i] = '?'
		}
	}
	return strings.TrimLeft(string(s), " ")
}

// BlockDescriptor is the drive's mode parameter header and block
// descriptor as MODE SENSE(10) returns them.
type BlockDescriptor struct {
	WriteProtected bool
	BufferedMode   byte
	Density        byte
	BlockLength    uint32 // 0: variable-block mode
}

// ParseModeSense10 decodes the MODE SENSE(10) header and the first short
// block descriptor.
func ParseModeSense10(b []byte) (BlockDescriptor, error) {
	if len(b) < 8 {
		return BlockDescriptor{}, fmt.Errorf("parse MODE SENSE: %d bytes, need an 8-byte header: %w", len(b), ErrMalformed)
	}
	total := 2 + int(binary.BigEndian.Uint16(b[0:2]))
	if total > len(b) {
		total = len(b) // truncated by the allocation length: decode what came
	}
	bdl := int(binary.BigEndian.Uint16(b[6:8]))
	if b[4]&0x01 != 0 {
		return BlockDescriptor{}, fmt.Errorf("parse MODE SENSE: long LBA block descriptors not supported: %w", ErrMalformed)
	}
	if bdl < 8 || 8+bdl > total {
		return BlockDescriptor{}, fmt.Errorf("parse MODE SENSE: block descriptor length %d with %d bytes of data: %w", bdl, total, ErrMalformed)
	}
	d := b[8:16]
	return BlockDescriptor{
		WriteProtected: b[3]&0x80 != 0,
		BufferedMode:   b[3] >> 4 & 0x07,
		Density:        d[0],
		BlockLength:    uint32(d[5])<<16 | uint32(d[6])<<8 | uint32(d[7]),
	}, nil
}

// Position is the long-form READ POSITION answer.
type Position struct {
	BOP, EOP  bool // at the beginning / past the early warning of the partition
	Partition uint32
	Block     uint64 // logical object number: the next block to read or write
	File      uint64 // logical file identifier: filemarks before the position
}

// ParsePosition decodes the long form (32 bytes). A drive that sets LONU
// (logical object number unknown) or MPU (mark position unknown) gives
// ErrPositionUnknown, and so does an answer of logical object 0 without
// BOP: tgt's stubs (short form byte 0 = 20, long form byte 0 = 32, the rest
// zero) land there instead of being taken for block 0.
func ParsePosition(b []byte) (Position, error) {
	if len(b) < ReadPositionLongLen {
		return Position{}, fmt.Errorf("parse READ POSITION: %d bytes, need %d: %w", len(b), ReadPositionLongLen, ErrMalformed)
	}
	if b[0]&0x04 != 0 || b[0]&0x08 != 0 {
		return Position{}, fmt.Errorf("parse READ POSITION: flags 0x%02x: %w", b[0], ErrPositionUnknown)
	}
	p := Position{
		BOP:       b[0]&0x80 != 0,
		EOP:       b[0]&0x40 != 0,
		Partition: binary.BigEndian.Uint32(b[4:8]),
		Block:     binary.BigEndian.Uint64(b[8:16]),
		File:      binary.BigEndian.Uint64(b[16:24]),
	}
	// Logical object 0 is the beginning of the partition, where SSC
	// requires BOP: "block 0 without BOP" contradicts itself. tgt's long
	// form stub says exactly that (byte 0 = 32, all else zero) wherever
	// the tape is.
	if p.Block == 0 && !p.BOP {
		return Position{}, fmt.Errorf("parse READ POSITION: logical object 0 without beginning of partition: %w", ErrPositionUnknown)
	}
	return p, nil
}

// Severity of a TapeAlert flag (TapeAlert specification).
type Severity byte

const (
	SevInfo     Severity = 'I'
	SevWarning  Severity = 'W'
	SevCritical Severity = 'C'
)

func (s Severity) String() string {
	switch s {
	case SevInfo:
		return "information"
	case SevWarning:
		return "warning"
	case SevCritical:
		return "critical"
	}
	return "unknown"
}

// TapeAlert is one flag that is set.
type TapeAlert struct {
	Flag     int
	Name     string
	Severity Severity
}

func (a TapeAlert) String() string {
	return fmt.Sprintf("TapeAlert %d (%s): %s", a.Flag, a.Severity, a.Name)
}

type alertDef struct {
	name string
	sev  Severity
}

var tapeAlerts = map[int]alertDef{
	1: {"read warning", SevWarning}, 2: {"write warning", SevWarning}, 3: {"hard error", SevWarning},
	4: {"media", SevCritical}, 5: {"read failure", SevCritical}, 6: {"write failure", SevCritical},
	7: {"media life", SevWarning}, 8: {"not data grade", SevWarning}, 9: {"write protect", SevCritical},
	10: {"no removal", SevInfo}, 11: {"cleaning media", SevInfo}, 12: {"unsupported format", SevInfo},
	13: {"recoverable mechanical cartridge failure", SevCritical}, 14: {"unrecoverable mechanical cartridge failure", SevCritical},
	15: {"memory chip in cartridge failure", SevWarning}, 16: {"forced eject", SevCritical},
	17: {"read only format", SevWarning}, 18: {"tape directory corrupted on load", SevWarning},
	19: {"nearing media life", SevInfo}, 20: {"clean now", SevCritical}, 21: {"clean periodic", SevWarning},
	22: {"expired cleaning media", SevCritical}, 23: {"invalid cleaning tape", SevCritical},
	24: {"retension requested", SevWarning}, 25: {"dual-port interface error", SevWarning},
	26: {"cooling fan failure", SevWarning}, 27: {"power supply failure", SevWarning},
	28: {"power consumption", SevWarning}, 29: {"drive maintenance", SevWarning},
	30: {"hardware A", SevCritical}, 31: {"hardware B", SevCritical}, 32: {"interface", SevWarning},
	33: {"eject media", SevCritical}, 34: {"microcode update fail", SevWarning},
	35: {"drive humidity", SevWarning}, 36: {"drive temperature", SevWarning}, 37: {"drive voltage", SevWarning},
	38: {"predictive failure", SevCritical}, 39: {"diagnostics required", SevWarning},
	49: {"diminished native capacity", SevWarning}, 50: {"lost statistics", SevWarning},
	51: {"tape directory invalid at unload", SevWarning}, 52: {"tape system area write failure", SevCritical},
	53: {"tape system area read failure", SevCritical}, 54: {"no start of data", SevCritical},
	55: {"loading failure", SevCritical}, 56: {"unrecoverable unload failure", SevCritical},
	57: {"automation interface failure", SevCritical}, 58: {"microcode failure", SevWarning},
	59: {"WORM medium: integrity check failed", SevWarning}, 60: {"WORM medium: overwrite attempted", SevWarning},
}

// ParseTapeAlert decodes LOG SENSE page 2Eh and returns the flags that are
// set, in parameter order. Parameters are bounded by the page length and
// the buffer.
func ParseTapeAlert(b []byte) ([]TapeAlert, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("parse TapeAlert: %d bytes, need a 4-byte header: %w", len(b), ErrMalformed)
	}
	if b[0]&0x3F != PageTapeAlert {
		return nil, fmt.Errorf("parse TapeAlert: page 0x%02x, want 0x2E: %w", b[0]&0x3F, ErrMalformed)
	}
	end := 4 + int(binary.BigEndian.Uint16(b[2:4]))
	if end > len(b) {
		return nil, fmt.Errorf("parse TapeAlert: page length %d past the %d bytes returned: %w", end-4, len(b)-4, ErrMalformed)
	}
	var out []TapeAlert
	for off := 4; off < end; {
		if off+4 > end {
			return nil, fmt.Errorf("parse TapeAlert: parameter header at %d cut at %d: %w", off, end, ErrMalformed)
		}
		code := int(binary.BigEndian.Uint16(b[off : off+2]))
		n := int(b[off+3])
		if off+4+n > end {
			return nil, fmt.Errorf("parse TapeAlert: parameter %d claims %d bytes past the page: %w", code, n, ErrMalformed)
		}
		if n >= 1 && b[off+4]&0x01 != 0 && code >= 1 && code <= 64 {
			d, ok := tapeAlerts[code]
			if !ok {
				d = alertDef{fmt.Sprintf("reserved flag %d", code), SevWarning}
			}
			out = append(out, TapeAlert{Flag: code, Name: d.name, Severity: d.sev})
		}
		off += 4 + n
	}
	return out, nil
}
